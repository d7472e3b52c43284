"""Training loops, the polarization pipeline, noise-aware training, evaluation helpers and
checkpoints that a run resumes from, for any JAX classifier ``apply(params, x) -> logits``.

A model is a function: the package's own (``reram_emu.models.lenet5().apply``), a Flax
``model.apply``, an Equinox model called as ``lambda m, x: m(x)``, or an
:class:`reram_emu.nn.Analog` (then its per-layer choices say which products are crossbar
layers; its ``apply_fn`` is the float forward). The crossbar weight matrices the polarizer
constrains are found by tracing it (:meth:`reram_emu.nn.Analog.weight_view`).

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

Noise-aware training (``noise_aware=NoiseAware(config)``): the forward is the model on
crossbars, :func:`reram_emu.nn.analog` in its ``"noise_aware"`` mode (or ``"emulated"`` with
``exact_read``): every step programs every layer afresh (step key split into a programming and
a read key; layer ``i`` folds in ``i``): device variation, stuck-at faults, finite levels and
IR drop through the programmed layer's effective weights, read and ADC noise as output noise
with the bit-serial read's moments, straight-through gradients.

Checkpoints: ``np.savez`` files (``<dir>/<phase>.npz``) with every leaf of the training state
under its pytree path (``jax.tree_util.keystr``), plus ``__epoch__``, ``__step__``,
``__seed__``, ``__done__``, a JSON history and ``__provenance__`` (:func:`checkpoint_provenance`:
the phase, the seed and a hash of the model, the configurations, the starting parameters and
the data); written atomically after every epoch. A run given the same directory resumes from
the last completed epoch of the phase (the data order and the noise keys depend only on the
seed, the epoch and the step, so a resumed run continues exactly as the uninterrupted one
would); a damaged checkpoint, or one another phase or configuration wrote, raises
:class:`CheckpointError` naming the file.

Evaluation: :func:`accuracy` and :func:`predict` (the float model), :func:`calibrate_input_scales`
(fixed input steps from the float model's layer inputs); accuracy read through the crossbars
over noise keys is :func:`reram_emu.nn.evaluate_accuracy`; intervals are in
:mod:`reram_emu.stats` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
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
from .config import CrossbarConfig
from .nn.evaluate import EmulatedEvaluation, noise_keys
from .nn.transform import Analog, analog
from .stats import crossed_ci, difference_ci, mean_ci

__all__ = ["TrainConfig", "NoiseAware", "TrainState", "train", "polarize", "PolarizeResult",
           "accuracy", "predict", "calibrate_input_scales", "crossbar_view",
           "mean_ci", "difference_ci", "crossed_ci", "EmulatedEvaluation", "noise_keys",
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
      config: the CrossbarConfig the emulator reads with (its device, ADC, inputs, mapping),
        for every crossbar layer.
      read_noise: add the read noise of ``config.device.read_noise_sigma`` at the outputs.
      adc_noise: add ``config.adc.noise_lsb`` ADC noise at the outputs.
      trim_columns: per-layer tiles trimmed to the layer's columns
        (:func:`reram_emu.nn.layer_config`).
      exact_read: forward through the full emulated read (ADC quantization and every noise
        exactly, straight-through gradient; costs an emulated read per step).
      nonnegative_inputs: the model's inputs are >= 0 (images), so its first layer reads
        unsigned inputs (:func:`reram_emu.nn.analog`).
    """

    config: CrossbarConfig
    read_noise: bool = True
    adc_noise: bool = True
    trim_columns: bool = True
    exact_read: bool = False
    nonnegative_inputs: bool = True

    def __post_init__(self):
        if not isinstance(self.config, CrossbarConfig):
            raise TypeError(f"NoiseAware.config must be a CrossbarConfig, got "
                            f"{type(self.config).__name__}")

    def forward(self, apply: Callable) -> Analog:
        """The model on crossbars this forward runs (``noise_aware`` or ``emulated`` mode)."""
        config = self.config
        if not self.read_noise:
            config = config.replace(device=dataclasses.replace(config.device,
                                                               read_noise_sigma=0.0))
        if not self.adc_noise:
            config = config.replace(adc=dataclasses.replace(config.adc, noise_lsb=0.0))
        return analog(_float_fn(apply), config,
                      mode="emulated" if self.exact_read else "noise_aware",
                      nonnegative_inputs=self.nonnegative_inputs,
                      trim_columns=self.trim_columns)


class TrainState(NamedTuple):
    """Everything a phase needs to continue (a pytree; saved in checkpoints).

    ``admm``: ADMMState in the admm phase; ``signs``/``masks``: fragment signs and masks in
    the finetune phase (else None).
    """

    params: Any
    opt_state: Any
    admm: Any = None
    signs: Any = None
    masks: Any = None


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


# --------------------------------------------------------------------------- models


def _float_fn(model) -> Callable:
    """The float forward ``apply(params, x)`` of a model (a function or an Analog)."""
    if isinstance(model, Analog):
        return model.apply_fn
    if not callable(model):
        raise TypeError(f"model must be a function apply(params, x) -> logits (e.g. "
                        f"reram_emu.models.lenet5().apply, a Flax model.apply) or a "
                        f"reram_emu.nn.Analog, got {type(model).__name__}")
    return model


def _check_array_tree(params) -> None:
    bad = [jax.tree_util.keystr(path) for path, leaf in
           jax.tree_util.tree_flatten_with_path(params)[0]
           if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int))]
    if bad:
        raise TypeError(
            f"params must be a pytree of arrays (a Flax params dict, a dict of arrays); "
            f"{bad[:3]} are not arrays. For an Equinox model split it first: params, static = "
            f"eqx.partition(model, eqx.is_array) and apply = lambda p, x: "
            f"eqx.combine(p, static)(x); or train it with reram_emu.nn.fit")


def _hashable_or_none(value):
    try:
        hash(value)
        return value
    except TypeError:
        return None


@functools.lru_cache(maxsize=32)
def _cached_view_analog(apply):
    return analog(apply, CrossbarConfig(), mode="float", signed_inputs=False)


def _view_analog(model) -> Analog:
    if isinstance(model, Analog):
        return model
    apply = _float_fn(model)
    if _hashable_or_none(apply) is None:
        return analog(apply, CrossbarConfig(), mode="float", signed_inputs=False)
    return _cached_view_analog(apply)


def crossbar_view(model, params, example):
    """The :class:`reram_emu.nn.WeightView` of ``model``'s crossbar layers: every product of
    an input with a parameter (for an :class:`~reram_emu.nn.Analog`, the ones it puts on
    crossbars), traced on ``example`` inputs, by layer name (its parameter path)."""
    return _view_analog(model).weight_view(params, jnp.asarray(example))


# --------------------------------------------------------------------------- checkpoints


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, not a checkpoint, or written by another
    stage, seed or configuration. The message names the file and says what to do."""


def _flatten(tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _hashable(value):
    """JSON stand-in of a dataclass (its fields), an array (dtype, shape, sha256 of bytes), a
    function (its qualified name; a bound method also its object) or an Analog."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return dataclasses.asdict(value)
        except TypeError:
            return {"type": type(value).__qualname__, "repr": repr(value)}
    if isinstance(value, Analog):
        return {"analog": value.apply_fn, "config": value.config, "mode": value.mode,
                "layers": repr(value.layer_spec), "row_order": repr(value.row_order),
                "nonnegative_inputs": repr(value.nonnegative_inputs),
                "signed_inputs": repr(value.signed_inputs), "trim_columns": value.trim_columns}
    if inspect.ismethod(value):
        return {"method": value.__func__.__qualname__, "of": value.__self__}
    if callable(value) and hasattr(value, "__qualname__"):
        return {"function": f"{getattr(value, '__module__', '')}.{value.__qualname__}"}
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


def _signature(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((tuple(np.shape(x)), str(jnp.result_type(x))) for x in leaves)


def _from_signature(signature):
    treedef, leaves = signature
    return jax.tree_util.tree_unflatten(treedef, [jnp.zeros(s, d) for s, d in leaves])


def _step_for(model, params, example, phase, noise_aware, admm, optimizer_args, augment=None):
    """``(view, step, optimizer)`` of one phase; cached (bounded) when the model is hashable,
    so repeated phases with the same settings and shapes compile once."""
    key = (model, _signature(params), _signature(example), phase, noise_aware, admm,
           optimizer_args, augment)
    if _hashable_or_none(key) is None:
        return _build_step(model, params, example, phase, noise_aware, admm, optimizer_args,
                           augment)
    return _cached_step(*key)


@functools.lru_cache(maxsize=32)
def _cached_step(model, params_signature, example_signature, phase, noise_aware, admm,
                 optimizer_args, augment):
    return _build_step(model, _from_signature(params_signature),
                       _from_signature(example_signature), phase, noise_aware, admm,
                       optimizer_args, augment)


def _build_step(model, params, example, phase, noise_aware, admm, optimizer_args, augment=None):
    optimizer = _optimizer(*optimizer_args)
    view = crossbar_view(model, params, example) if phase != "baseline" else None
    return view, _make_step(_float_fn(model), view, phase, noise_aware, admm, optimizer,
                            augment), optimizer


#: ``fold_in`` constant that derives a step's augmentation key from its step key (the noise
#: keys are ``split(step key)``, so the augmentation draws are independent of them).
_AUGMENT_STREAM = 0x61756721


def _make_step(apply: Callable, view, phase: str, noise_aware: NoiseAware | None,
               admm: admm_lib.ADMMConfig | None, optimizer, augment: Callable | None = None):
    """One jitted train step: ``apply`` the float forward, ``view`` the crossbar weights,
    ``augment(key, x)`` (optional) the batch's random augmentation."""
    forward = noise_aware.forward(apply) if noise_aware is not None else None

    def loss_fn(params, state: TrainState, x, y, key):
        if augment is not None:
            x = augment(jax.random.fold_in(key, _AUGMENT_STREAM), x)
        if forward is None:
            logits = apply(params, x)
        else:
            program_key, read_key = jax.random.split(key)
            logits = forward(params, x, program_key=program_key, read_key=read_key)
        loss = cross_entropy(logits, y)
        total = loss
        if phase == "admm" and not admm.decoupled:
            total = total + admm_lib.admm_penalty(view.get(params), state.admm)
        return total, (loss, jnp.mean(jnp.argmax(logits, -1) == y))

    @jax.jit
    def step(state: TrainState, x, y, key):
        # masks: the finetune phase's, or an ADMM phase's from an earlier stage of the flow
        masked = state.masks is not None
        grads, (loss, acc) = jax.grad(loss_fn, has_aux=True)(state.params, state, x, y, key)
        if masked:
            grads = view.put(grads, admm_lib.masked_updates(view.get(grads), state.masks))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        if masked:
            updates = view.put(updates, admm_lib.masked_updates(view.get(updates),
                                                                state.masks))
        params = optax.apply_updates(state.params, updates)
        if phase == "admm" and admm.decoupled:
            params = view.put(params, admm_lib.decoupled_penalty_step(
                view.get(params), state.admm, admm.penalty_lr))
        if masked:
            params = view.put(params, admm_lib.clamp_to_signs(
                view.get(params), state.signs or {}, state.masks, admm.fragment_rows))
        return state._replace(params=params, opt_state=opt_state), {"loss": loss, "acc": acc}

    return step


def _admm_functions(view, admm: admm_lib.ADMMConfig):
    update = jax.jit(lambda w, s: admm_lib.admm_update(w, s, admm))
    signs = jax.jit(lambda w, s: admm_lib.update_signs(w, s, admm))
    project = jax.jit(lambda p: view.put(p, admm_lib.hard_projection(view.get(p), admm)[0]))
    return update, signs, project


def _optimizer(schedule: str, learning_rate: float, total_steps: int, final_lr_fraction: float):
    if schedule == "constant":
        return optax.adam(learning_rate)
    return optax.adam(optax.cosine_decay_schedule(learning_rate, max(total_steps, 1),
                                                  alpha=final_lr_fraction))


def train(model, params, data, config: TrainConfig, *, phase: str = "baseline",
          admm: admm_lib.ADMMConfig | None = None, signs: dict | None = None,
          masks: dict | None = None, noise_aware: NoiseAware | None = None,
          checkpoint: str | None = None, log: Callable[[str], None] | None = print,
          eval_data=None, stop_after: int | None = None,
          augment: Callable | None = None) -> tuple[TrainState, list]:
    """Run one phase; returns the final TrainState and the per-epoch history.

    Args:
      model: the classifier ``apply(params, x) -> logits`` (any JAX function, e.g.
        ``reram_emu.models.mlp().apply`` or a Flax ``model.apply``) or a
        :class:`reram_emu.nn.Analog` (its products on crossbars are the ADMM layers).
      params: its parameter pytree (array leaves are trained).
      data: an object with ``x_train`` (n, ...) and ``y_train`` (n,) numpy arrays
        (:class:`reram_emu.datasets.Dataset`); ``eval_data`` (default ``data``) provides
        ``x_test``/``y_test`` for the per-epoch test accuracy.
      phase: ``"baseline"``, ``"admm"`` (needs ``admm``) or ``"finetune"`` (needs ``admm``,
        ``signs`` and ``masks`` keyed by crossbar layer name, :func:`crossbar_view`;
        ``params`` must already be projected; ``signs`` is ``{}`` after pruning).
        ``masks`` given to an ``"admm"`` phase are an earlier stage's (e.g. pruning's, before
        polarizing): the weights they zero stay exactly zero.
      checkpoint: path of this phase's .npz; resumed from when it exists.
      stop_after: return after this many epochs of this call, as an interrupted run would
        (the checkpoint is then not marked done; a later call resumes).
      augment: None, or a jittable ``augment(key, x_batch) -> x_batch`` of the same shape
        (e.g. :func:`reram_emu.cifar10.augment`: random crop and flip) applied to every
        training batch inside the step, its key derived from the step's key (same seed, same
        augmentations). Test-set evaluation never sees it. A module-level function keeps
        the step cached and the checkpoint's provenance stable (it records the function's
        qualified name).

    Raises:
      ValueError: an unknown phase, or a phase without what it needs.
      TypeError: ``noise_aware`` not a :class:`NoiseAware`, ``augment`` not callable.
    """
    apply = _float_fn(model)
    if phase not in ("baseline", "admm", "finetune"):
        raise ValueError(f"phase must be 'baseline', 'admm' or 'finetune', got {phase!r}")
    if phase != "baseline" and admm is None:
        raise ValueError(f"phase {phase!r} needs an ADMMConfig")
    if phase == "finetune" and (signs is None or masks is None):
        raise ValueError("the finetune phase needs the signs and masks of the hard projection")
    if phase == "baseline" and masks is not None:
        raise ValueError("masks apply to the 'admm' and 'finetune' phases only")
    if noise_aware is not None and not isinstance(noise_aware, NoiseAware):
        raise TypeError(f"noise_aware must be a NoiseAware, got {type(noise_aware).__name__}")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be None or a function (key, x) -> x, got "
                        f"{type(augment).__name__}")
    log = log or (lambda s: None)
    eval_data = data if eval_data is None else eval_data
    x_train, y_train = np.asarray(data.x_train), np.asarray(data.y_train)
    steps_per_epoch = _steps_per_epoch(len(x_train), config)
    total_steps = steps_per_epoch * config.epochs
    lr = config.learning_rate
    if phase == "finetune" and admm.finetune_learning_rate is not None:
        lr = admm.finetune_learning_rate
    _check_array_tree(params)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    view, train_step, optimizer = _step_for(
        model, params, jnp.asarray(x_train[:config.batch_size]), phase, noise_aware,
        admm if phase != "baseline" else None,
        (config.schedule, float(lr), total_steps, config.final_lr_fraction), augment)
    state = TrainState(params=params, opt_state=optimizer.init(params),
                       admm=(admm_lib.init_admm(view.get(params), admm)
                             if phase == "admm" else None),
                       signs=signs if phase == "finetune" else None,
                       masks=masks)
    start_epoch, step, history = 0, 0, []
    provenance = None if checkpoint is None else checkpoint_provenance(
        phase, config.seed, model=model, config=config, admm=admm, noise_aware=noise_aware,
        start=params, data=[list(x_train.shape), y_train],
        **({"prior_masks": masks} if phase == "admm" and masks is not None else {}),
        **({"augment": augment} if augment is not None else {}))
    if checkpoint is not None and os.path.exists(checkpoint):
        state, meta = load_checkpoint(checkpoint, state, expect=provenance)
        start_epoch, step, history = meta["epoch"], meta["step"], meta["history"]
        log(f"[{phase}] resumed from {checkpoint} at epoch {start_epoch} (step {step})")
        if meta["done"]:
            return state, history

    if admm is not None:
        admm_update, sign_update, project = _admm_functions(view, admm)
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
            state = state._replace(admm=sign_update(view.get(state.params), state.admm))
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
                state = state._replace(admm=admm_update(view.get(state.params), state.admm))
        record = {"epoch": epoch + 1, "phase": phase,
                  "train_loss": float(np.mean(jax.device_get(losses))),
                  "train_acc": float(np.mean(jax.device_get(accs))),
                  "test_acc": accuracy(apply, state.params, eval_data.x_test, eval_data.y_test,
                                       config.eval_batch_size)}
        if phase == "admm":
            weights = view.get(state.params)
            record["test_acc_projected"] = accuracy(
                apply, project(state.params), eval_data.x_test, eval_data.y_test,
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
    """Output of :func:`polarize`: final (quantized, polarized or pruned) params, the fragment
    signs (``{}`` when pruning) and masks of the hard projection (by crossbar layer name; times
    an earlier stage's masks), the histories and the per-layer fraction of weights the masks
    zero."""

    params: Any
    signs: dict
    masks: dict
    history: list
    zeroed_fraction: dict


def _phase_checkpoint(checkpoint_dir: str | None, name: str) -> str | None:
    return None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"{name}.npz")


def admm_phase(model, params, data, admm: admm_lib.ADMMConfig,
               config: TrainConfig, *, noise_aware: NoiseAware | None = None,
               checkpoint: str | None = None, log: Callable[[str], None] | None = print,
               eval_data=None, masks: dict | None = None,
               augment: Callable | None = None) -> tuple[Any, list]:
    """The ADMM phase of :func:`polarize` alone: ``admm.epochs`` epochs of W-steps with Z/U
    updates (``config.epochs`` is ignored; the learning-rate schedule is
    ``admm.admm_schedule``). Returns ``(params, history)``; the params are close to, not on,
    the constraint set (see :func:`finetune_phase`). ``masks``: an earlier stage's, whose
    zeros stay zero. ``augment``: see :func:`train`."""
    state, history = train(
        model, params, data,
        dataclasses.replace(config, epochs=admm.epochs, schedule=admm.admm_schedule),
        phase="admm", admm=admm, noise_aware=noise_aware, checkpoint=checkpoint, log=log,
        eval_data=eval_data, masks=masks, augment=augment)
    return state.params, history


def finetune_phase(model, admm_params, data, admm: admm_lib.ADMMConfig,
                   config: TrainConfig, *, noise_aware: NoiseAware | None = None,
                   checkpoint: str | None = None, log: Callable[[str], None] | None = print,
                   eval_data=None, check_config: CrossbarConfig | None = None,
                   history: list | None = None, masks: dict | None = None,
                   augment: Callable | None = None) -> PolarizeResult:
    """The end of :func:`polarize`: hard projection of ``admm_params`` -> masked fine-tuning
    (``admm.finetune_epochs`` epochs, optionally noise-aware) -> ``admm.weight_bits``
    quantization -> check. ``history`` (e.g. the ADMM phase's) is prepended to the returned
    history. ``masks`` (an earlier stage's) multiply the projection's, so nothing an earlier
    stage zeroed grows back. ``augment``: see :func:`train`. Raises RuntimeError if the result
    is not exactly on the constraint set (polarized, or pruned to at most k structures).

    Starting two fine-tunings (say plain and noise-aware) from the same ``admm_params``
    compares the fine-tunings alone: same signs, same masks, same number of steps.
    """
    view = crossbar_view(model, admm_params, np.asarray(data.x_train)[:config.batch_size])
    prior = masks
    projected, signs, masks = admm_lib.hard_projection(view.get(admm_params), admm)
    if prior is not None:
        masks = {name: m * prior[name] for name, m in masks.items()}
        projected = {name: w * masks[name] for name, w in projected.items()}
    zeroed = {name: float(1.0 - jnp.mean(masks[name])) for name in masks}
    start = view.put(admm_params, projected)
    ft_state, ft_history = train(
        model, start, data, dataclasses.replace(config, epochs=admm.finetune_epochs),
        phase="finetune", admm=admm, signs=signs, masks=masks, noise_aware=noise_aware,
        checkpoint=checkpoint, log=log, eval_data=eval_data, augment=augment)
    final = ft_state.params
    if admm.weight_bits is not None:
        final = view.put(final, admm_lib.quantize_weights_dict(view.get(final),
                                                               admm.weight_bits))
    admm_lib.require_constraint(view.get(final), admm, check_config)
    if prior is not None and not all(bool(jnp.all(jnp.where(prior[n] == 0, w == 0, True)))
                                     for n, w in view.get(final).items()):
        raise RuntimeError("a weight an earlier stage zeroed is non-zero again")
    return PolarizeResult(final, signs, masks, list(history or []) + ft_history, zeroed)


def polarize(model, params, data, admm: admm_lib.ADMMConfig,
             config: TrainConfig, *, noise_aware: NoiseAware | None = None,
             checkpoint_dir: str | None = None, log: Callable[[str], None] | None = print,
             eval_data=None, check_config: CrossbarConfig | None = None,
             masks: dict | None = None, augment: Callable | None = None) -> PolarizeResult:
    """ADMM polarization -> hard projection -> masked fine-tuning -> quantization -> check.

    With ``admm.prune`` (a :class:`reram_emu.pruning.PruneConfig`) the same stage prunes
    instead: the constraint is at most k non-zero structures per layer. ``masks`` (an
    earlier stage's, e.g. the pruning's ``result.masks`` when polarizing) keep its zeros zero
    through both phases (:func:`prune_polarize_quantize` chains the stages). ``augment``
    (see :func:`train`) augments both phases' batches.

    :func:`admm_phase` then :func:`finetune_phase`. ``config.epochs`` is ignored: the phases
    run ``admm.epochs`` and ``admm.finetune_epochs``. With ``checkpoint_dir`` each phase
    checkpoints to ``admm.npz`` / ``finetune.npz`` there and a rerun resumes. ``check_config``
    (e.g. the FORMS preset at ``admm.fragment_rows``) makes the final check also map every
    layer with ``on_violation="error"``. Raises RuntimeError if the result is not exactly
    polarized.
    """
    admm_params, admm_history = admm_phase(
        model, params, data, admm, config, noise_aware=noise_aware,
        checkpoint=_phase_checkpoint(checkpoint_dir, "admm"), log=log, eval_data=eval_data,
        masks=masks, augment=augment)
    return finetune_phase(model, admm_params, data, admm, config, noise_aware=noise_aware,
                          checkpoint=_phase_checkpoint(checkpoint_dir, "finetune"), log=log,
                          eval_data=eval_data, check_config=check_config, history=admm_history,
                          masks=masks, augment=augment)


class FlowResult(NamedTuple):
    """Output of :func:`prune_polarize_quantize`: the pruning stage's and the polarization
    stage's :class:`PolarizeResult` (``polarized.params`` are the final, quantized weights;
    ``polarized.masks`` include the pruning's)."""

    pruned: PolarizeResult
    polarized: PolarizeResult


def prune_polarize_quantize(model, params, data, prune: admm_lib.ADMMConfig,
                            polarize_admm: admm_lib.ADMMConfig, config: TrainConfig, *,
                            noise_aware: NoiseAware | None = None,
                            checkpoint_dir: str | None = None,
                            log: Callable[[str], None] | None = print, eval_data=None,
                            check_config: CrossbarConfig | None = None,
                            augment: Callable | None = None) -> FlowResult:
    """FORMS's flow (Yuan et al., ISCA 2021, Sec. IV): crossbar-aware structured pruning by
    ADMM, then polarization by ADMM keeping the pruned weights zero, then quantization to
    ``polarize_admm.weight_bits``. Each stage is :func:`polarize` (ADMM, hard projection,
    masked fine-tuning); the masks accumulate, so no stage revives what an earlier one zeroed.

    Args:
      prune: the pruning stage (``prune.prune`` set; ``weight_bits`` None: the float pruned
        model is kept for the next stage).
      polarize_admm: the polarization stage (``prune`` None) with the final quantization.
      checkpoint_dir: each stage checkpoints to ``prune/`` and ``polarize/`` there (each with
        ``admm.npz`` and ``finetune.npz``); a rerun resumes at the last finished epoch.
      augment: every stage's training batches go through it (see :func:`train`).

    Raises:
      ValueError: a stage of the wrong kind, or unequal fragment sizes where both use one.
    """
    if not isinstance(prune, admm_lib.ADMMConfig) or prune.prune is None:
        raise ValueError("prune must be an ADMMConfig with prune=PruneConfig(...)")
    if not isinstance(polarize_admm, admm_lib.ADMMConfig) or polarize_admm.prune is not None:
        raise ValueError("polarize_admm must be an ADMMConfig without prune (the polarizer)")
    if prune.weight_bits is not None:
        raise ValueError("the pruning stage must keep float weights (weight_bits=None); "
                         "quantization comes last, in polarize_admm.weight_bits")

    def stage(name):
        return None if checkpoint_dir is None else os.path.join(checkpoint_dir, name)

    pruned = polarize(model, params, data, prune, config, noise_aware=None,
                      checkpoint_dir=stage("prune"), log=log, eval_data=eval_data,
                      augment=augment)
    polarized = polarize(model, pruned.params, data, polarize_admm, config,
                         noise_aware=noise_aware, checkpoint_dir=stage("polarize"), log=log,
                         eval_data=eval_data, check_config=check_config, masks=pruned.masks,
                         augment=augment)
    return FlowResult(pruned, polarized)


# --------------------------------------------------------------------------- evaluation


@jax.jit
def _correct(logits, labels):
    return jnp.sum(jnp.argmax(logits, -1) == labels)


@functools.partial(jax.jit, static_argnums=0)
def _logits_static(apply, params, x):
    return apply(params, x)


def _logits_fn(model) -> Callable:
    apply = _float_fn(model)
    if _hashable_or_none(apply) is None:
        return jax.jit(apply)
    return functools.partial(_logits_static, apply)


def predict(model, params, x, batch_size: int = 1000) -> np.ndarray:
    """Float logits of ``x`` in batches (``model`` as in :func:`train`)."""
    fn = _logits_fn(model)
    return np.concatenate([np.asarray(fn(params, jnp.asarray(x[i:i + batch_size])))
                           for i in range(0, len(x), batch_size)])


def accuracy(model, params, x, y, batch_size: int = 1000) -> float:
    """Float accuracy of ``params`` on (x, y), a fraction in [0, 1]."""
    fn = _logits_fn(model)
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int(_correct(fn(params, jnp.asarray(x[i:i + batch_size])),
                                jnp.asarray(y[i:i + batch_size])))
    return correct / len(x)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _input_percentiles(f: Analog, percentile: float, params, x):
    return {name: jnp.percentile(jnp.abs(inputs), percentile)
            for name, inputs in f.layer_inputs(params, x).items()}


def calibrate_input_scales(model, params, x, config, percentile: float = 99.99
                           ) -> dict[str, np.ndarray]:
    """Fixed per-layer input steps ``{layer name: step}``: the ``percentile`` of |layer
    inputs| over ``x`` (float forward) divided by the top input code of the layer's
    configuration (``config``: one CrossbarConfig, or ``{layer name: config}``), in input
    units per code. Layer inputs above it clip at the top code. ``model`` as in :func:`train`.
    """
    f = _view_analog(model)
    records = _input_percentiles(f, float(percentile), params, jnp.asarray(x))
    out = {}
    for name, value in records.items():
        layer = config if isinstance(config, CrossbarConfig) else config[name]
        top = 2 ** layer.inputs.bits - 1
        out[name] = np.float32(max(float(value), 1e-12) / top)
    return out
