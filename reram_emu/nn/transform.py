"""``analog``: run any JAX function's products with its parameters on emulated crossbars.

::

    from reram_emu.nn import analog
    f = analog(model.apply, reram_emu.preset("forms"))          # Flax, Equinox, plain JAX
    state = f.program(params, x, key=jax.random.key(0))         # program once ...
    logits = f.apply(state, params, x, read_key=jax.random.key(1))  # ... read many

The function is traced to a jaxpr (``jax.make_jaxpr``); every ``dot_general`` and
``conv_general_dilated`` that multiplies a data-dependent value by a value computed from the
parameters alone is a *crossbar product* (a :class:`LayerInfo`, named by the parameter path of
its weight) and runs through :func:`reram_emu.nn.crossbar_matmul`; everything else (biases,
activations, normalization, products of two activations such as attention scores) runs as
written, digitally. A dense product's weight becomes the (K, N) matrix of its contracting and
free dimensions; a convolution becomes im2col (``lax.conv_general_dilated_patches``: any
strides, padding, input and kernel dilation) with the kernel's rows in the ``row_order``
(``"channel"``: the channel varies fastest, so a fragment runs along the input channels of one
kernel position; ``"width"``: the kernel column varies fastest). Grouped and depthwise
convolutions, products with batch dimensions on the weight (per-head einsums) and products
inside ``scan``/``while``/``cond`` are not mapped: they raise an error naming the parameter,
unless that layer is kept digital.

Signed inputs: the trace proves an input non-negative when it comes from a ReLU, an
exponential, a softmax, a max- or average-pool of one, ... or from a data input declared with
``nonnegative_inputs``. With ``signed_inputs="auto"`` (default) every other product reads
two's complement inputs (``InputConfig(signed=True)``: bit-serial designs only); ``False``
keeps the configuration as given (negative inputs then raise outside ``jit`` and are counted
in ``ReadCounts.negative_inputs`` inside it); ``True`` makes every product signed.

Keys: ``program`` draws each layer's programming from ``fold_in(key, i)`` and each read from
``fold_in(read_key, i)``, ``i`` the layer's index in :meth:`Analog.layers` order, so a layer
programmed or read by hand with those keys gives the same bits.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import check_key, check_noise, is_concrete
from ..config import CrossbarConfig, NoiseParameters
from ..crossbar import ProgrammedLayer, ReadCounts, calibrate_adc
from . import _trace
from .op import MODES, check_mode, crossbar_matmul, layer_config, program_weights

__all__ = ["analog", "Analog", "AnalogState", "LayerInfo", "WeightView"]

ROW_ORDERS = ("channel", "width")


class AnalogState(NamedTuple):
    """The programmed crossbars of a model (a pytree).

    Attributes:
      layers: layer name -> :class:`~reram_emu.ProgrammedLayer`.
      weights_zeroed: layer name -> int32 count of quantized weights the polarized mapping
        zeroed (they opposed their fragment's sign): the flag to check under ``jit``.
      scales: layer name -> fixed input quantization step (from :meth:`Analog.calibrate`
        with ``input_scales=True``); a layer not listed uses the configuration's dynamic scale.
    """

    layers: dict
    weights_zeroed: dict
    scales: dict


@dataclass(frozen=True)
class LayerInfo:
    """One crossbar product of the function (see :meth:`Analog.layers`).

    Attributes:
      name: the parameter path of the weight (``path#i`` for the i-th use of a shared weight).
      path: the parameter path (``"params/Conv_0/kernel"``, ``"layers/0/weight"``).
      primitive: ``"dot_general"`` or ``"conv_general_dilated"``.
      in_features, out_features: the GEMM shape (K, N) on the crossbars.
      rows: input vectors per call.
      nonnegative: the input is provably >= 0.
      config: the configuration the layer runs on (None: digital).
      row_order: the im2col row order of a convolution.
    """

    name: str
    path: str
    primitive: str
    in_features: int
    out_features: int
    rows: int
    nonnegative: bool
    config: CrossbarConfig | None
    row_order: str


class WeightView:
    """The crossbar weight matrices of a model's parameters, by layer name, and back.

    ``get(params)`` gives ``{name: (K, N)}`` in the mapping's row order (what the crossbars
    store, what the polarizer constrains); ``put(params, matrices)`` writes matrices back into
    a copy of ``params`` (layers not given keep theirs). Both are pure and jit-friendly, and
    ``put(p, get(p))`` is ``p`` exactly: each weight is one parameter leaf up to transposes
    and reshapes. Made by :meth:`Analog.weight_view`.
    """

    def __init__(self, names, get_leaves, put_leaves, split):
        self.names = tuple(names)
        self._get, self._put, self._split = get_leaves, put_leaves, split

    def get(self, params) -> dict:
        _, leaves, _, _ = _split(params)
        return self._get(leaves)

    def put(self, params, matrices: Mapping) -> Any:
        unknown = sorted(set(matrices) - set(self.names))
        if unknown:
            raise ValueError(f"no crossbar layer named {unknown}; the layers are "
                             f"{list(self.names)}")
        _, leaves, rebuild, _ = _split(params)
        return rebuild(self._put(leaves, dict(matrices)))


def _is_array(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


def _path_string(path) -> str:
    parts = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                parts.append(str(getattr(entry, attribute)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _split(tree):
    """(paths, dynamic leaves, rebuild) of a pytree: arrays are traced, the rest static."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [_path_string(p) for p, _ in flat]
    leaves = [leaf for _, leaf in flat]
    dynamic = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]
    static = tuple((i, leaves[i]) for i in range(len(leaves)) if i not in set(dynamic))

    def rebuild(values):
        full = list(leaves)
        for i, value in zip(dynamic, values):
            full[i] = value
        return jax.tree_util.tree_unflatten(treedef, full)

    return [paths[i] for i in dynamic], [leaves[i] for i in dynamic], rebuild, (treedef, static)


class Skeleton:
    """The static part of a pytree (its structure and non-array leaves), hashable, so a
    ``jax.jit`` can take it as a static argument and rebuild the tree from its array leaves:
    ``skeleton.rebuild(arrays)``. From :func:`split_arrays`."""

    def __init__(self, static):
        self.treedef, self.leaves = static
        self._key = _static_key(static)

    def rebuild(self, arrays):
        fixed = dict(self.leaves)
        values = iter(arrays)
        full = [fixed[i] if i in fixed else next(values) for i in range(self.treedef.num_leaves)]
        return jax.tree_util.tree_unflatten(self.treedef, full)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, Skeleton) and self._key == other._key


def split_arrays(tree):
    """``(arrays, skeleton)``: the array leaves of ``tree`` (a list) and its :class:`Skeleton`."""
    _, leaves, _, static = _split(tree)
    return leaves, Skeleton(static)


def _static_key(static):
    treedef, leaves = static
    try:
        hash(leaves)
        return (treedef, leaves)
    except TypeError:
        return (treedef, tuple((i, id(v)) for i, v in leaves))


class _Plan(NamedTuple):
    closed_jaxpr: Any
    sites: tuple                # every site, in order
    active: dict                # key -> (index, Site, config, row_order) of crossbar layers
    out_tree: Any
    infos: tuple


class Analog:
    """A function whose parameter products run on crossbars (made by :func:`analog`)."""

    def __init__(self, apply: Callable, config: CrossbarConfig | None, *, mode: str,
                 layers, row_order, nonnegative_inputs, signed_inputs, trim_columns: bool):
        if not callable(apply):
            raise TypeError(f"apply must be a function apply(params, *inputs), got "
                            f"{type(apply).__name__}")
        self.mode = check_mode(mode)
        if config is not None and not isinstance(config, CrossbarConfig):
            raise TypeError(f"config must be a reram_emu.CrossbarConfig (e.g. "
                            f"reram_emu.preset('forms')), got {type(config).__name__}")
        if config is None and mode != "float" and not callable(layers) and not layers:
            raise ValueError(f"mode {mode!r} needs a CrossbarConfig (config=None runs only "
                             f"mode='float')")
        if not (layers is None or callable(layers) or isinstance(layers, Mapping)):
            raise TypeError(f"layers must be None, a mapping parameter path (or glob) -> "
                            f"CrossbarConfig or None, or a function (path, K, N) -> "
                            f"CrossbarConfig or None; got {type(layers).__name__}")
        if isinstance(layers, Mapping):
            for pattern, value in layers.items():
                if not isinstance(pattern, str):
                    raise TypeError(f"layers keys must be parameter paths (str), got "
                                    f"{pattern!r}")
                if value is not None and not isinstance(value, CrossbarConfig):
                    raise TypeError(f"layers[{pattern!r}] must be a CrossbarConfig or None "
                                    f"(digital), got {type(value).__name__}")
        orders = row_order.values() if isinstance(row_order, Mapping) else [row_order]
        for order in orders:
            if order not in ROW_ORDERS:
                raise ValueError(f"row_order must be one of {ROW_ORDERS} (or a mapping "
                                 f"path -> one of them), got {order!r}")
        if signed_inputs not in ("auto", True, False):
            raise ValueError(f"signed_inputs must be 'auto', True or False, got "
                             f"{signed_inputs!r}")
        if not (isinstance(nonnegative_inputs, bool) or (
                isinstance(nonnegative_inputs, (tuple, list))
                and all(isinstance(i, int) and not isinstance(i, bool)
                        for i in nonnegative_inputs))):
            raise TypeError(f"nonnegative_inputs must be a bool or a tuple of positional "
                            f"input indices, got {nonnegative_inputs!r}")
        self.apply_fn = apply
        self.config = config
        self.layer_spec = layers
        self.row_order = row_order
        self.nonnegative_inputs = nonnegative_inputs
        self.signed_inputs = signed_inputs
        self.trim_columns = bool(trim_columns)
        self._plans: dict = {}
        functools.update_wrapper(self, apply, updated=())

    # ------------------------------------------------------------------------------ planning

    def _plan(self, params, args, kwargs):
        p_paths, p_leaves, p_rebuild, p_static = _split(params)
        d_paths, d_leaves, d_rebuild, d_static = _split((args, kwargs))
        signature = (tuple((jnp.shape(x), jnp.result_type(x)) for x in p_leaves + d_leaves),
                     _static_key(p_static), _static_key(d_static))
        plan = self._plans.get(signature)
        if plan is None:
            plan = self._make_plan(p_paths, p_leaves, p_rebuild, d_paths, d_leaves, d_rebuild,
                                   args)
            if len(self._plans) >= 16:
                self._plans.pop(next(iter(self._plans)))
            self._plans[signature] = plan
        return plan, p_leaves, d_leaves

    def _make_plan(self, p_paths, p_leaves, p_rebuild, d_paths, d_leaves, d_rebuild, args):
        def flat(p_values, d_values):
            inputs, kw = d_rebuild(d_values)
            return self.apply_fn(p_rebuild(p_values), *inputs, **kw)

        structs = lambda leaves: [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))  # noqa
                                  for x in leaves]
        closed, out_shape = jax.make_jaxpr(flat, return_shape=True)(structs(p_leaves),
                                                                      structs(d_leaves))
        out_tree = jax.tree_util.tree_structure(out_shape)
        nonneg = self._nonnegative_flags(d_paths, len(args))
        sites = _trace.find_sites(closed, p_paths, len(p_leaves), nonneg)
        self._check_patterns(sites)
        active, infos = {}, []
        for index, site in enumerate(sites):
            config = self._config_for(site)
            order = self._order_for(site)
            if config is not None:
                if site.unsupported is not None:
                    raise ValueError(
                        f"parameter {site.path!r} is used in {site.unsupported}, which cannot "
                        f"be mapped onto crossbars; keep it digital with "
                        f"layers={{{site.path!r}: None}}")
                config = self._signed(site, config)
                if self.trim_columns:
                    config = layer_config(config, site.out_features)
                active[site.key] = (index, site, config, order)
            infos.append(LayerInfo(site.name, site.path, site.primitive, site.in_features,
                                   site.out_features, site.rows, site.nonnegative, config,
                                   order))
        return _Plan(closed, tuple(sites), active, out_tree, tuple(infos))

    def _nonnegative_flags(self, d_paths, n_args):
        declared = self.nonnegative_inputs
        flags = []
        for path in d_paths:
            parts = path.split("/")
            positional = parts[0] == "0" and len(parts) > 1
            if isinstance(declared, bool):
                flags.append(declared)
            else:
                flags.append(positional and int(parts[1]) in declared)
        if not isinstance(declared, bool):
            for i in declared:
                if not 0 <= i < n_args:
                    raise ValueError(f"nonnegative_inputs names input {i}, but the function "
                                     f"was called with {n_args} positional inputs")
        return flags

    def _check_patterns(self, sites):
        names = [s.name for s in sites] + [s.path for s in sites]
        for spec in (self.layer_spec, self.row_order):
            if not isinstance(spec, Mapping):
                continue
            for pattern in spec:
                if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                    listed = ", ".join(dict.fromkeys(s.name for s in sites)) or "none"
                    raise ValueError(f"no crossbar product uses parameter {pattern!r}; the "
                                     f"products' parameters are: {listed}")

    @staticmethod
    def _lookup(spec: Mapping, site):
        for key in (site.name, site.path):
            if key in spec:
                return True, spec[key]
        for pattern, value in spec.items():
            if fnmatch.fnmatchcase(site.name, pattern) or fnmatch.fnmatchcase(site.path,
                                                                               pattern):
                return True, value
        return False, None

    def _config_for(self, site):
        spec = self.layer_spec
        if callable(spec) and not isinstance(spec, Mapping):
            value = spec(site.path, site.in_features, site.out_features)
            if value is not None and not isinstance(value, CrossbarConfig):
                raise TypeError(f"layers({site.path!r}, {site.in_features}, "
                                f"{site.out_features}) must return a CrossbarConfig or None, "
                                f"got {type(value).__name__}")
            return value
        if isinstance(spec, Mapping):
            found, value = self._lookup(spec, site)
            if found:
                return value
        return self.config

    def _order_for(self, site):
        if isinstance(self.row_order, Mapping):
            found, value = self._lookup(self.row_order, site)
            return value if found else "channel"
        return self.row_order

    def _signed(self, site, config):
        want = self.signed_inputs
        if want is False or config.inputs.signed:
            return config
        if want == "auto" and site.nonnegative:
            return config
        if config.inputs.dac_bits != 1:
            raise ValueError(
                f"the input of layer {site.name!r} may be negative (the trace cannot prove it "
                f">= 0), but its configuration's {config.inputs.dac_bits}-bit DAC takes "
                f"unsigned inputs only; declare the model's inputs with nonnegative_inputs="
                f"True if they are >= 0, keep the layer digital (layers={{{site.path!r}: "
                f"None}}), or pass signed_inputs=False to clip negative inputs to 0")
        return config.replace(inputs=dataclasses.replace(config.inputs, signed=True))

    # ------------------------------------------------------------------------------ public

    def layers(self, params, *args, **kwargs) -> tuple[LayerInfo, ...]:
        """The function's crossbar products, in order, with the configuration each runs on.

        ``args`` may be arrays or ``jax.ShapeDtypeStruct`` (only shapes are used)."""
        return self._plan(params, args, kwargs)[0].infos

    def weight_view(self, params, *args, **kwargs) -> WeightView:
        """A :class:`WeightView` of the crossbar layers (the digital ones left out).

        Raises ValueError for a layer whose weight is computed from the parameters (other
        than by transposes and reshapes) or shared by several products: its matrix cannot be
        written back into one leaf."""
        plan, p_leaves, d_leaves = self._plan(params, args, kwargs)
        active = list(plan.active.values())
        leaf_of = {}
        for _, site, _, _ in active:
            if not site.stored or "#" in site.name:
                why = ("is used by several products" if "#" in site.name else
                       "reaches its product through arithmetic, not as stored")
                raise ValueError(f"parameter {site.path!r} {why}, so its crossbar matrix "
                                 f"cannot be written back into it; keep it digital "
                                 f"(layers={{{site.path!r}: None}}) or use it as stored")
        sites = {k: v[1] for k, v in plan.active.items()}
        n_data = len(d_leaves)
        closed = plan.closed_jaxpr

        def get_leaves(leaves):
            out = {}

            def handler(site, eqn, x, w):
                order = plan.active[site.key][3]
                out[site.name] = _trace.site_matrices(eqn, site, None, w, order)[1]
                return None
            _trace.evaluate(closed, list(leaves) + [None] * n_data, sites, handler)
            return out

        structs = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in p_leaves]
        transpose = jax.linear_transpose(get_leaves, structs)
        probe = jax.eval_shape(get_leaves, structs)
        for name, struct in probe.items():
            leaf_of[name] = struct

        def put_leaves(leaves, matrices):
            full = {name: matrices.get(name, jnp.zeros(s.shape, s.dtype))
                    for name, s in leaf_of.items()}
            written = transpose(full)[0]
            touched = transpose({name: jnp.ones(s.shape, s.dtype) if name in matrices
                                 else jnp.zeros(s.shape, s.dtype)
                                 for name, s in leaf_of.items()})[0]
            return [jnp.where(t > 0, new, old).astype(jnp.result_type(old))
                    if jnp.shape(t) == jnp.shape(old) else old
                    for old, new, t in zip(leaves, written, touched)]

        return WeightView([site.name for _, site, _, _ in active], get_leaves, put_leaves,
                          _split)

    def program(self, params, *args, key: jax.Array | None = None,
                noise: NoiseParameters | None = None, **kwargs) -> AnalogState:
        """Program every crossbar layer once: an :class:`AnalogState` to read many batches with.

        ``args`` give the input shapes (arrays or ``jax.ShapeDtypeStruct``; their values are
        not used). ``key`` draws the programming (layer ``i`` from ``fold_in(key, i)``); it is
        required when the configuration (or ``noise``) has device variation or faults.
        Outside ``jit`` a polarized layer whose weights break their fragment's sign raises
        (with ``MappingConfig(on_violation="error")``, the default); inside ``jit`` the count
        is in ``state.weights_zeroed``.
        """
        check_key(key, "program key")
        check_noise(noise)
        plan, p_leaves, d_leaves = self._plan(params, args, kwargs)
        layers, zeroed = {}, {}
        if self.mode in ("float", "digital"):
            return AnalogState(layers, zeroed, {})
        for index, site, config, _ in plan.active.values():
            self._require_program_key(site, config, key, noise)

        def handler(site, eqn, x, w):
            index, _, config, order = plan.active[site.key]
            _, w2d, _ = _trace.site_matrices(eqn, site, None, w, order)
            layer_key = None if key is None else jax.random.fold_in(key, index)
            layer, count = program_weights(w2d, config, layer_key, noise)
            if is_concrete(count) and int(count) and config.mapping.scheme == "polarized" \
                    and config.mapping.on_violation == "error":
                raise ValueError(
                    f"layer {site.name!r}: {int(count)} quantized weights oppose their "
                    f"fragment's sign (fragment_rows={config.geometry.fragment_rows}); train "
                    f"with the ADMM polarizer, or pass MappingConfig(on_violation='project') "
                    f"to zero them")
            layers[site.name], zeroed[site.name] = layer, count
            return None

        _trace.evaluate(plan.closed_jaxpr, list(p_leaves) + [None] * len(d_leaves),
                        {k: v[1] for k, v in plan.active.items()}, handler)
        return AnalogState(layers, zeroed, {})

    def apply(self, state: AnalogState | None, params, *args, read_key: jax.Array | None = None,
              noise: NoiseParameters | None = None, return_counts: bool = False, **kwargs):
        """Run the function with its crossbar layers read from ``state`` (:meth:`program`).

        ``read_key`` draws read and ADC noise anew per call (layer ``i`` from
        ``fold_in(read_key, i)``). ``return_counts``: also return ``{layer name: ReadCounts}``
        (mode ``"emulated"``). ``state`` may be None for modes ``"float"`` and ``"digital"``.
        """
        if state is not None and not isinstance(state, AnalogState):
            raise TypeError(f"state must be the AnalogState of {type(self).__name__}.program("
                            f"params, ...), got {type(state).__name__}")
        if state is None and self.mode in ("emulated", "noise_aware"):
            raise ValueError(f"mode {self.mode!r} reads programmed crossbars: pass the state "
                             f"of .program(params, ...), or call the function itself with a "
                             f"program_key to program and read in one go")
        return self._run(state, params, args, kwargs, None, read_key, noise, return_counts)

    def __call__(self, params, *args, program_key: jax.Array | None = None,
                 read_key: jax.Array | None = None, noise: NoiseParameters | None = None,
                 return_counts: bool = False, **kwargs):
        """``apply(params, *args)`` on crossbars, programmed with ``program_key`` in the same
        call (noise-aware training draws fresh programming per step this way); for many reads
        of one programming use :meth:`program` and :meth:`apply`."""
        check_key(program_key, "program_key")
        return self._run(None, params, args, kwargs, program_key, read_key, noise,
                         return_counts)

    def layer_inputs(self, params, *args, **kwargs) -> dict:
        """``{layer name: (R, K) inputs}``: what every crossbar layer multiplies in the float
        forward (a convolution's im2col rows), for calibrating input steps or ADC ranges from
        the ideal model's activations. Traceable (``jit`` it for speed)."""
        seen = {}

        def before_read(site, config, x2d):
            seen[site.name] = x2d
            return None

        self._run(None, params, args, kwargs, None, None, None, False,
                  before_read=before_read, mode="float")
        return seen

    def calibrate(self, state: AnalogState, params, *args, percentile: float = 99.99,
                  input_scales: bool = False, read_key: jax.Array | None = None,
                  noise: NoiseParameters | None = None, **kwargs) -> AnalogState:
        """Calibrate from data: each layer with ``ADCConfig(range="calibrated")`` gets the ADC
        range that covers ``percentile`` % of its noise-free ADC inputs, and with
        ``input_scales`` every layer gets a fixed input step (``percentile`` of ``|x|`` over
        the largest input code) instead of the dynamic per-batch one. ``args`` is a batch of
        the user's data (a few batches concatenated); layers are calibrated in order, each on
        the inputs the calibrated layers before it produce."""
        if not isinstance(state, AnalogState):
            raise TypeError(f"state must be the AnalogState of .program(params, ...), got "
                            f"{type(state).__name__}")
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not (
                0 < percentile <= 100):
            raise ValueError(f"percentile must be a number in (0, 100], got {percentile!r}")
        layers, scales = dict(state.layers), dict(state.scales)

        def before_read(site, config, x2d):
            if input_scales:
                top = (2 ** (config.inputs.bits - 1) - 1 if config.inputs.signed
                       else 2 ** config.inputs.bits - 1)
                value = jnp.percentile(jnp.abs(x2d), percentile)
                scales[site.name] = (jnp.maximum(value, 1e-12) / top).astype(x2d.dtype)
            layer = layers[site.name]
            if config.adc.range == "calibrated":
                layers[site.name] = calibrate_adc(layer, x2d, percentile,
                                                  scale=scales.get(site.name))
            return AnalogState(layers, state.weights_zeroed, scales)

        self._run(state, params, args, kwargs, None, read_key, noise, False,
                  before_read=before_read, mode="emulated")
        return AnalogState(layers, state.weights_zeroed, scales)

    # ------------------------------------------------------------------------------ running

    def _require_program_key(self, site, config, key, noise):
        if key is not None:
            return
        d = config.device
        if noise is not None or d.variation_sigma or d.stuck_on_rate or d.stuck_off_rate:
            raise ValueError(f"layer {site.name!r} draws device variation or stuck-at faults "
                             f"at programming: pass a program key (jax.random.key(seed))")

    def _require_read_key(self, site, config, key, noise, mode):
        if key is not None or mode in ("float", "digital"):
            return
        if noise is not None or config.device.read_noise_sigma or config.adc.noise_lsb:
            raise ValueError(f"layer {site.name!r} draws read noise or ADC noise: pass a "
                             f"read_key (jax.random.key(seed))")

    def _run(self, state, params, args, kwargs, program_key, read_key, noise, return_counts,
             before_read=None, mode=None):
        mode = self.mode if mode is None else mode
        check_key(read_key, "read_key")
        check_noise(noise)
        if not isinstance(return_counts, bool):
            raise TypeError(f"return_counts must be a bool, got {return_counts!r}")
        plan, p_leaves, d_leaves = self._plan(params, args, kwargs)
        for index, site, config, _ in plan.active.values():
            if state is None and mode in ("emulated", "noise_aware"):
                self._require_program_key(site, config, program_key, noise)
            self._require_read_key(site, config, read_key, noise, mode)
            if state is not None and mode in ("emulated", "noise_aware") \
                    and site.name not in state.layers:
                raise ValueError(f"state has no programmed layer {site.name!r}: it was "
                                 f"programmed for another function or parameters; program "
                                 f"it with this function's .program(params, ...)")
        counts: dict = {}
        current = [state]

        def handler(site, eqn, x, w):
            index, _, config, order = plan.active[site.key]
            x2d, w2d, finish = _trace.site_matrices(eqn, site, x, w, order)
            if before_read is not None:
                current[0] = before_read(site, config, x2d)
            st = current[0]
            programmed = None if st is None else st.layers.get(site.name)
            scale = None if st is None else st.scales.get(site.name)
            fold = lambda key: None if key is None else jax.random.fold_in(key, index)  # noqa
            try:
                result = crossbar_matmul(x2d, w2d, config, mode=mode, programmed=programmed,
                                         program_key=fold(program_key),
                                         read_key=fold(read_key), noise=noise, scale=scale)
            except (ValueError, TypeError) as error:
                raise type(error)(f"layer {site.name!r}: {error}") from None
            if result.counts is not None:
                counts[site.name] = result.counts
            return finish(result.outputs.astype(x2d.dtype))

        outs = _trace.evaluate(plan.closed_jaxpr, list(p_leaves) + list(d_leaves),
                               {k: v[1] for k, v in plan.active.items()}, handler)
        outputs = jax.tree_util.tree_unflatten(plan.out_tree, outs)
        return (outputs, counts) if return_counts else outputs


def analog(apply: Callable, config: CrossbarConfig | None = None, *, mode: str = "emulated",
           layers: Mapping[str, CrossbarConfig | None] | Callable | None = None,
           row_order: str | Mapping[str, str] = "channel",
           nonnegative_inputs: bool | tuple[int, ...] = False,
           signed_inputs: str | bool = "auto", trim_columns: bool = True) -> Analog:
    """Put the products of ``apply(params, *inputs)`` with its parameters on crossbars.

    Args:
      apply: any JAX function whose first argument is a pytree of parameters (a Flax
        ``model.apply``, an NNX or Equinox model called as ``lambda m, x: m(x)``, a plain
        function). Array leaves are traced; other leaves (Equinox's activation functions) are
        static.
      config: the crossbar design of every product (``reram_emu.preset("forms")``).
      mode: ``"emulated"`` (the bit-level read), ``"noise_aware"`` (fast training forward),
        ``"digital"`` (the ideal quantized product) or ``"float"``
        (:func:`reram_emu.nn.crossbar_matmul`).
      layers: per-layer control by parameter path: a mapping path (or glob, e.g.
        ``"*/Dense_*"``) -> CrossbarConfig, or None to keep that product digital (every key
        must match a product); or a function ``(path, K, N) -> CrossbarConfig | None``.
      row_order: im2col row order of convolutions, ``"channel"`` or ``"width"`` (or a mapping
        path -> order).
      nonnegative_inputs: the data inputs are >= 0 (True, or the positional indices of the
        ones that are): the first layer then reads unsigned inputs.
      signed_inputs: ``"auto"``, True or False (module docstring).
      trim_columns: emulate a layer narrower than a tile on a tile trimmed to its columns
        (outputs and noise unchanged, :func:`reram_emu.nn.layer_config`).

    Returns an :class:`Analog`: call it as ``f(params, *inputs, program_key=, read_key=)``, or
    program once with ``f.program(params, *inputs, key=)`` and read with
    ``f.apply(state, params, *inputs, read_key=)``; ``f.layers(params, *inputs)`` lists the
    crossbar products and ``f.calibrate`` sets ADC ranges from data. Composes with
    ``jax.jit``, ``jax.vmap`` (over keys and :class:`~reram_emu.NoiseParameters`) and, in the
    ``"noise_aware"``, ``"digital"`` and ``"emulated"`` modes, ``jax.grad`` (straight-through).
    """
    return Analog(apply, config, mode=mode, layers=layers, row_order=row_order,
                  nonnegative_inputs=nonnegative_inputs, signed_inputs=signed_inputs,
                  trim_columns=trim_columns)
