"""The ADMM polarizer: train weights whose every fragment has one sign (FORMS, ISCA 2021).

Problem (per crossbar layer l with weight matrix W_l of shape (K, N)):

    minimize  loss(W)   subject to  W_l in P_m  for every layer,

where ``P_m`` is the set of matrices whose fragments (m consecutive rows of one column, see
:mod:`reram_emu.polarization`) hold weights of one sign only (or zeros). ADMM
(Boyd et al., "Distributed Optimization and Statistical Learning via the Alternating Direction
Method of Multipliers", 2011; applied to DNN weight constraints by Zhang et al., "A Systematic
DNN Weight Pruning Framework using ADMM", ECCV 2018, and to polarization by FORMS) splits it into

1. W-step: a few epochs of Adam on ``loss(W) + sum_l rho/2 ||W_l - Z_l + U_l||_F^2``
   (:func:`admm_penalty`);
2. Z-step: ``Z_l = project(W_l + U_l)`` onto ``P_m`` with the current fragment signs
   (:func:`admm_update`);
3. dual step: ``U_l += W_l - Z_l``.

The fragment signs are re-estimated from ``W + U`` every few epochs (:func:`update_signs`) by
the paper's rule (the sign of the fragment's sum) or the Euclidean one (the sign that keeps the
larger sum of squares, which makes step 2 the exact Euclidean projection onto P_m). ``rho``
grows geometrically (:func:`rho_at`), pulling W onto P_m. At the end a hard projection
(:func:`hard_projection`) zeroes the remaining opposite-sign weights and returns the masks for
masked fine-tuning (:func:`masked_updates`, :func:`clamp_to_signs`), in which the zeroed weights
stay exactly zero and the others keep their fragment's sign, so the result satisfies the
constraint exactly. 8-bit quantization (:func:`quantize_weights_dict`) keeps it (rounding
never flips a sign), and :func:`check_polarized` verifies it, including that
:func:`reram_emu.map_weights` with ``on_violation="error"`` accepts every layer.

All state is a pytree of arrays (rho is a traced scalar), so one jitted train step serves the
whole run. Shapes: W, Z, U (K, N); signs (F, N) with F = ceil(K / m); masks (K, N).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .config import CrossbarConfig, MappingConfig, WeightConfig
from .mapping import map_weights
from .polarization import (PolarizationReport, expand_fragments, fragment_signs, is_polarized,
                           polarization_violations, project_polarized)
from .pruning import PruneConfig, project_pruned
from .quantization import quantize_weights

__all__ = ["ADMMConfig", "ADMMState", "init_admm", "rho_at", "admm_penalty", "update_signs",
           "admm_update", "decoupled_penalty_step", "primal_residuals", "hard_projection",
           "masked_updates",
           "clamp_to_signs", "quantize_weights_dict", "check_polarized", "check_constraint",
           "require_constraint",
           "polarization_reports",
           "signs_of"]


@dataclass(frozen=True)
class ADMMConfig:
    """Hyper-parameters of the polarizer.

    Attributes:
      fragment_rows: m, rows per fragment (FORMS: 4, 8, 16).
      rule: fragment sign rule, ``"sum"`` (FORMS) or ``"euclidean"`` (true projection).
      rho: initial penalty weight (the penalty is a *sum* of squares over all weights).
      rho_growth: factor applied to rho after every Z/U update (geometric schedule).
      rho_max: cap of rho.
      epochs: ADMM epochs (W-steps interleaved with Z/U updates).
      updates_per_epoch: Z/U updates per epoch (evenly spaced in steps).
      sign_every: re-estimate fragment signs every this many epochs (k); 0: never after init.
      finetune_epochs: masked fine-tuning epochs after the hard projection.
      admm_schedule: learning-rate schedule of the ADMM phase (``"constant"`` keeps Adam able
        to follow the growing penalty; ``"cosine"``); fine-tuning uses the training config's.
      finetune_learning_rate: None: the training configuration's.
      weight_bits: final quantization of the weights (None: keep float).
      decoupled: apply the penalty's gradient outside Adam (:func:`decoupled_penalty_step`,
        a plain gradient step of size ``penalty_lr``, as AdamW decouples weight decay) instead
        of adding the penalty to the loss that Adam normalizes. Adam's per-weight scaling
        makes a coupled quadratic penalty pull every weight at the same speed whatever rho is,
        and lets the growing penalty drown the loss's gradient in Adam's second moment.
      penalty_lr: step size of the decoupled penalty step: each step moves W towards
        ``Z - U`` by the fraction ``penalty_lr * rho`` (capped at 1).
      prune: the constraint set. None (default): polarized fragments (the polarizer). A
        :class:`reram_emu.pruning.PruneConfig`: at most k non-zero structures per layer (the
        crossbar-aware pruner; Z-step :func:`reram_emu.pruning.project_pruned`, no fragment
        signs; ``rule`` and ``sign_every`` are then unused and ``weight_bits`` should be None,
        as quantization comes last in the FORMS flow).
    """

    fragment_rows: int = 8
    rule: str = "sum"
    rho: float = 1e-3
    rho_growth: float = 1.6
    rho_max: float = 1.0
    epochs: int = 3
    updates_per_epoch: int = 2
    sign_every: int = 1
    finetune_epochs: int = 2
    admm_schedule: str = "constant"
    finetune_learning_rate: float | None = None
    weight_bits: int | None = 8
    decoupled: bool = True
    penalty_lr: float = 1.0
    prune: PruneConfig | None = None

    def __post_init__(self):
        if self.prune is not None and not isinstance(self.prune, PruneConfig):
            raise TypeError(f"prune must be None or a reram_emu.pruning.PruneConfig, got "
                            f"{type(self.prune).__name__}")
        if self.rule not in ("sum", "euclidean"):
            raise ValueError(f"rule must be 'sum' or 'euclidean', got {self.rule!r}")
        if self.fragment_rows < 1:
            raise ValueError(f"fragment_rows must be >= 1, got {self.fragment_rows}")
        if self.rho <= 0 or self.rho_growth < 1 or self.rho_max < self.rho:
            raise ValueError("need rho > 0, rho_growth >= 1 and rho_max >= rho")
        if self.epochs < 0 or self.finetune_epochs < 0 or self.updates_per_epoch < 1:
            raise ValueError("epochs and finetune_epochs must be >= 0, updates_per_epoch >= 1")
        if self.sign_every < 0:
            raise ValueError(f"sign_every must be >= 0, got {self.sign_every}")


class ADMMState(NamedTuple):
    """ADMM variables per layer name: Z, U (K, N), signs (F, N); rho () and the update count."""

    z: dict
    u: dict
    signs: dict
    rho: jax.Array
    updates: jax.Array


def signs_of(weights: dict, config: ADMMConfig) -> dict:
    """Fragment signs (F, N) of every layer by the configured rule (``{}`` when pruning)."""
    if config.prune is not None:
        return {}
    return {name: fragment_signs(w, config.fragment_rows, config.rule)
            for name, w in weights.items()}


def _project(name: str, w: jax.Array, signs: dict, config: ADMMConfig):
    """The Z-step's projection of one layer onto the constraint set: ``(projected, mask)``;
    the mask is 1 where a weight may stay non-zero."""
    if config.prune is not None:
        return project_pruned(w, config.prune.ratios(name), config.prune.fragment_rows)
    expanded = expand_fragments(signs[name], config.fragment_rows, w.shape[0])
    projected = project_polarized(w, config.fragment_rows, signs=signs[name])
    return projected, (w * expanded >= 0).astype(w.dtype)


def init_admm(weights: dict, config: ADMMConfig) -> ADMMState:
    """Signs from ``W`` by the rule, ``Z = project(W)``, ``U = 0``, ``rho = config.rho``."""
    if config.prune is not None:
        config.prune.check_layers(weights)
    signs = signs_of(weights, config)
    z = {name: _project(name, w, signs, config)[0] for name, w in weights.items()}
    u = {name: jnp.zeros_like(w) for name, w in weights.items()}
    return ADMMState(z, u, signs, jnp.asarray(config.rho, jnp.float32),
                     jnp.asarray(0, jnp.int32))


def rho_at(config: ADMMConfig, updates) -> jax.Array:
    """rho after ``updates`` Z/U updates: ``min(rho * growth**updates, rho_max)``."""
    return jnp.minimum(config.rho * config.rho_growth ** jnp.asarray(updates, jnp.float32),
                       config.rho_max)


def admm_penalty(weights: dict, state: ADMMState) -> jax.Array:
    """``sum_l rho/2 ||W_l - Z_l + U_l||_F^2`` (Z, U held constant)."""
    total = 0.0
    for name, w in weights.items():
        d = w - jax.lax.stop_gradient(state.z[name] - state.u[name])
        total = total + jnp.sum(d * d)
    return 0.5 * jax.lax.stop_gradient(state.rho) * total


def decoupled_penalty_step(weights: dict, state: ADMMState, penalty_lr: float) -> dict:
    """One gradient step on the penalty alone: ``W -= min(penalty_lr * rho, 1) (W - Z + U)``."""
    pull = jnp.minimum(penalty_lr * state.rho, 1.0)
    return {name: w - pull * (w - state.z[name] + state.u[name]) for name, w in weights.items()}


def update_signs(weights: dict, state: ADMMState, config: ADMMConfig) -> ADMMState:
    """Re-estimate every fragment's sign from ``W + U`` by the configured rule (no-op when
    pruning)."""
    return state._replace(signs=signs_of({name: w + state.u[name]
                                          for name, w in weights.items()}, config))


def admm_update(weights: dict, state: ADMMState, config: ADMMConfig) -> ADMMState:
    """Z-step and dual step: ``Z = project(W + U, signs)``, ``U += W - Z``; then rho grows."""
    z, u = {}, {}
    for name, w in weights.items():
        z[name] = _project(name, w + state.u[name], state.signs, config)[0]
        u[name] = state.u[name] + w - z[name]
    updates = state.updates + 1
    return ADMMState(z, u, state.signs, rho_at(config, updates).astype(state.rho.dtype), updates)


def primal_residuals(weights: dict, state: ADMMState) -> dict:
    """``||W - Z||_F / ||W||_F`` per layer (0 when W is on the polarized set)."""
    out = {}
    for name, w in weights.items():
        norm = jnp.sqrt(jnp.sum(w * w))
        out[name] = jnp.sqrt(jnp.sum((w - state.z[name]) ** 2)) / jnp.maximum(norm, 1e-30)
    return out


def hard_projection(weights: dict, config: ADMMConfig, signs: dict | None = None):
    """Project every layer onto the constraint set: returns ``(projected, signs, masks)``.

    Polarizing: ``signs`` default to the rule applied to ``weights``; ``masks`` (K, N) are 1
    where a weight may stay nonzero (it agrees with its fragment's sign) and 0 where it was
    zeroed. Pruning: ``signs`` is ``{}`` and ``masks`` are 1 inside the kept structures.
    Idempotent.
    """
    signs = signs_of(weights, config) if signs is None else signs
    projected, masks = {}, {}
    for name, w in weights.items():
        projected[name], masks[name] = _project(name, w, signs, config)
    return projected, signs, masks


def masked_updates(updates: dict, masks: dict) -> dict:
    """Zero the updates of masked weights: ``updates * mask`` leaf by leaf (name -> (K, N))."""
    return {name: u * masks[name] if name in masks else u for name, u in updates.items()}


def clamp_to_signs(weights: dict, signs: dict, masks: dict, fragment_rows: int) -> dict:
    """Keep a fine-tuned matrix on its constraint set: zero masked weights and any weight that
    crossed to the wrong side of its fragment's sign (it may grow back on the right side
    later). A layer without signs (pruning) is only masked."""
    out = {}
    for name, w in weights.items():
        if name not in signs:
            out[name] = jnp.where(masks[name] > 0, w, 0.0).astype(w.dtype)
            continue
        expanded = expand_fragments(signs[name], fragment_rows, w.shape[0])
        out[name] = jnp.where((w * expanded >= 0) & (masks[name] > 0), w, 0.0).astype(w.dtype)
    return out


def quantize_weights_dict(weights: dict, bits: int = 8, scale: str = "per_layer") -> dict:
    """Fake-quantize every matrix to ``bits``-bit symmetric integers times its scale, the same
    quantization :func:`reram_emu.map_weights` applies (so mapping it again is exact)."""
    config = WeightConfig(bits=bits, scale=scale)
    out = {}
    for name, w in weights.items():
        integers, s = quantize_weights(w, config)
        out[name] = (integers * s).astype(w.dtype)
    return out


def check_constraint(weights: dict, config: ADMMConfig,
                     crossbar_config: CrossbarConfig | None = None) -> bool:
    """True when every layer is on the ADMM stage's constraint set: polarized
    (:func:`check_polarized`, with ``crossbar_config`` also mapped strictly) or, when pruning,
    with at most the kept number of each structure (the pruning projection changes nothing)."""
    if config.prune is None:
        return check_polarized(weights, config.fragment_rows, crossbar_config)
    return all(bool(jnp.array_equal(_project(name, jnp.asarray(w), {}, config)[0], w))
               for name, w in weights.items())


def require_constraint(weights: dict, config: ADMMConfig,
                       crossbar_config: CrossbarConfig | None = None) -> None:
    """RuntimeError naming the stage's constraint unless :func:`check_constraint` holds."""
    if not check_constraint(weights, config, crossbar_config):
        raise RuntimeError("the weights violate the constraint of the ADMM stage ("
                           + ("pruning" if config.prune is not None else "polarization") + ")")


def polarization_reports(weights: dict, fragment_rows: int, rule: str = "sum"
                         ) -> dict[str, PolarizationReport]:
    """What a projection at programming would remove, per layer."""
    return {name: polarization_violations(jnp.asarray(w), fragment_rows, rule)
            for name, w in weights.items()}


def check_polarized(weights: dict, fragment_rows: int,
                    config: CrossbarConfig | None = None) -> bool:
    """True when every layer is exactly polarized at ``fragment_rows`` and, if ``config`` is
    given, :func:`reram_emu.map_weights` accepts every layer with ``on_violation="error"``
    (it raises otherwise; checked after the mapping's own quantization)."""
    ok = all(bool(is_polarized(jnp.asarray(w), fragment_rows)) for w in weights.values())
    if config is not None:
        if config.geometry.fragment_rows != fragment_rows:
            raise ValueError(f"config has fragment_rows={config.geometry.fragment_rows}, "
                             f"checking {fragment_rows}")
        strict = config.replace(mapping=MappingConfig(
            scheme="polarized", on_violation="error", baseline=config.mapping.baseline))
        for w in weights.values():
            map_weights(np.asarray(w), strict)  # raises ValueError on any broken fragment
    return ok
