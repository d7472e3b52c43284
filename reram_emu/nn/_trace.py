"""Find the crossbar products of a traced function, and evaluate it with them replaced.

A *site* is a ``dot_general`` or ``conv_general_dilated`` equation one of whose operands is a
*weight* (computed from the parameters alone) and the other an *activation* (it depends on the
function's data inputs). Products of two activations (attention scores) and of a parameter with
a constant stay digital. Sites are found by a walk over the jaxpr (:func:`find_sites`), which
recurses into ``jit``, ``custom_jvp_call``, ``custom_vjp_call`` and ``checkpoint`` bodies and
keys each site by its position (the equation indices along the way), so the evaluation
(:func:`evaluate`) meets exactly the same sites. Each site records the parameter path of its
weight, its GEMM shape (K, N) and whether its input is provably non-negative (the output of a
ReLU, an exponential, a max-pool of one, ... or a data input declared non-negative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Literal

__all__ = ["Site", "find_sites", "evaluate", "site_matrices"]

# call-like primitives whose body is inlined by the walk: name -> parameter holding the body
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
          "custom_vjp_call_jaxpr": "fun_jaxpr", "checkpoint": "jaxpr", "remat": "jaxpr"}

# primitives whose output is >= 0 when every (array) input is >= 0
_KEEP_NONNEGATIVE = {
    "reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice",
    "dynamic_slice", "gather", "concatenate", "pad", "reduce_window_max", "reduce_max",
    "reduce_min", "reduce_window_sum", "reduce_sum", "convert_element_type", "copy", "copy_p",
    "mul", "add", "div", "select_n", "rev", "conv_general_dilated_patches", "cumsum", "cummax",
    "dot_general", "conv_general_dilated", "min", "sqrt", "rsqrt", "reduce_precision",
    "sharding_constraint", "optimization_barrier", "floor", "ceil", "round", "stop_gradient",
    "stack", "split", "tile", "broadcast", "squeeze_p", "real", "reduce_prod", "sort",
}
_LAYOUT = {"transpose", "reshape", "squeeze", "expand_dims", "convert_element_type", "copy",
           "copy_p"}
_ALWAYS_NONNEGATIVE = {"abs", "exp", "exp2", "logistic", "square", "sign_abs", "iota",
                       "argmax", "argmin", "population_count"}


@dataclass(frozen=True)
class Site:
    """One crossbar product of the traced function.

    Attributes:
      key: position in the (nested) jaxpr: equation indices from the outermost body inward.
      path: parameter path of the weight (``"params/Dense_0/kernel"``, ``"layers/0/weight"``;
        several paths joined by ``+`` when the weight is computed from several leaves).
      name: ``path``, or ``path#i`` for the i-th use of a weight used more than once.
      primitive: ``"dot_general"`` or ``"conv_general_dilated"``.
      in_features, out_features: the GEMM shape (K, N) of the weight matrix.
      rows: input vectors R per call (batch x output pixels for a convolution).
      nonnegative: the input is provably >= 0 (unsigned crossbar inputs suffice).
      unsupported: why the product cannot be mapped as it is (None when it can).
      weight_operand: 0 when the weight is the left operand, 1 when the right.
      stored: the weight is one parameter leaf as stored, up to transposes and reshapes (so
        its (K, N) matrix can be written back into the leaf: :meth:`Analog.weight_view`).
    """

    key: tuple
    path: str
    name: str
    primitive: str
    in_features: int
    out_features: int
    rows: int
    nonnegative: bool
    unsupported: str | None
    weight_operand: int
    stored: bool = True


@dataclass
class _Info:
    """What the walk knows about one variable."""

    data: bool            # depends on a data input
    origin: frozenset     # parameter leaves it is computed from
    nonnegative: bool
    stored: bool = False  # a parameter leaf up to transposes and reshapes


def _literal_nonnegative(value) -> bool:
    try:
        return bool(np.all(np.asarray(value) >= 0))
    except TypeError:
        return False


def _body(eqn):
    """(jaxpr, consts) of a call-like equation, or None."""
    name = _CALLS.get(eqn.primitive.name)
    if name is None or name not in eqn.params:
        return None
    body = eqn.params[name]
    if hasattr(body, "jaxpr") and hasattr(body, "consts"):
        return body.jaxpr, list(body.consts)
    return body, []


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for item in values:
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def _has_products(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            return True
        if any(_has_products(sub) for sub in _sub_jaxprs(eqn)):
            return True
    return False


def _gemm_shape(eqn, weight_operand: int):
    """(K, N, R, unsupported) of a product with the weight at ``weight_operand``."""
    avals = [v.aval for v in eqn.invars]
    if eqn.primitive.name == "dot_general":
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        contract = (lc, rc)[weight_operand]
        w_shape = avals[weight_operand].shape
        x_shape = avals[1 - weight_operand].shape
        x_contract = (lc, rc)[1 - weight_operand]
        k = math.prod(w_shape[d] for d in contract)
        n = math.prod(s for d, s in enumerate(w_shape) if d not in contract)
        r = math.prod(s for d, s in enumerate(x_shape) if d not in x_contract)
        if lb or rb:
            return k, n, r, "a product with batch dimensions on the weight (a batched einsum)"
        return k, n, r, None
    # conv_general_dilated: the kernel must be the right operand
    dn = eqn.params["dimension_numbers"]
    w_shape = avals[1].shape
    out_shape = eqn.outvars[0].aval.shape
    n = w_shape[dn.rhs_spec[0]]
    k = math.prod(w_shape) // n
    r = math.prod(out_shape) // out_shape[dn.out_spec[1]]
    if weight_operand != 1:
        return k, n, r, "a convolution whose input (not its kernel) is the parameter"
    if eqn.params["feature_group_count"] != 1:
        return k, n, r, (f"a grouped convolution (feature_group_count="
                         f"{eqn.params['feature_group_count']}; depthwise and grouped "
                         f"convolutions are not mapped: keep the layer digital)")
    if eqn.params["batch_group_count"] != 1:
        return k, n, r, "a convolution with batch_group_count > 1"
    return k, n, r, None


def find_sites(closed_jaxpr, param_paths: list[str], n_params: int,
               nonnegative_data: list[bool]) -> list[Site]:
    """The crossbar products of ``closed_jaxpr`` whose first ``n_params`` inputs are parameter
    leaves (paths ``param_paths``) and the rest data inputs (``nonnegative_data`` declares
    which of them are >= 0)."""
    jaxpr = closed_jaxpr.jaxpr
    infos = [_Info(False, frozenset([i]), False, True) for i in range(n_params)]
    infos += [_Info(True, frozenset(), bool(nn)) for nn in nonnegative_data]
    consts = [_Info(False, frozenset(), _literal_nonnegative(c)) for c in closed_jaxpr.consts]
    found: list[tuple] = []
    _walk(jaxpr, consts, infos, (), found)
    counts: dict[str, int] = {}
    for entry in found:
        path = _path(entry[1], param_paths)
        counts[path] = counts.get(path, 0) + 1
    seen: dict[str, int] = {}
    sites = []
    for key, origin, primitive, k, n, r, nonneg, unsupported, side, stored in found:
        path = _path(origin, param_paths)
        index = seen.get(path, 0)
        seen[path] = index + 1
        name = path if counts[path] == 1 else f"{path}#{index}"
        sites.append(Site(key, path, name, primitive, k, n, r, nonneg, unsupported, side,
                          stored))
    return sites


def _path(origin: frozenset, param_paths) -> str:
    return "+".join(param_paths[i] for i in sorted(origin))


def _walk(jaxpr, const_infos, in_infos, prefix, found):
    env: dict = {}
    for var, info in zip(jaxpr.constvars, const_infos):
        env[var] = info
    for var, info in zip(jaxpr.invars, in_infos):
        env[var] = info

    def read(atom):
        if isinstance(atom, Literal):
            return _Info(False, frozenset(), _literal_nonnegative(atom.val))
        return env[atom]

    for index, eqn in enumerate(jaxpr.eqns):
        ins = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        key = prefix + (index,)
        body = _body(eqn)
        if body is not None:
            sub_jaxpr, sub_consts = body
            sub_const_infos = [_Info(False, frozenset(), _literal_nonnegative(c))
                               for c in sub_consts]
            outs = _walk(sub_jaxpr, sub_const_infos, ins, key, found)
            for var, info in zip(eqn.outvars, outs):
                env[var] = info
            continue
        data = any(i.data for i in ins)
        origin = frozenset().union(*[i.origin for i in ins]) if ins else frozenset()
        if name in ("dot_general", "conv_general_dilated"):
            weight = [not i.data and bool(i.origin) for i in ins[:2]]
            active = [i.data for i in ins[:2]]
            side = None
            if weight[1] and active[0]:
                side = 1
            elif weight[0] and active[1]:
                side = 0
            if side is not None:
                k, n, r, unsupported = _gemm_shape(eqn, side)
                found.append((key, ins[side].origin, name, k, n, r,
                              ins[1 - side].nonnegative, unsupported, side,
                              ins[side].stored and len(ins[side].origin) == 1))
        elif data and any(not i.data and i.origin for i in ins) and any(
                _has_products(sub) for sub in _sub_jaxprs(eqn)):
            # a loop or branch (scan, while, cond) that multiplies data by a parameter
            params = frozenset().union(*[i.origin for i in ins if not i.data])
            found.append((key, params, name, 0, 0, 0, False,
                          f"a product inside `{name}` (loops and branches are not "
                          f"transformed: unroll the loop or keep the layer digital)", 1, False))
        if name in _ALWAYS_NONNEGATIVE:
            nonneg = True
        elif name == "max":
            nonneg = any(i.nonnegative for i in ins)
        elif name == "integer_pow":
            nonneg = eqn.params.get("y", 1) % 2 == 0 or all(i.nonnegative for i in ins)
        elif name == "clamp":   # clamp(low, x, high)
            nonneg = ins[0].nonnegative or all(i.nonnegative for i in ins[1:])
        elif name == "select_n":
            nonneg = all(i.nonnegative for i in ins[1:])
        elif name in ("pad", "dynamic_slice", "gather", "dynamic_update_slice"):
            nonneg = ins[0].nonnegative and all(i.nonnegative for i in ins[1:2])
        elif name in _KEEP_NONNEGATIVE:
            nonneg = all(i.nonnegative for i in ins)
        else:
            nonneg = False
        stored = (name in _LAYOUT and len(ins) == 1 and ins[0].stored)
        for var in eqn.outvars:
            env[var] = _Info(data, origin, nonneg, stored)
    return [read(v) for v in jaxpr.outvars]


# ---------------------------------------------------------------------------------- evaluation


def site_matrices(eqn, site: Site, x, w, row_order: str):
    """The GEMM form of a site: ``(x2d (R, K), w2d (K, N), finish)`` where ``finish(y2d)``
    gives the equation's output from the (R, N) product. ``x`` is None in the programming
    pass (then ``x2d`` is None)."""
    if site.primitive == "dot_general":
        (lc, rc), _ = eqn.params["dimension_numbers"]
        w_contract = list((lc, rc)[site.weight_operand])
        x_contract = list((lc, rc)[1 - site.weight_operand])
        w_free = [d for d in range(w.ndim) if d not in w_contract]
        w2d = jnp.transpose(w, w_contract + w_free).reshape(site.in_features,
                                                            site.out_features)
        w_free_shape = tuple(w.shape[d] for d in w_free)
        out_aval = eqn.outvars[0].aval
        if x is None:
            return None, w2d, None
        x_free = [d for d in range(x.ndim) if d not in x_contract]
        x_free_shape = tuple(x.shape[d] for d in x_free)
        x2d = jnp.transpose(x, x_free + x_contract).reshape(-1, site.in_features)

        def finish(y2d):
            y = y2d.reshape(x_free_shape + w_free_shape)
            if site.weight_operand == 0:  # dot_general puts the lhs (weight) dims first
                nx, nw = len(x_free_shape), len(w_free_shape)
                y = jnp.transpose(y, tuple(range(nx, nx + nw)) + tuple(range(nx)))
            return y.astype(out_aval.dtype)
        return x2d, w2d, finish

    # conv_general_dilated: kernel -> (K, N) in the row order; input -> patches (R, K)
    dn = eqn.params["dimension_numbers"]
    out_c, in_c, *spatial = dn.rhs_spec
    kernel = jnp.transpose(w, [in_c] + spatial + [out_c])  # (C, kh, kw, ..., N)
    c = kernel.shape[0]
    window = kernel.shape[1:-1]
    if row_order == "channel":
        kernel = jnp.moveaxis(kernel, 0, -2)                # (kh, kw, ..., C, N)
    w2d = kernel.reshape(site.in_features, site.out_features)
    if x is None:
        return None, w2d, None
    out_aval = eqn.outvars[0].aval
    patches = lax.conv_general_dilated_patches(
        x, filter_shape=window, window_strides=eqn.params["window_strides"],
        padding=eqn.params["padding"], lhs_dilation=eqn.params["lhs_dilation"],
        rhs_dilation=eqn.params["rhs_dilation"],
        dimension_numbers=_spec_strings(dn),
        precision=lax.Precision.HIGHEST)
    # patches: out_spec layout, feature dim = (C, *window) flattened, C slowest
    batch_dim, feature_dim, *out_spatial = dn.out_spec
    patches = jnp.transpose(patches, [batch_dim] + out_spatial + [feature_dim])
    lead = patches.shape[:-1]
    patches = patches.reshape(lead + (c,) + tuple(window))
    if row_order == "channel":
        patches = jnp.moveaxis(patches, len(lead), -1)      # (..., kh, kw, C)
    x2d = patches.reshape(-1, site.in_features)

    def finish(y2d):
        y = y2d.reshape(lead + (site.out_features,))       # (B, *out_spatial, N)
        order = [0] * len(out_aval.shape)
        # position p of the output holds dimension `order[p]` of y
        layout = [batch_dim] + out_spatial + [feature_dim]
        for axis, dim in enumerate(layout):
            order[dim] = axis
        return jnp.transpose(y, order).astype(out_aval.dtype)
    return x2d, w2d, finish


def _spec_strings(dn) -> tuple[str, str, str]:
    """ConvDimensionNumbers (index tuples) as the strings ``conv_general_dilated_patches``
    takes; spatial dimension i gets the same letter in all three."""
    letters = "HWDXYZUV"

    def one(spec, batch, feature):
        chars = [""] * len(spec)
        chars[spec[0]], chars[spec[1]] = batch, feature
        for i, dim in enumerate(spec[2:]):
            chars[dim] = letters[i]
        return "".join(chars)
    return one(dn.lhs_spec, "N", "C"), one(dn.rhs_spec, "O", "I"), one(dn.out_spec, "N", "C")


def evaluate(closed_jaxpr, args: list, sites: dict, handler: Callable) -> list:
    """Evaluate ``closed_jaxpr`` on ``args`` with every site in ``sites`` (key -> Site) replaced
    by ``handler(site, eqn, x, w)`` (its output value). ``None`` in ``args`` is an unknown
    value: equations that need one are skipped (their outputs unknown), so a pass with the
    data inputs unknown evaluates only what the parameters determine (the weights)."""
    prefixes = {key[:i] for key in sites for i in range(1, len(key))}
    return _evaluate(closed_jaxpr.jaxpr, list(closed_jaxpr.consts), args, (), sites, prefixes,
                     handler)


def _evaluate(jaxpr, consts, args, prefix, sites, prefixes, handler):
    env: dict = {}
    for var, value in zip(jaxpr.constvars, consts):
        env[var] = value
    for var, value in zip(jaxpr.invars, args):
        env[var] = value

    def read(atom):
        return atom.val if isinstance(atom, Literal) else env.get(atom)

    for index, eqn in enumerate(jaxpr.eqns):
        key = prefix + (index,)
        ins = [read(v) for v in eqn.invars]
        if key in sites:
            site = sites[key]
            w = ins[site.weight_operand]
            x = ins[1 - site.weight_operand]
            outs = [handler(site, eqn, x, w)]
        elif key in prefixes:
            sub_jaxpr, sub_consts = _body(eqn)
            outs = _evaluate(sub_jaxpr, sub_consts, ins, key, sites, prefixes, handler)
        elif any(value is None for value in ins):
            outs = [None] * len(eqn.outvars)
        else:
            params = eqn.primitive.get_bind_params(eqn.params)
            result = eqn.primitive.bind(*ins, **params)
            outs = list(result) if eqn.primitive.multiple_results else [result]
        for var, value in zip(eqn.outvars, outs):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]
