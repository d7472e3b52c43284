"""Batch sweeps over noise settings: one compilation for any number of numeric values.

A sweep evaluates a function ``evaluate(noise, key) -> metrics`` over many
:class:`~reram_emu.config.NoiseParameters` points and many random keys. The numeric
non-idealities (sigmas, fault rates, ADC noise and offset) are traced arrays, so the whole
sweep is one ``jit`` of ``vmap``s; points are processed ``chunk_size`` at a time (``lax.map``)
to bound memory, and split over all local devices with ``jax.sharding`` (a leading device axis
laid out on a one-dimensional mesh). Structural choices (fragment rows, bits, mapping) change
array shapes; :func:`group_by_structure` splits a list of configurations into groups that each
compile once.

Several hosts (or processes): start every process with ``jax.distributed.initialize(...)``
(coordinator address, process count and id; on CPUs also
``jax.config.update("jax_cpu_collectives_implementation", "gloo")`` first) and call
:func:`sweep` with the same arguments and ``devices=jax.devices()`` on every process: the mesh
then spans all processes' devices, each computes its shard of the points, and every process
gets the whole result (tested with two processes on one machine).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .checks import NOISE_RANGES, is_concrete
from .config import CrossbarConfig, NoiseParameters

__all__ = ["noise_grid", "noise_points", "sweep", "structure_of", "group_by_structure"]

NUMERIC_FIELDS = NoiseParameters._fields


def _base_values(config: CrossbarConfig) -> dict[str, float]:
    return {name: float(value) for name, value in zip(NUMERIC_FIELDS,
                                                       config.noise_parameters())}


def _check_field(name: str) -> None:
    if name not in NUMERIC_FIELDS:
        raise ValueError(f"unknown noise parameter {name!r}; sweepable: {NUMERIC_FIELDS}")


def _check_values(name: str, values: np.ndarray, label: str | None = None) -> None:
    """Every value of field ``name`` finite and within :data:`reram_emu.checks.NOISE_RANGES`
    (``label``: how the message names the field, default ``name``)."""
    label = name if label is None else label
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{label} values must be finite, got {values.tolist()[:8]}")
    low, high = NOISE_RANGES[name]
    if low is not None and np.any(values < low):
        raise ValueError(f"{label} values must be >= {low}, got {values.tolist()[:8]}")
    if high is not None and np.any(values > high):
        raise ValueError(f"{label} values must be <= {high}, got {values.tolist()[:8]}")


def _check_batch_values(noise: NoiseParameters) -> None:
    """The values of a batch of points handed to :func:`sweep`: real, and (where concrete)
    finite, within :data:`~reram_emu.checks.NOISE_RANGES`, stuck-at rates summing to <= 1.
    Inside the sweep they are traced, where no check can see them: an out-of-range rate would
    silently read as a wrong answer (a stuck-at rate of 2 zeroes the layer)."""
    concrete = {}
    for name, value in zip(NUMERIC_FIELDS, noise):
        if value is None:
            continue
        if is_concrete(value):
            array = np.asarray(value)
            if not (np.issubdtype(array.dtype, np.floating)
                    or np.issubdtype(array.dtype, np.integer)):
                raise TypeError(f"noise.{name} must hold real numbers, got dtype {array.dtype}")
            _check_values(name, array.astype(np.float64), f"noise.{name}")
            concrete[name] = array.astype(np.float64)
        elif not (jnp.issubdtype(value.dtype, jnp.floating)
                  or jnp.issubdtype(value.dtype, jnp.integer)):
            raise TypeError(f"noise.{name} must hold real numbers, got dtype {value.dtype}")
    if "stuck_on_rate" in concrete and "stuck_off_rate" in concrete:
        total = concrete["stuck_on_rate"] + concrete["stuck_off_rate"]
        if np.any(total > 1.0):
            raise ValueError(f"noise.stuck_on_rate + stuck_off_rate must be <= 1 at every "
                             f"point, got up to {float(total.max())}")


def noise_grid(config: CrossbarConfig, **axes: Sequence[float]) -> NoiseParameters:
    """The Cartesian product of the given values (other fields from ``config``).

    ``noise_grid(config, variation_sigma=[0, .05, .1], read_noise_sigma=[0, .02])`` gives 6
    points, the last axis varying fastest; every field is a (points,) array.
    """
    for name, values in axes.items():
        _check_field(name)
        values = np.asarray(values, np.float64)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D list of values")
        _check_values(name, values)
    names = list(axes)
    product = list(itertools.product(*(np.asarray(axes[n], np.float64) for n in names)))
    return noise_points(config, [dict(zip(names, point)) for point in product])


def noise_points(config: CrossbarConfig, points: Sequence[dict[str, float]]) -> NoiseParameters:
    """A list of points, each a dict of the fields that differ from ``config``."""
    if len(points) == 0:
        raise ValueError("a sweep needs at least one point")
    base = _base_values(config)
    columns = {name: [] for name in NUMERIC_FIELDS}
    for index, point in enumerate(points):
        if not isinstance(point, dict):
            raise TypeError(f"points[{index}] must be a dict field -> value, got "
                            f"{type(point).__name__}")
        for name, value in point.items():
            _check_field(name)
            if isinstance(value, (bool, str, bytes)) or np.ndim(value) != 0:
                raise TypeError(f"points[{index}][{name!r}] must be a real number, got "
                                f"{value!r}")
        for name in NUMERIC_FIELDS:
            columns[name].append(float(point.get(name, base[name])))
    for name in NUMERIC_FIELDS:
        _check_values(name, np.asarray(columns[name]))
    stuck = np.asarray(columns["stuck_on_rate"]) + np.asarray(columns["stuck_off_rate"])
    if np.any(stuck > 1.0):
        raise ValueError("stuck_on_rate + stuck_off_rate must be <= 1 at every point")
    dtype = config.float_dtype
    return NoiseParameters(*(jnp.asarray(columns[name], dtype) for name in NUMERIC_FIELDS))


def sweep(evaluate: Callable[[NoiseParameters, jax.Array], Any], noise: NoiseParameters,
          keys: jax.Array, *, chunk_size: int = 8, devices: Sequence[Any] | None = None):
    """Evaluate ``evaluate(noise_point, key)`` for every point and every key.

    Args:
      evaluate: pure function of one :class:`NoiseParameters` point (scalars) and one key,
        returning a pytree of arrays (e.g. an accuracy or an error).
      noise: a batch of points, every field shaped (points,).
      keys: (R,) typed keys, e.g. ``jax.random.split(jax.random.key(0), 20)``.
      chunk_size: points evaluated together per device (memory bound).
      devices: the devices to shard the points over (default: all local devices). Devices of
        other processes (``jax.devices()`` after ``jax.distributed.initialize``) make this a
        multi-process sweep: every process must call it with the same arguments.

    Returns:
      The metrics pytree with leading axes (points, R), on every process. One compilation per
      call signature: new values of the same number of points reuse it.
    """
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a function (noise, key) -> metrics, got "
                        f"{type(evaluate).__name__}")
    if not isinstance(noise, NoiseParameters):
        raise TypeError(f"noise must be a batch of NoiseParameters (noise_points or "
                        f"noise_grid), got {type(noise).__name__}")
    shapes = {name: np.shape(value) for name, value in zip(NUMERIC_FIELDS, noise)
              if value is not None}
    if any(len(shape) != 1 for shape in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"noise must be a batch of points, every field shaped (points,) "
                         f"(noise_points or noise_grid build one), got shapes {shapes}; "
                         f"for one point, evaluate it directly or use noise_points(config, "
                         f"[{{}}])")
    _check_batch_values(noise)
    if not (hasattr(keys, "dtype") and jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
            and np.ndim(keys) == 1 and len(keys) >= 1):
        raise ValueError(f"keys must be a (R,) array of typed jax.random keys "
                         f"(jax.random.split(jax.random.key(0), R)), got "
                         f"{type(keys).__name__} {getattr(keys, 'shape', '')}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or \
            chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    points = int(next(iter(shapes.values()))[0])
    devices = list(jax.local_devices() if devices is None else devices)
    per_device = -(-points // len(devices))
    chunk = max(1, min(chunk_size, per_device))
    chunks = -(-per_device // chunk)
    padded = len(devices) * chunks * chunk

    def pad(values):
        values = np.asarray(values)
        filler = np.broadcast_to(values[-1:], (padded - points,) + values.shape[1:])
        return np.concatenate([values, filler]).reshape((len(devices), chunks, chunk)
                                                        + values.shape[1:])

    mesh = Mesh(np.asarray(devices), ("points",))
    sharded = NamedSharding(mesh, PartitionSpec("points"))
    shaped = jax.tree_util.tree_map(lambda v: _put(pad(v), sharded), noise)
    # keys travel as their raw bits (a multi-process array is built from host data) and are
    # re-wrapped inside the computation: the same keys, bit for bit
    key_data = _put(np.asarray(jax.random.key_data(keys)), NamedSharding(mesh, PartitionSpec()))
    result = _sweep_chunks(shaped, key_data, evaluate, jax.random.key_impl(keys))
    if not sharded.is_fully_addressable:
        from jax.experimental import multihost_utils
        result = jax.tree_util.tree_map(
            lambda r: jnp.asarray(multihost_utils.process_allgather(r, tiled=True)), result)
    return jax.tree_util.tree_map(
        lambda r: r.reshape((padded,) + r.shape[3:])[:points], result)


def _put(values: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Host data (the same on every process) as an array laid out by ``sharding``."""
    if sharding.is_fully_addressable:
        return jax.device_put(values, sharding)
    return jax.make_array_from_callback(values.shape, sharding, lambda index: values[index])


@functools.partial(jax.jit, static_argnames=("evaluate", "impl"))
def _sweep_chunks(noise_chunks, key_data, evaluate, impl):
    """(devices, chunks, chunk) points x keys; compiled once per ``evaluate``, key kind and
    shapes (in JAX's own bounded jit cache)."""
    keys = jax.random.wrap_key_data(key_data, impl=impl)
    over_keys = jax.vmap(evaluate, in_axes=(None, 0))
    over_points = jax.vmap(over_keys, in_axes=(0, None))

    def per_device(chunks):
        return jax.lax.map(lambda chunk: over_points(chunk, keys), chunks)

    return jax.vmap(per_device)(noise_chunks)


def structure_of(config: CrossbarConfig) -> CrossbarConfig:
    """The configuration with its numeric noise values zeroed: configurations with equal
    structure share array shapes and a compilation."""
    device = dataclasses.replace(config.device, variation_sigma=0.0, read_noise_sigma=0.0,
                                 stuck_on_rate=0.0, stuck_off_rate=0.0)
    adc = dataclasses.replace(config.adc, noise_lsb=0.0, offset_lsb=0.0)
    return config.replace(device=device, adc=adc)


def group_by_structure(configs: Sequence[CrossbarConfig]
                       ) -> list[tuple[CrossbarConfig, list[int], NoiseParameters]]:
    """Split configurations into groups of equal structure.

    Returns ``(structure, indices, noise)`` per group: the shared structure, the positions of
    the group's configurations in ``configs``, and their noise values as a batch for
    :func:`sweep`.
    """
    groups: dict[CrossbarConfig, list[int]] = {}
    for index, config in enumerate(configs):
        if not isinstance(config, CrossbarConfig):
            raise TypeError(f"configs[{index}] must be a CrossbarConfig, got "
                            f"{type(config).__name__}")
        groups.setdefault(structure_of(config), []).append(index)
    result = []
    for structure, indices in groups.items():
        points = [dict(zip(NUMERIC_FIELDS, (float(v) for v in configs[i].noise_parameters())))
                  for i in indices]
        result.append((structure, indices, noise_points(structure, points)))
    return result
