"""The IR-drop solver stays exact over every resistance it accepts, or it says so (issue 11).

Three cases that once lost accuracy silently, each against an independent reference; the
range errors for concrete inputs; and NaN (never a plausible number) for out-of-range
crossbars under jit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reram_emu.circuit import (KAPPA_MAX, RESISTANCE_CONDUCTANCE_MAX, column_currents,
                               transfer_matrix)
from tests.test_circuit import reference_transfer


def test_large_sense_resistance_3x3_float32():
    # was -6.3e-5: exact value ~ 1e-4 S in series with 1e10 ohm, shared by 3 bit lines' cells
    g = np.full((3, 3), 1e-4, np.float32)
    value = np.asarray(transfer_matrix(g, 1.0, 1.0, 0.0, 1e10))
    with jax.enable_x64(True):
        reference = reference_transfer(g.astype(np.float64), 1.0, 1.0, 0.0, 1e10)
    np.testing.assert_allclose(value, reference, rtol=1e-4)
    assert np.all(value > 0)
    assert abs(value[0, 0] - 3.333e-11) < 1e-13


def test_128_float32_large_sense_matches_float64():
    # was 12.5 % off
    rng = np.random.default_rng(3)
    g = rng.uniform(1e-6, 1e-4, (128, 128))
    t32 = np.asarray(transfer_matrix(g.astype(np.float32), 1.0, 1.0, 0.0, 1e5))
    with jax.enable_x64(True):
        t64 = np.asarray(transfer_matrix(g, 1.0, 1.0, 0.0, 1e5))
    relative = np.max(np.abs(t32 - t64)) / np.max(np.abs(t64))
    assert relative < 1e-5, relative


def test_open_circuit_wires_leave_only_the_wire_free_cell():
    # 1e15-ohm wires: only cell (N-1, 0) (at the driver and at the sense end) conducts.
    # Was 5.3e3 S from 1e-4 S cells.
    with jax.enable_x64(True):
        t = np.asarray(transfer_matrix(np.full((3, 3), 1e-4), 1e15, 1e15, 0.0, 0.0))
    np.testing.assert_allclose(t[2, 0], 1e-4, rtol=1e-9)
    others = np.delete(t.ravel(), 2 * 3 + 0)
    assert np.all(np.abs(others) < 1e-13), others
    assert np.all(t >= 0)


def test_kappa_out_of_range_raises_with_the_limit():
    g = np.full((3, 3), 1e-4, np.float32)
    with pytest.raises(ValueError, match="nearly floats.*float64"):
        transfer_matrix(g, 1.0, 1.0, 1e12, 1e12)
    with pytest.raises(ValueError, match="r_driver"):
        column_currents(g, np.ones((1, 3), np.float32), 1.0, 1.0, 1e12, 1e12)
    # the same array in float64 is inside its range (kappa 3e8 <= 1e9)
    with jax.enable_x64(True):
        t = np.asarray(transfer_matrix(g.astype(np.float64), 1.0, 1.0, 1e12, 1e12))
    assert np.all(np.isfinite(t)) and np.all(t >= 0)
    assert KAPPA_MAX["float32"] < 3e8 < KAPPA_MAX["float64"]


def test_resistance_beyond_open_circuit_raises():
    g = np.full((3, 3), 1e-4, np.float32)
    r = 2 * RESISTANCE_CONDUCTANCE_MAX["float32"] / 1e-4
    with pytest.raises(ValueError, match="r_wire_row.*1/eps\\^2"):
        transfer_matrix(g, r, 1.0)


def test_out_of_range_under_jit_is_nan_not_a_number():
    g = jnp.full((3, 3), 1e-4, jnp.float32)
    solve = jax.jit(lambda r: transfer_matrix(g, 1.0, 1.0, r, r))
    assert np.all(np.isnan(np.asarray(solve(1e12))))
    inside = np.asarray(solve(10.0))
    np.testing.assert_array_equal(inside, np.asarray(transfer_matrix(g, 1.0, 1.0, 10.0, 10.0)))
    assert np.all(np.isfinite(inside))
    batched = np.asarray(jax.vmap(solve)(jnp.asarray([10.0, 1e12], jnp.float32)))
    assert np.all(np.isfinite(batched[0])) and np.all(np.isnan(batched[1]))
