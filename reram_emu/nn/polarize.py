"""ADMM polarization and masked fine-tuning of any model, as optax gradient transformations.

The polarizer's rules live in :mod:`reram_emu.admm` (on ``{layer: (K, N)}`` matrices); here
they act on an arbitrary parameter pytree through a :class:`~reram_emu.nn.WeightView` (which
leaves are crossbar weights, and each one's fragment order, follow from the traced products):

* :func:`admm_pull`: chained after the optimizer (``optax.chain(optax.adam(lr),
  admm_pull(view, admm))``), it moves every crossbar matrix toward ``Z - U`` by the fraction
  ``min(penalty_lr * rho, 1)`` (the decoupled penalty step of :class:`~reram_emu.admm.ADMMConfig`)
  and runs the Z/U updates every ``update_every`` steps and the sign updates every
  ``sign_every`` steps in its own state;
* :func:`polarized_masks`: chained after the optimizer for fine-tuning after the hard
  projection: zeroed weights stay zero and the others keep their fragment's sign.

:func:`polarize` is the whole flow for a classifier: ADMM epochs -> hard projection -> masked
fine-tuning -> 8-bit quantization -> check (every layer accepted by the FORMS mapping with
``on_violation="error"``), forward in float or noise-aware on the crossbars.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import admm as admm_lib
from .train import check_training_data, cross_entropy, fit
from .transform import Analog, WeightView

__all__ = ["AdmmPullState", "admm_pull", "polarized_masks", "polarize", "PolarizedModel"]


class AdmmPullState(NamedTuple):
    """State of :func:`admm_pull`: the step count and the ADMM variables (Z, U, signs, rho)."""

    count: jax.Array
    admm: admm_lib.ADMMState


def _add(tree, updates):
    return jax.tree_util.tree_map(lambda p, u: p + u.astype(p.dtype), tree, updates)


def _sub(a, b):
    return jax.tree_util.tree_map(lambda x, y: x - y, a, b)


def admm_pull(view: WeightView, config: admm_lib.ADMMConfig, *, update_every: int,
              sign_every: int = 0) -> optax.GradientTransformation:
    """The ADMM W-step's pull toward the polarized set, as an optax transformation.

    Chain it after the optimizer; ``update(updates, state, params)`` needs ``params``.
    ``update_every``: steps between Z/U updates (``ADMMConfig.updates_per_epoch`` per epoch);
    ``sign_every``: steps between fragment-sign updates (0: never).
    """
    if not config.decoupled:
        raise ValueError("admm_pull is the decoupled penalty step (ADMMConfig(decoupled=True)); "
                         "for the coupled form add admm.admm_penalty to the loss")
    if update_every < 1 or sign_every < 0:
        raise ValueError(f"need update_every >= 1 and sign_every >= 0, got {update_every}, "
                         f"{sign_every}")

    def init(params):
        return AdmmPullState(jnp.zeros((), jnp.int32),
                             admm_lib.init_admm(view.get(params), config))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("admm_pull needs the parameters: optimizer.update(grads, state, "
                             "params)")
        stepped = _add(params, updates)
        pulled = admm_lib.decoupled_penalty_step(view.get(stepped), state.admm,
                                                 config.penalty_lr)
        new_params = view.put(stepped, pulled)
        count = state.count + 1
        weights = view.get(new_params)
        admm_state = jax.lax.cond(count % update_every == 0,
                                  lambda s: admm_lib.admm_update(weights, s, config),
                                  lambda s: s, state.admm)
        if sign_every:
            admm_state = jax.lax.cond(count % sign_every == 0,
                                      lambda s: admm_lib.update_signs(weights, s, config),
                                      lambda s: s, admm_state)
        return _sub(new_params, params), AdmmPullState(count, admm_state)

    return optax.GradientTransformation(init, update)


def polarized_masks(view: WeightView, signs: dict, masks: dict,
                    fragment_rows: int) -> optax.GradientTransformation:
    """Masked fine-tuning as an optax transformation (chain it after the optimizer): the
    updates of zeroed weights are dropped, and a weight that would cross to the wrong side of
    its fragment's sign is set to zero (:func:`reram_emu.admm.clamp_to_signs`)."""

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("polarized_masks needs the parameters: optimizer.update(grads, "
                             "state, params)")
        masked = view.put(updates, admm_lib.masked_updates(view.get(updates), masks))
        stepped = _add(params, masked)
        clamped = view.put(stepped, admm_lib.clamp_to_signs(view.get(stepped), signs, masks,
                                                            fragment_rows))
        return _sub(clamped, params), state

    return optax.GradientTransformation(init, update)


class PolarizedModel(NamedTuple):
    """Result of :func:`polarize`: the polarized (and quantized) parameters, the hard
    projection's signs and masks per layer, the per-epoch history and the fraction of each
    layer's weights the projection zeroed."""

    params: Any
    signs: dict
    masks: dict
    history: list
    zeroed_fraction: dict


def polarize(f: Analog, params, x_train, y_train, admm: admm_lib.ADMMConfig, *,
             learning_rate: float = 1e-3, batch_size: int = 64, seed: int = 0,
             noise_aware: bool = False, steps_per_epoch: int | None = None,
             loss: Callable = cross_entropy, log: Callable[[str], None] | None = print
             ) -> PolarizedModel:
    """Polarize a classifier ``f(params, x) -> logits`` at ``admm.fragment_rows``.

    ``admm.epochs`` epochs of Adam with :func:`admm_pull`, the hard projection, then
    ``admm.finetune_epochs`` epochs with :func:`polarized_masks`, then ``admm.weight_bits``
    quantization and the check (:func:`reram_emu.nn.fit` runs each phase). The forward is
    the float function (``f.apply_fn``) or, with ``noise_aware``, ``f`` itself in the
    noise-aware mode (fresh programming per step). Raises RuntimeError if the result is not
    exactly polarized. With ``admm.prune`` (a :class:`reram_emu.pruning.PruneConfig`) the same
    flow prunes structures instead (``signs`` is then ``{}``).
    """
    options = dict(batch_size=batch_size, seed=seed, noise_aware=noise_aware,
                   steps_per_epoch=steps_per_epoch, loss=loss, log=log)
    n_steps = check_training_data(x_train, y_train, batch_size, steps_per_epoch)
    view = f.weight_view(params, jnp.asarray(np.asarray(x_train[:batch_size])))
    per_epoch = max(1, admm.updates_per_epoch)
    pull = admm_pull(view, admm, update_every=max(1, n_steps // per_epoch),
                     sign_every=admm.sign_every * n_steps)
    p, history = fit(f, params, x_train, y_train,
                     optax.chain(optax.adam(learning_rate), pull), admm.epochs, phase="admm",
                     **options)
    projected, signs, masks = admm_lib.hard_projection(view.get(p), admm)
    zeroed = {name: float(1.0 - jnp.mean(masks[name])) for name in masks}
    p = view.put(p, projected)
    lr = admm.finetune_learning_rate or learning_rate
    p, more = fit(f, p, x_train, y_train,
                  optax.chain(optax.adam(lr), polarized_masks(view, signs, masks,
                                                              admm.fragment_rows)),
                  admm.finetune_epochs, phase="finetune", **options)
    if admm.weight_bits is not None:
        p = view.put(p, admm_lib.quantize_weights_dict(view.get(p), admm.weight_bits))
    admm_lib.require_constraint(view.get(p), admm)
    return PolarizedModel(p, signs, masks, history + more, zeroed)
