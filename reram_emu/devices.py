"""ReRAM device models: programming (finite levels, stuck-at faults, device-to-device variation)
and per-read noise.

Conductances are handled in *level units relative to G_off*: a cell of conductance G (siemens)
is ``(G - G_off) / step`` with ``step = (G_on - G_off) / max_level``. An ideally programmed cell
at level ``l`` is exactly ``l`` (integer), so the ideal pipeline is integer-exact, while G_off
itself (``beta = G_off / step`` in these units) stays available for the baseline.

Programming noise is drawn once from the programming key; read noise is drawn per read from
the read key (see :mod:`reram_emu.crossbar`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import CellConfig, DeviceConfig, NoiseParameters

__all__ = ["snap_to_programmable_levels", "program_conductance", "to_siemens", "read_noise_std"]


def snap_to_programmable_levels(levels: jax.Array, cell: CellConfig,
                                programmable_levels: int | None) -> jax.Array:
    """Target level -> the nearest of ``programmable_levels`` evenly spaced states in
    [G_off, G_on] (level units). ``None`` leaves the nominal levels exact."""
    if programmable_levels is None:
        return levels
    spacing = cell.max_level / (programmable_levels - 1)
    return jnp.round(levels / spacing) * spacing


def program_conductance(levels: jax.Array, cell: CellConfig, device: DeviceConfig,
                        key: jax.Array | None, noise: NoiseParameters | None = None) -> jax.Array:
    """Programmed conductance of every cell, in level units relative to G_off.

    Order: snap to the programmable states, then stuck-at faults (a cell stuck on sits at G_on,
    stuck off at G_off), then device-to-device variation of the whole conductance G
    (lognormal: ``G * exp(sigma n)``; gaussian: ``max(G * (1 + sigma n), 0)``), n ~ N(0, 1).
    Each cell's draws come from ``key``; with no noise parameters enabled the result is the
    target levels exactly and ``key`` may be None.

    Args:
      levels: target levels (any shape, floating dtype).
      noise: traced values overriding ``device``'s numbers (every path compiled in).
    """
    conductance = snap_to_programmable_levels(levels, cell, device.programmable_levels)
    if noise is None:
        enabled_faults = device.stuck_on_rate > 0 or device.stuck_off_rate > 0
        enabled_variation = device.variation_sigma > 0
        stuck_on, stuck_off = device.stuck_on_rate, device.stuck_off_rate
        sigma = device.variation_sigma
    else:
        enabled_faults = enabled_variation = True
        stuck_on, stuck_off = noise.stuck_on_rate, noise.stuck_off_rate
        sigma = noise.variation_sigma
    if not (enabled_faults or enabled_variation):
        return conductance
    if key is None:
        raise ValueError("programming with variation or stuck-at faults needs a jax.random key")
    fault_key, variation_key = jax.random.split(key)
    if enabled_faults:
        u = jax.random.uniform(fault_key, conductance.shape, conductance.dtype)
        conductance = jnp.where(u < stuck_on, float(cell.max_level), conductance)
        conductance = jnp.where((u >= stuck_on) & (u < stuck_on + stuck_off), 0.0, conductance)
    if enabled_variation:
        beta = cell.off_in_levels
        n = jax.random.normal(variation_key, conductance.shape, conductance.dtype)
        total = conductance + beta
        if device.variation == "lognormal":
            factor_minus_one = jnp.expm1(sigma * n)
        else:
            factor_minus_one = sigma * n
        # G' - G_off = (G - G_off) + G * (factor - 1), exact (== levels) when sigma == 0.
        conductance = jnp.maximum(conductance + total * factor_minus_one, -beta)
    return conductance


def to_siemens(conductance_levels: jax.Array, cell: CellConfig) -> jax.Array:
    """Level units relative to G_off -> siemens."""
    return cell.g_off_siemens + conductance_levels * cell.level_step_siemens


def read_noise_std(digits: jax.Array, conductance_levels: jax.Array, cell: CellConfig,
                   sigma) -> jax.Array:
    """Standard deviation of a column current from per-cell read noise, in level units.

    Each driven cell's conductance G is read as ``G (1 + sigma n)`` with independent n ~ N(0, 1)
    per cell and per read, so a column current ``sum_i d_i G_i`` gets Gaussian noise of variance
    ``sigma**2 sum_i d_i**2 G_i**2``: the same distribution as drawing every cell, at the cost of
    one more product. ``digits`` (..., m), ``conductance_levels`` (m, ...).
    """
    total = conductance_levels + cell.off_in_levels
    variance = jnp.tensordot(digits ** 2, total ** 2, axes=1)
    return sigma * jnp.sqrt(variance)
