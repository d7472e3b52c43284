"""Training loops, the polarization pipeline, noise-aware training, evaluation through the
emulator with confidence intervals, and checkpoints that a run resumes from.

Phases (each one jitted train step, batches drawn from numpy with a seeded permutation per
epoch, float32):

* :func:`train` with ``phase="baseline"``: plain float training (Adam, cosine decay);
* ``phase="admm"``: the W-step of ADMM (:mod:`reram_emu.admm`): loss + rho/2 ||W - Z + U||^2,
  with Z/U updates ``updates_per_epoch`` times per epoch and sign re-estimation every
  ``sign_every`` epochs;
* ``phase="finetune"``: masked fine-tuning after the hard projection: the updates of zeroed
  weights are masked and every step ends with :func:`reram_emu.admm.clamp_to_signs`, so the
  weights stay exactly polarized;
* :func:`polarize` chains admm -> hard projection -> finetune -> 8-bit quantization -> check.

Noise-aware training (``noise_aware=NoiseAware(config)``): the forward pass programs every
layer with a fresh key per step through :class:`reram_emu.layers.NoisyRunner` (device variation,
stuck-at faults, finite levels from the same CrossbarConfig the emulator reads with; read noise
and ADC noise as output noise of the bit-serial read's variance; straight-through gradients).
IR drop: ``program`` calls :func:`reram_emu.crossbar.analog_response`, the single place where
the circuit model plugs in, and ``effective_weights`` reads the programmed response back, so
once that function models wire resistance the noise-aware forward includes it with no change
here (the gradient is straight-through; a gradient through the solver would replace
:func:`reram_emu.layers.ste` by the plain composition).

Checkpoints: ``np.savez`` files (``<dir>/<phase>.npz``) with every leaf of the training state
under its pytree path (``jax.tree_util.keystr``), plus ``__epoch__``, ``__step__``,
``__seed__``, ``__done__``, a JSON history and ``__provenance__`` (:func:`checkpoint_provenance`:
the phase, the seed and a hash of the model, the configurations, the starting parameters and
the data); written atomically after every epoch. A run given the same directory resumes from
the last completed epoch of the phase (the data order and the noise keys depend only on the
seed, the epoch and the step, so a resumed run continues exactly as the uninterrupted one
would); a damaged checkpoint, or one another phase or configuration wrote, raises
:class:`CheckpointError` naming the file.

Evaluation: :func:`accuracy` (ideal float model), :func:`evaluate_emulated` (the full emulated
read, vmapped over groups of noise keys and ``lax.map``-ped over the groups, mean and a 95 %
Student-t confidence interval over keys, and every image's correctness per key),
:func:`difference_ci` (Welch interval of a difference of means), :func:`crossed_ci` (interval of
a mean over keys x images that counts both the keys and the choice of test images).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import admm as admm_lib
from .config import CrossbarConfig, NoiseParameters
from .layers import EmulatedRunner, NoisyRunner, RecordingRunner, layer_config, scales_from_records
from .models import Model

__all__ = ["TrainConfig", "NoiseAware", "TrainState", "train", "polarize", "PolarizeResult",
           "accuracy", "predict", "calibrate_input_scales", "layer_configs", "noise_keys",
           "evaluate_emulated", "EmulatedEvaluation", "mean_ci", "difference_ci", "crossed_ci",
           "admm_phase", "finetune_phase",
           "save_checkpoint", "load_checkpoint", "checkpoint_provenance",
           "CheckpointError", "read_npz", "cross_entropy"]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and loop settings of one phase.

    Attributes:
      epochs: passes over the training set.
      batch_size: examples per step (the last partial batch of an epoch is dropped).
      learning_rate: Adam's peak learning rate.
      schedule: ``"cosine"`` (decay to ``final_lr_fraction`` of the peak over the phase) or
        ``"constant"``.
      final_lr_fraction: see ``schedule``.
      seed: seeds the data order (``default_rng([seed, epoch])``) and the noise keys.
      eval_batch_size: examples per call when evaluating.
      max_steps_per_epoch: truncate epochs (fast tests); None: full epochs.
    """

    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    final_lr_fraction: float = 0.02
    seed: int = 0
    eval_batch_size: int = 1000
    max_steps_per_epoch: int | None = None

    def __post_init__(self):
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("need epochs >= 0, batch_size >= 1, learning_rate > 0")


@dataclass(frozen=True)
class NoiseAware:
    """Noise-aware forward: draw the non-idealities of ``config`` afresh every step.

    Attributes:
      config: the CrossbarConfig the emulator reads with (its device, ADC, inputs, mapping).
      read_noise: add the read noise of ``config.device.read_noise_sigma`` at the outputs.
      adc_noise: add ``config.adc.noise_lsb`` ADC noise at the outputs.
      trim_columns: per-layer configs via :func:`reram_emu.layers.layer_config`.
      exact_read: forward through the full emulated read (ADC quantization and every noise
        exactly, straight-through gradient; costs an emulated read per step).
    """

    config: CrossbarConfig
    read_noise: bool = True
    adc_noise: bool = True
    trim_columns: bool = True
    exact_read: bool = False


class TrainState(NamedTuple):
    """Everything a phase needs to continue (a pytree; saved in checkpoints).

    ``admm``: ADMMState in the admm phase; ``signs``/``masks``: fragment signs and masks in
    the finetune phase (else None).
    """

    params: dict
    opt_state: Any
    admm: Any = None
    signs: Any = None
    masks: Any = None


def layer_configs(model: Model, config: CrossbarConfig, trim_columns: bool = True) -> dict:
    """``{layer name: CrossbarConfig}`` (columns trimmed per layer, see ``layer_config``)."""
    return {name: layer_config(config, spec.out_features, trim_columns)
            for name, spec in model.layers}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


# --------------------------------------------------------------------------- checkpoints


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, not a checkpoint, or written by another
    stage, seed or configuration. The message names the file and says what to do."""


def _flatten(tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _hashable(value):
    """JSON stand-in of a dataclass (its fields) or an array (dtype, shape, sha256 of bytes)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        array = np.ascontiguousarray(value)
        return [str(array.dtype), list(array.shape), hashlib.sha256(array.tobytes()).hexdigest()]
    raise TypeError(f"cannot hash a {type(value).__name__} into a checkpoint's provenance")


def checkpoint_provenance(stage: str, seed: int, **config) -> dict:
    """What produced a checkpoint: ``{"stage", "seed", "config"}``, ``config`` the first 16
    hex digits of the sha256 of the JSON of ``config`` (JSON values, dataclasses by their
    fields, pytrees of arrays by their bytes). Give it to :func:`save_checkpoint` and, as
    ``expect``, to :func:`load_checkpoint`."""
    text = json.dumps(config, sort_keys=True, default=_hashable)
    return {"stage": str(stage), "seed": int(seed),
            "config": hashlib.sha256(text.encode()).hexdigest()[:16]}


def _describe(provenance) -> str:
    provenance = provenance if isinstance(provenance, dict) else {"stage": provenance}
    return (f"stage {provenance.get('stage')!r}, seed {provenance.get('seed')}, "
            f"configuration {provenance.get('config')}")


def save_checkpoint(path: str, state, *, epoch: int, step: int, seed: int, done: bool = False,
                    history: list | None = None, extra: dict | None = None,
                    provenance: dict | None = None) -> None:
    """Write ``state`` (any pytree) and the loop counters to ``path`` (.npz) atomically
    (a temporary file in the same folder, flushed, fsync-ed, then renamed over ``path``).
    ``provenance``: :func:`checkpoint_provenance` of what produced ``state``."""
    arrays = _flatten(state)
    arrays.update({"__epoch__": np.asarray(epoch), "__step__": np.asarray(step),
                   "__seed__": np.asarray(seed), "__done__": np.asarray(done),
                   "__history__": np.asarray(json.dumps(history or [])),
                   "__extra__": np.asarray(json.dumps(extra or {}))})
    if provenance is not None:
        arrays["__provenance__"] = np.asarray(json.dumps(provenance))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{os.path.basename(path)}.",
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        if os.path.exists(handle.name):
            os.unlink(handle.name)
        raise


def read_npz(path, required=(), redo: str = "delete it to recompute") -> dict:
    """Every array of the .npz file ``path`` (``{name: array}``).

    Raises CheckpointError naming the file and ``redo`` (what to do) when it is not an .npz
    archive (empty, text), is damaged (truncated) or lacks an entry named in ``required``;
    FileNotFoundError when it does not exist.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
        if head == b"PK\x03\x04":  # a zip archive, as np.savez writes
            with np.load(path) as data:
                stored = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    except Exception as error:  # BadZipFile, EOFError, zlib.error, OSError ...: damaged
        raise CheckpointError(f"{path} is damaged or not an .npz archive "
                              f"({type(error).__name__}: {error}); {redo}") from error
    if head != b"PK\x03\x04":
        what = "an empty file" if not head else f"it begins with {head!r}"
        raise CheckpointError(f"{path} is not an .npz archive ({what}); {redo}")
    missing = [name for name in required if name not in stored]
    if missing:
        raise CheckpointError(f"{path} is damaged or another kind of file (no entry "
                              f"{', '.join(missing)}); {redo}")
    return stored


def load_checkpoint(path: str, like, expect: dict | None = None) -> tuple[Any, dict]:
    """Read a checkpoint into the structure of ``like`` (a pytree of the same shape).

    Returns ``(state, meta)`` with meta ``{"epoch", "step", "seed", "done", "history",
    "extra", "provenance"}`` (provenance None for a checkpoint saved without one).
    ``expect``: the :func:`checkpoint_provenance` the checkpoint must carry.

    Raises:
      CheckpointError (a ValueError) naming the file, what is wrong and to delete it: the
      file is damaged or not a checkpoint, it was written by another stage, seed or
      configuration than ``expect`` (or without provenance while one is expected), or its
      leaves do not match ``like``.
    """
    redo = "delete it to recompute"
    stored = read_npz(path, ("__epoch__", "__step__", "__seed__", "__done__", "__history__",
                             "__extra__"), redo)
    try:
        meta = {"epoch": int(stored["__epoch__"]), "step": int(stored["__step__"]),
                "seed": int(stored["__seed__"]), "done": bool(stored["__done__"]),
                "history": json.loads(str(stored["__history__"])),
                "extra": json.loads(str(stored["__extra__"])),
                "provenance": (json.loads(str(stored["__provenance__"]))
                               if "__provenance__" in stored else None)}
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is damaged ({error}); {redo}") from error
    if expect is not None and meta["provenance"] is None:
        raise CheckpointError(f"checkpoint {path} does not record what produced it (written "
                              f"by an older reram_emu); {redo}")
    if expect is not None and meta["provenance"] != expect:
        raise CheckpointError(f"checkpoint {path} holds {_describe(meta['provenance'])}, but "
                              f"{_describe(expect)} was expected (another stage, seed or "
                              f"configuration); {redo}")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    values = []
    for key_path, leaf in leaves:
        name = jax.tree_util.keystr(key_path)
        if name not in stored:
            raise CheckpointError(f"checkpoint {path} has no leaf {name}; {redo}")
        value = stored[name]
        if np.shape(value) != np.shape(leaf):
            raise CheckpointError(f"checkpoint {path}: leaf {name} has shape "
                                  f"{np.shape(value)}, expected {np.shape(leaf)}; {redo}")
        values.append(jnp.asarray(value, dtype=jnp.asarray(leaf).dtype))
    return jax.tree_util.tree_unflatten(treedef, values), meta


# --------------------------------------------------------------------------- training


def _steps_per_epoch(n: int, config: TrainConfig) -> int:
    steps = n // config.batch_size
    if steps < 1:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {n} training examples")
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    return steps


@functools.lru_cache(maxsize=64)
def _make_step(model: Model, phase: str, noise_aware: NoiseAware | None,
               admm: admm_lib.ADMMConfig | None, schedule: str, learning_rate: float,
               total_steps: int, final_lr_fraction: float):
    """One jitted train step (cached: repeated phases with the same settings compile once)."""
    optimizer = _optimizer(schedule, learning_rate, total_steps, final_lr_fraction)
    configs = (layer_configs(model, noise_aware.config, noise_aware.trim_columns)
               if noise_aware is not None else None)

    def loss_fn(params, state: TrainState, x, y, key):
        runner = None
        if noise_aware is not None:
            runner = NoisyRunner(configs, key, read_noise=noise_aware.read_noise,
                                 adc_noise=noise_aware.adc_noise,
                                 exact_read=noise_aware.exact_read)
        logits = model.apply(params, x, runner)
        loss = cross_entropy(logits, y)
        total = loss
        if phase == "admm" and not admm.decoupled:
            total = total + admm_lib.admm_penalty(model.weights(params), state.admm)
        return total, (loss, jnp.mean(jnp.argmax(logits, -1) == y))

    @jax.jit
    def step(state: TrainState, x, y, key):
        grads, (loss, acc) = jax.grad(loss_fn, has_aux=True)(state.params, state, x, y, key)
        if phase == "finetune":
            grads = model.with_weights(grads, admm_lib.masked_updates(model.weights(grads),
                                                                     state.masks))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        if phase == "finetune":
            updates = model.with_weights(updates, admm_lib.masked_updates(
                model.weights(updates), state.masks))
        params = optax.apply_updates(state.params, updates)
        if phase == "admm" and admm.decoupled:
            params = model.with_weights(params, admm_lib.decoupled_penalty_step(
                model.weights(params), state.admm, admm.penalty_lr))
        if phase == "finetune":
            params = model.with_weights(params, admm_lib.clamp_to_signs(
                model.weights(params), state.signs, state.masks, admm.fragment_rows))
        return state._replace(params=params, opt_state=opt_state), {"loss": loss, "acc": acc}

    return optimizer, step


@functools.lru_cache(maxsize=16)
def _admm_functions(model: Model, admm: admm_lib.ADMMConfig):
    update = jax.jit(lambda w, s: admm_lib.admm_update(w, s, admm))
    signs = jax.jit(lambda w, s: admm_lib.update_signs(w, s, admm))
    project = jax.jit(lambda p: model.with_weights(
        p, admm_lib.hard_projection(model.weights(p), admm)[0]))
    return update, signs, project


def _optimizer(schedule: str, learning_rate: float, total_steps: int, final_lr_fraction: float):
    if schedule == "constant":
        return optax.adam(learning_rate)
    return optax.adam(optax.cosine_decay_schedule(learning_rate, max(total_steps, 1),
                                                  alpha=final_lr_fraction))


def train(model: Model, params: dict, data, config: TrainConfig, *, phase: str = "baseline",
          admm: admm_lib.ADMMConfig | None = None, signs: dict | None = None,
          masks: dict | None = None, noise_aware: NoiseAware | None = None,
          checkpoint: str | None = None, log: Callable[[str], None] | None = print,
          eval_data=None, stop_after: int | None = None) -> tuple[TrainState, list]:
    """Run one phase; returns the final TrainState and the per-epoch history.

    Args:
      data: an object with ``x_train`` (n, ...) and ``y_train`` (n,) numpy arrays
        (:class:`reram_emu.datasets.Dataset`); ``eval_data`` (default ``data``) provides
        ``x_test``/``y_test`` for the per-epoch test accuracy.
      phase: ``"baseline"``, ``"admm"`` (needs ``admm``) or ``"finetune"`` (needs ``admm``,
        ``signs`` and ``masks``; ``params`` must already be projected).
      checkpoint: path of this phase's .npz; resumed from when it exists.
      stop_after: return after this many epochs of this call, as an interrupted run would
        (the checkpoint is then not marked done; a later call resumes).
    """
    if phase not in ("baseline", "admm", "finetune"):
        raise ValueError(f"phase must be 'baseline', 'admm' or 'finetune', got {phase!r}")
    if phase != "baseline" and admm is None:
        raise ValueError(f"phase {phase!r} needs an ADMMConfig")
    if phase == "finetune" and (signs is None or masks is None):
        raise ValueError("the finetune phase needs the signs and masks of the hard projection")
    log = log or (lambda s: None)
    eval_data = data if eval_data is None else eval_data
    x_train, y_train = np.asarray(data.x_train), np.asarray(data.y_train)
    steps_per_epoch = _steps_per_epoch(len(x_train), config)
    total_steps = steps_per_epoch * config.epochs
    lr = config.learning_rate
    if phase == "finetune" and admm.finetune_learning_rate is not None:
        lr = admm.finetune_learning_rate
    optimizer, train_step = _make_step(
        model, phase, noise_aware, admm if phase != "baseline" else None, config.schedule,
        float(lr), total_steps, config.final_lr_fraction)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    state = TrainState(params=params, opt_state=optimizer.init(params),
                       admm=(admm_lib.init_admm(model.weights(params), admm)
                             if phase == "admm" else None),
                       signs=signs if phase == "finetune" else None,
                       masks=masks if phase == "finetune" else None)
    start_epoch, step, history = 0, 0, []
    provenance = None if checkpoint is None else checkpoint_provenance(
        phase, config.seed, model=model, config=config, admm=admm, noise_aware=noise_aware,
        start=params, data=[list(x_train.shape), y_train])
    if checkpoint is not None and os.path.exists(checkpoint):
        state, meta = load_checkpoint(checkpoint, state, expect=provenance)
        start_epoch, step, history = meta["epoch"], meta["step"], meta["history"]
        log(f"[{phase}] resumed from {checkpoint} at epoch {start_epoch} (step {step})")
        if meta["done"]:
            return state, history

    if admm is not None:
        admm_update, sign_update, project = _admm_functions(model, admm)
    base_key = jax.random.key(config.seed)
    update_at = set()
    if phase == "admm":
        per = admm.updates_per_epoch
        update_at = {max(1, round(steps_per_epoch * (i + 1) / per)) for i in range(per)}

    for epoch in range(start_epoch, config.epochs):
        if stop_after is not None and epoch - start_epoch >= stop_after:
            break
        t0 = time.perf_counter()
        if (phase == "admm" and admm.sign_every and epoch > 0 and epoch % admm.sign_every == 0):
            state = state._replace(admm=sign_update(model.weights(state.params), state.admm))
        order = np.random.default_rng([config.seed, epoch]).permutation(len(x_train))
        losses, accs = [], []
        for i in range(steps_per_epoch):
            idx = order[i * config.batch_size:(i + 1) * config.batch_size]
            key = jax.random.fold_in(base_key, step)
            state, metrics = train_step(state, x_train[idx], y_train[idx], key)
            losses.append(metrics["loss"])
            accs.append(metrics["acc"])
            step += 1
            if (i + 1) in update_at:
                state = state._replace(admm=admm_update(model.weights(state.params),
                                                        state.admm))
        record = {"epoch": epoch + 1, "phase": phase,
                  "train_loss": float(np.mean(jax.device_get(losses))),
                  "train_acc": float(np.mean(jax.device_get(accs))),
                  "test_acc": accuracy(model, state.params, eval_data.x_test, eval_data.y_test,
                                       config.eval_batch_size)}
        if phase == "admm":
            weights = model.weights(state.params)
            record["test_acc_projected"] = accuracy(
                model, project(state.params), eval_data.x_test, eval_data.y_test,
                config.eval_batch_size)
            record["rho"] = float(state.admm.rho)
            record["residual"] = {k: float(v) for k, v in
                                  admm_lib.primal_residuals(weights, state.admm).items()}
        record["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(record)
        extras = "".join(f" {k}={v:.4g}" for k, v in record.items()
                         if isinstance(v, float) and k not in ("seconds",))
        log(f"[{phase}] epoch {epoch + 1}/{config.epochs}{extras} ({record['seconds']} s)")
        if checkpoint is not None:
            save_checkpoint(checkpoint, state, epoch=epoch + 1, step=step, seed=config.seed,
                            done=epoch + 1 == config.epochs, history=history,
                            provenance=provenance)
    if checkpoint is not None and config.epochs == start_epoch:
        save_checkpoint(checkpoint, state, epoch=config.epochs, step=step, seed=config.seed,
                        done=True, history=history, provenance=provenance)
    return state, history


class PolarizeResult(NamedTuple):
    """Output of :func:`polarize`: final (quantized, polarized) params, the fragment signs and
    masks of the hard projection, the histories and the per-layer fraction of weights the hard
    projection zeroed."""

    params: dict
    signs: dict
    masks: dict
    history: list
    zeroed_fraction: dict


def _phase_checkpoint(checkpoint_dir: str | None, name: str) -> str | None:
    return None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"{name}.npz")


def admm_phase(model: Model, params: dict, data, admm: admm_lib.ADMMConfig,
               config: TrainConfig, *, noise_aware: NoiseAware | None = None,
               checkpoint: str | None = None, log: Callable[[str], None] | None = print,
               eval_data=None) -> tuple[dict, list]:
    """The ADMM phase of :func:`polarize` alone: ``admm.epochs`` epochs of W-steps with Z/U
    updates (``config.epochs`` is ignored; the learning-rate schedule is
    ``admm.admm_schedule``). Returns ``(params, history)``; the params are close to, not on,
    the polarized set (see :func:`finetune_phase`)."""
    state, history = train(
        model, params, data,
        dataclasses.replace(config, epochs=admm.epochs, schedule=admm.admm_schedule),
        phase="admm", admm=admm, noise_aware=noise_aware, checkpoint=checkpoint, log=log,
        eval_data=eval_data)
    return state.params, history


def finetune_phase(model: Model, admm_params: dict, data, admm: admm_lib.ADMMConfig,
                   config: TrainConfig, *, noise_aware: NoiseAware | None = None,
                   checkpoint: str | None = None, log: Callable[[str], None] | None = print,
                   eval_data=None, check_config: CrossbarConfig | None = None,
                   history: list | None = None) -> PolarizeResult:
    """The end of :func:`polarize`: hard projection of ``admm_params`` -> masked fine-tuning
    (``admm.finetune_epochs`` epochs, optionally noise-aware) -> ``admm.weight_bits``
    quantization -> check. ``history`` (e.g. the ADMM phase's) is prepended to the returned
    history. Raises RuntimeError if the result is not exactly polarized.

    Starting two fine-tunings (say plain and noise-aware) from the same ``admm_params``
    compares the fine-tunings alone: same signs, same masks, same number of steps.
    """
    weights = model.weights(admm_params)
    projected, signs, masks = admm_lib.hard_projection(weights, admm)
    zeroed = {name: float(1.0 - jnp.mean(masks[name])) for name in masks}
    start = model.with_weights(admm_params, projected)
    ft_state, ft_history = train(
        model, start, data, dataclasses.replace(config, epochs=admm.finetune_epochs),
        phase="finetune", admm=admm, signs=signs, masks=masks, noise_aware=noise_aware,
        checkpoint=checkpoint, log=log, eval_data=eval_data)
    final = ft_state.params
    if admm.weight_bits is not None:
        final = model.with_weights(final, admm_lib.quantize_weights_dict(
            model.weights(final), admm.weight_bits))
    if not admm_lib.check_polarized(model.weights(final), admm.fragment_rows, check_config):
        raise RuntimeError("the polarized weights violate the fragment constraint")
    return PolarizeResult(final, signs, masks, list(history or []) + ft_history, zeroed)


def polarize(model: Model, params: dict, data, admm: admm_lib.ADMMConfig,
             config: TrainConfig, *, noise_aware: NoiseAware | None = None,
             checkpoint_dir: str | None = None, log: Callable[[str], None] | None = print,
             eval_data=None, check_config: CrossbarConfig | None = None) -> PolarizeResult:
    """ADMM polarization -> hard projection -> masked fine-tuning -> quantization -> check.

    :func:`admm_phase` then :func:`finetune_phase`. ``config.epochs`` is ignored: the phases
    run ``admm.epochs`` and ``admm.finetune_epochs``. With ``checkpoint_dir`` each phase
    checkpoints to ``admm.npz`` / ``finetune.npz`` there and a rerun resumes. ``check_config``
    (e.g. the FORMS preset at ``admm.fragment_rows``) makes the final check also map every
    layer with ``on_violation="error"``. Raises RuntimeError if the result is not exactly
    polarized.
    """
    admm_params, admm_history = admm_phase(
        model, params, data, admm, config, noise_aware=noise_aware,
        checkpoint=_phase_checkpoint(checkpoint_dir, "admm"), log=log, eval_data=eval_data)
    return finetune_phase(model, admm_params, data, admm, config, noise_aware=noise_aware,
                          checkpoint=_phase_checkpoint(checkpoint_dir, "finetune"), log=log,
                          eval_data=eval_data, check_config=check_config, history=admm_history)


# --------------------------------------------------------------------------- evaluation


@jax.jit
def _correct(logits, labels):
    return jnp.sum(jnp.argmax(logits, -1) == labels)


def predict(model: Model, params: dict, x, batch_size: int = 1000) -> np.ndarray:
    """Ideal logits of ``x`` in batches."""
    fn = _ideal_apply(model)
    return np.concatenate([np.asarray(fn(params, jnp.asarray(x[i:i + batch_size])))
                           for i in range(0, len(x), batch_size)])


_IDEAL_CACHE: dict = {}


def _ideal_apply(model: Model):
    if model not in _IDEAL_CACHE:
        _IDEAL_CACHE[model] = jax.jit(lambda p, x: model.apply(p, x))
    return _IDEAL_CACHE[model]


def accuracy(model: Model, params: dict, x, y, batch_size: int = 1000) -> float:
    """Ideal (float) accuracy of ``params`` on (x, y), a fraction in [0, 1]."""
    fn = _ideal_apply(model)
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int(_correct(fn(params, jnp.asarray(x[i:i + batch_size])),
                                jnp.asarray(y[i:i + batch_size])))
    return correct / len(x)


def calibrate_input_scales(model: Model, params: dict, x, config, percentile: float = 99.99
                           ) -> dict[str, np.ndarray]:
    """Fixed per-layer input steps: the ``percentile`` of |layer inputs| over ``x`` (ideal
    forward) divided by the top input code of the layer's configuration (a scalar per layer,
    in input units per code). Layer inputs above it clip at the top code."""
    records = _recorder(model, float(percentile))(params, jnp.asarray(x))
    return scales_from_records(records, config)


@functools.lru_cache(maxsize=16)
def _recorder(model: Model, percentile: float):
    def run(p, xb):
        runner = RecordingRunner(percentile)
        model.apply(p, xb, runner)
        return runner.records
    return jax.jit(run)


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the Student-t confidence interval ``(mean, low, high)`` of a sample."""
    from scipy import stats
    values = np.asarray(values, np.float64)
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1)
                 / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def crossed_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a confidence interval ``(mean, low, high)`` of ``values`` (K, N): one value per
    noise key (rows) and test image (columns), both random samples (a crossed design).

    The variance of the grand mean is estimated as ``var(row means) / K + var(column means) /
    N`` (each term also holds a share of the key x image interaction, so the estimate errs on
    the wide side), with Satterthwaite's degrees of freedom. A 1-D array or K = 1 (one
    deterministic read) leaves the images' term alone: the paired interval over images. Use it
    for accuracies (values 0/1) or paired differences of correctness (values -1/0/1) on the
    same images.
    """
    from scipy import stats
    values = np.asarray(values, np.float64)
    if values.ndim == 1:
        values = values[None]
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"values must be (keys, images), got shape {values.shape}")
    k, n = values.shape
    mean = float(np.mean(values))
    terms = []  # (variance of the mean, degrees of freedom)
    if k > 1:
        terms.append((np.var(np.mean(values, axis=1), ddof=1) / k, k - 1))
    if n > 1:
        terms.append((np.var(np.mean(values, axis=0), ddof=1) / n, n - 1))
    var = sum(t for t, _ in terms)
    if var == 0:
        return mean, mean, mean
    dof = var ** 2 / sum(t ** 2 / d for t, d in terms)
    half = float(stats.t.ppf(0.5 + level / 2, dof) * math.sqrt(var))
    return mean, mean - half, mean + half


def difference_ci(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` with a Welch (unequal variances) t interval."""
    from scipy import stats
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = float(np.mean(a) - np.mean(b))
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof) * se)
    return diff, diff - half, diff + half


@functools.lru_cache(maxsize=32)
def _emulated_counter(model: Model, configs: tuple):
    """Jitted correctness (keys, batch) of one image batch for every key (cached per model and
    configs: keys, noise parameters and scales are arguments, so repeated evaluations compile
    once per batch shape)."""
    configs = dict(configs)

    def one_key(key, params, xb, yb, batch_index, noise, scales):
        program_key, read_key = jax.random.split(key)
        runner = EmulatedRunner(configs, program_key,
                                jax.random.fold_in(read_key, batch_index), noise, scales)
        logits = model.apply(params, xb, runner)
        return jnp.argmax(logits, -1) == yb

    @jax.jit
    def batch_correct(params, xb, yb, batch_index, grouped_keys, noise, scales):
        def per_group(keys):
            return jax.vmap(one_key, (0, None, None, None, None, None, None))(
                keys, params, xb, yb, batch_index, noise, scales)
        hits = jax.lax.map(per_group, grouped_keys)
        return hits.reshape(-1, hits.shape[-1])

    return batch_correct


class EmulatedEvaluation(NamedTuple):
    """Accuracy read through the emulator: per key, mean, std and the 95 % t interval over
    keys (fractions in [0, 1]); ``images`` evaluated and ``seconds`` of wall time;
    ``correct`` (keys, images) bool: which image each key classified correctly (for intervals
    that also cover the choice of images, :func:`crossed_ci`)."""

    accuracies: np.ndarray
    mean: float
    std: float
    ci_low: float
    ci_high: float
    images: int
    seconds: float
    correct: np.ndarray | None = None


def noise_keys(keys, seed: int = 0) -> jax.Array:
    """The (n,) typed noise keys of an evaluation: ``keys`` as a number of keys (split from
    ``seed``), an (n,) array of typed keys, or None (one key)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if keys is None:
        keys = 1
    if isinstance(keys, (int, np.integer)) and not isinstance(keys, bool):
        if keys < 1:
            raise ValueError(f"keys must be a number of keys >= 1 or a (n,) array of "
                             f"jax.random keys, got {keys}")
        return jax.random.split(jax.random.key(int(seed)), int(keys))
    if not (hasattr(keys, "dtype") and jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
            and keys.ndim == 1 and keys.shape[0] >= 1):
        raise ValueError(f"keys must be a number of keys >= 1 or a (n,) array of typed "
                         f"jax.random keys (jax.random.split(jax.random.key(0), n)), got "
                         f"{type(keys).__name__} {getattr(keys, 'shape', '')}")
    return keys


def _check_emulated_arguments(model, params, x, y, config, keys, seed, noise, batch_size,
                              keys_per_vmap, trim_columns):
    """Validate :func:`evaluate_emulated`'s arguments; returns (configs per layer, keys)."""
    from .checks import check_noise
    from .polarization import polarization_violations
    from .quantization import quantize_weights
    if not isinstance(model, Model):
        raise TypeError(f"model must be a reram_emu.models.Model, got {type(model).__name__}")
    names = model.layer_names
    if not isinstance(params, dict) or set(params) != set(names):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"params must hold the model's layers {list(names)}, got {got}")
    if isinstance(config, CrossbarConfig):
        configs = layer_configs(model, config, trim_columns)
    elif isinstance(config, dict):
        missing = [n for n in names if n not in config]
        unknown = [n for n in config if n not in names]
        if missing or unknown:
            raise ValueError(f"a per-layer config needs exactly the model's layers "
                             f"{list(names)}: missing {missing}, unknown {unknown}")
        for name, value in config.items():
            if not isinstance(value, CrossbarConfig):
                raise TypeError(f"config[{name!r}] must be a CrossbarConfig, got "
                                f"{type(value).__name__}")
        configs = dict(config)
    else:
        raise TypeError(f"config must be a CrossbarConfig or a dict layer name -> "
                        f"CrossbarConfig, got {type(config).__name__}")
    keys = noise_keys(keys, seed)
    for name, value in (("batch_size", batch_size), ("keys_per_vmap", keys_per_vmap)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    check_noise(noise)
    x_shape, y_shape = np.shape(x), np.shape(y)
    if len(y_shape) != 1:
        raise ValueError(f"y must be integer class labels of shape (N,), got shape {y_shape}"
                         + ("; for one-hot labels pass y.argmax(-1)" if len(y_shape) == 2
                            else ""))
    if not np.issubdtype(np.asarray(y).dtype, np.integer):
        raise TypeError(f"y must hold integer class labels, got dtype {np.asarray(y).dtype}")
    if len(x_shape) < 2 or x_shape[0] != y_shape[0] or x_shape[0] == 0:
        raise ValueError(f"need x (N, ...) and y (N,) with N >= 1 alike, got {x_shape} and "
                         f"{y_shape}")
    labels = np.asarray(y)
    if labels.min() < 0 or labels.max() >= model.num_classes:
        raise ValueError(f"labels must lie in [0, {model.num_classes - 1}], got "
                         f"[{labels.min()}, {labels.max()}]")
    if not np.all(np.isfinite(np.asarray(x, np.float64))):
        raise ValueError("x contains NaN or infinite values")
    for name in names:
        layer = configs[name]
        if layer.mapping.scheme != "polarized" or layer.mapping.on_violation == "project":
            continue
        w = np.asarray(params[name]["w"], np.float32)
        w = w.reshape(-1, w.shape[-1])
        integers, _ = quantize_weights(jnp.asarray(w), layer.weights)
        report = polarization_violations(integers, layer.geometry.fragment_rows, "sum")
        if report.fragments_broken:
            raise ValueError(
                f"layer {name!r}: {report.fragments_broken} of {report.fragments} fragments "
                f"(fragment_rows={layer.geometry.fragment_rows}) are not polarized, so the "
                f"FORMS mapping would zero {report.weights_zeroed} weights; polarize the model "
                f"(training.polarize) or pass a config with MappingConfig(on_violation="
                f"'project') to read the projected weights")
    return configs, keys


def evaluate_emulated(model: Model, params: dict, x, y, config: CrossbarConfig | dict, *,
                      keys: int | jax.Array | None = None, seed: int = 0,
                      noise: NoiseParameters | None = None, scales: dict | None = None,
                      batch_size: int = 250, keys_per_vmap: int = 1,
                      trim_columns: bool = True) -> EmulatedEvaluation:
    """Accuracy of ``params`` read through the emulated crossbars, over noise keys.

    Each key programs every layer once (device variation and faults: ``fold_in(program_key,
    layer)``) and reads all images with it (read and ADC noise fresh per batch and layer).
    Keys are processed ``keys_per_vmap`` at a time with ``jax.vmap`` and the groups with
    ``lax.map``; images in batches of ``batch_size`` (a Python loop, one compiled function:
    a shorter last batch is padded, the padding rows are read and not counted; a row's noise
    does not depend on its batch's other rows, so the padding changes nothing).

    Args:
      config: a CrossbarConfig (per-layer trimmed configs are derived) or name -> config.
      keys: number of keys (derived from ``seed``) or a key array (n,); None: one key.
      scales: fixed input steps per layer (:func:`calibrate_input_scales`); None: dynamic.
    """
    t0 = time.perf_counter()
    configs, keys = _check_emulated_arguments(model, params, x, y, config, keys, seed, noise,
                                              batch_size, keys_per_vmap, trim_columns)
    n_keys = keys.shape[0]
    group = max(1, min(keys_per_vmap, n_keys))
    n_groups = -(-n_keys // group)
    if n_groups * group > n_keys:
        keys = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], (n_groups * group - n_keys,))])
    grouped = keys.reshape(n_groups, group)
    scales_j = None if scales is None else {k: jnp.asarray(v, jnp.float32)
                                             for k, v in scales.items()}
    batch_correct = _emulated_counter(model, tuple(sorted(configs.items())))
    n = len(x)
    if n == 0 or len(y) != n:
        raise ValueError(f"need as many labels as images (at least one), got {n} and {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = min(batch_size, n)
    correct = np.zeros((n_keys, n), bool)
    for b, i in enumerate(range(0, n, batch_size)):
        xb, yb = np.asarray(x[i:i + batch_size]), np.asarray(y[i:i + batch_size], np.int32)
        valid = len(xb)
        if valid < batch_size:  # pad: one compiled batch shape
            xb = np.concatenate([xb, np.zeros((batch_size - valid,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.full(batch_size - valid, -1, yb.dtype)])
        hits = batch_correct(params, jnp.asarray(xb), jnp.asarray(yb), b, grouped, noise,
                             scales_j)
        correct[:, i:i + valid] = np.asarray(hits)[:n_keys, :valid]
    accuracies = correct.mean(axis=1)
    mean, low, high = mean_ci(accuracies)
    std = float(np.std(accuracies, ddof=1)) if n_keys > 1 else 0.0
    return EmulatedEvaluation(accuracies, mean, std, low, high, n, time.perf_counter() - t0,
                              correct)
