"""IR drop in the pipeline: the read path uses each crossbar's circuit transfer matrix."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reram_emu as rx
from reram_emu.circuit import WireConfig
from reram_emu.config import (ADCConfig, CrossbarConfig, CrossbarGeometry, InputConfig,
                              MappingConfig)

WIRES = WireConfig(r_wire_row_ohms=2.0, r_wire_col_ohms=3.0, r_driver_ohms=0.5,
                   r_sense_ohms=0.7)


def dense_transfer(g, wires):
    """Independent reference: dense nodal analysis of the FIELD.md section 3 circuit
    (drivers at column 0 through r_driver, virtual grounds at the last row through r_sense).
    Returns T (N, M): column currents per volt on each word line."""
    n, m = g.shape
    rows = lambda i, j: i * m + j  # noqa: E731
    cols = lambda i, j: n * m + i * m + j  # noqa: E731
    size = 2 * n * m
    y = np.zeros((size, size))

    def link(a, b, conductance):
        y[a, a] += conductance
        y[b, b] += conductance
        y[a, b] -= conductance
        y[b, a] -= conductance

    for i in range(n):
        for j in range(m):
            link(rows(i, j), cols(i, j), g[i, j])
            if j + 1 < m:
                link(rows(i, j), rows(i, j + 1), 1 / wires.r_wire_row_ohms)
            if i + 1 < n:
                link(cols(i, j), cols(i + 1, j), 1 / wires.r_wire_col_ohms)
        y[rows(i, 0), rows(i, 0)] += 1 / wires.r_driver_ohms
    for j in range(m):
        y[cols(n - 1, j), cols(n - 1, j)] += 1 / wires.r_sense_ohms
    rhs = np.zeros((size, n))
    for i in range(n):
        rhs[rows(i, 0), i] = 1 / wires.r_driver_ohms
    v = np.linalg.solve(y, rhs)
    return np.stack([v[cols(n - 1, j)] / wires.r_sense_ohms for j in range(m)], axis=1)


def small_config(scheme="polarized", wires=WIRES, m=8):
    return CrossbarConfig(geometry=CrossbarGeometry(16, 8, m), adc=ADCConfig(bits=16),
                          mapping=MappingConfig(scheme=scheme, on_violation="project"),
                          inputs=InputConfig(bits=4), wires=wires)


def test_response_matches_dense_nodal_reference():
    """Assemble every physical tile independently (data columns, unused columns at G_off,
    the reference column) and compare the pipeline's response with its transfer matrix."""
    rng = np.random.default_rng(0)
    config = small_config()
    with jax.enable_x64(True):
        config = config.replace(dtype="float64")
        # 20 rows: 2 row tiles of 16; one output of 4 slices: 4 data columns, 4 unused, reference
        mapped = rx.map_weights(rng.normal(size=(20, 1)), config)
        layer = rx.program(mapped)
        cell = config.cell
        levels = np.asarray(mapped.levels)  # (F=3, m=8, 1 column tile, X = 4 data + reference)
        f, m, _, x = levels.shape
        padded = np.zeros((4, m, 1, x))
        padded[:f] = levels
        expected_rows = []
        for tile in range(2):
            block = padded[2 * tile:2 * tile + 2].reshape(16, x)
            physical = np.full((16, 8 + 1), cell.g_off_siemens)  # 8 columns + reference
            data = block[:, :x - 1]
            physical[:, :data.shape[1]] = cell.g_off_siemens + data * cell.level_step_siemens
            physical[:, data.shape[1]:8] = cell.g_off_siemens
            physical[:, 8] = cell.g_off_siemens + block[:, -1] * cell.level_step_siemens
            t = dense_transfer(physical, WIRES)
            used = np.concatenate([t[:, :data.shape[1]], t[:, 8:]], axis=1)
            expected_rows.append(used / cell.level_step_siemens - cell.off_in_levels)
        expected = np.concatenate(expected_rows)[:f * m]
        # the layer stores the ADC response: data columns minus the reference column
        expected_adc = expected[:, :-1] - expected[:, -1:]
        got = np.asarray(layer.response).reshape(f * m, -1)
        np.testing.assert_allclose(got, expected_adc, rtol=1e-9, atol=1e-9)


def test_no_wires_and_zero_resistance_agree():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(40, 5))
    x = jnp.asarray(rng.integers(0, 16, size=(4, 40)))
    ideal = rx.program(rx.map_weights(w, small_config(wires=None)))
    zero = rx.program(rx.map_weights(w, small_config(wires=WireConfig(0.0, 0.0))))
    # bit for bit: with an ADC whose LSB is 2 levels, odd sums sit exactly on a code boundary
    # and any rounding of the response would tip them
    np.testing.assert_array_equal(np.asarray(zero.response), np.asarray(ideal.response))
    np.testing.assert_array_equal(np.asarray(rx.read_integers(zero, x).outputs),
                                  np.asarray(rx.read_integers(ideal, x).outputs))
    for config in (rx.preset("forms", fragment_rows=8), rx.preset("prime")):
        mapped = rx.map_weights(w, config.replace(mapping=dataclasses.replace(
            config.mapping, on_violation="project")))
        wired = rx.program(rx.map_weights(w, mapped.config.replace(wires=WireConfig(0.0, 0.0))))
        plain = rx.program(mapped)
        np.testing.assert_array_equal(np.asarray(wired.response), np.asarray(plain.response))
        np.testing.assert_array_equal(np.asarray(rx.read_integers(wired, x).outputs),
                                      np.asarray(rx.read_integers(plain, x).outputs))


@pytest.mark.parametrize("scheme", ["polarized", "differential", "offset"])
def test_fragment_drive_and_all_rows_drive_follow_from_one_transfer_matrix(scheme):
    """With an ideal (wide, fine) ADC, driving one fragment at a time and summing equals
    driving all rows at once: both are V @ T by superposition (undriven rows held at 0 V)."""
    rng = np.random.default_rng(2)
    # polarized over all 16 rows, so fragments of 4 and of 16 store the same weights
    w = np.abs(rng.normal(size=(16, 4))) * rng.choice([-1.0, 1.0], size=(1, 4))
    x = jnp.asarray(rng.integers(0, 16, size=(5, 16)))
    fine = ADCConfig(bits=24, range="fixed", full_scale_levels=2.0 ** 14)  # LSB 2**-9 levels
    outputs = []
    for m in (4, 16):
        config = small_config(scheme, m=m).replace(adc=fine)
        layer = rx.program(rx.map_weights(w, config))
        outputs.append(np.asarray(rx.read_integers(layer, x).outputs))
    lsb_error = 2.0 ** -9 * 15 * (1 + 4 + 16 + 64 + 128) * 4
    np.testing.assert_allclose(outputs[0], outputs[1], atol=lsb_error)
    ideal = np.asarray(rx.read_integers(rx.program(rx.map_weights(
        w, small_config(scheme, wires=None).replace(adc=fine))), x).outputs)
    # the wires matter: their effect dwarfs the difference between the two drives
    assert np.max(np.abs(outputs[1] - ideal)) > 10 * np.max(np.abs(outputs[0] - outputs[1]))
    assert np.max(np.abs(outputs[1] - ideal)) > 0.005 * np.max(np.abs(ideal))


def test_ir_drop_lowers_currents_and_sweeps_over_wire_resistance():
    rng = np.random.default_rng(3)
    signs = np.repeat(rng.choice([-1.0, 1.0], size=(4, 6)), 8, axis=0)
    w = np.abs(rng.normal(size=(32, 6))) * signs
    config = small_config().replace(adc=ADCConfig(bits=16))
    mapped = rx.map_weights(w, config)
    x = jnp.asarray(rng.integers(0, 16, size=(4, 32)))
    exact = np.asarray(x) @ np.asarray(mapped.integer_weights)
    traces = []

    def error(resistance):
        traces.append(1)
        noise = config.noise_parameters().with_wire_resistance(resistance)
        out = rx.read_integers(rx.program(mapped, jax.random.key(0), noise), x).outputs
        return jnp.linalg.norm(out - exact) / jnp.linalg.norm(exact)

    errors = np.asarray(jax.jit(jax.vmap(error))(jnp.asarray([0.0, 1.0, 10.0, 100.0])))
    assert len(traces) == 1
    assert errors[0] < 1e-6 and errors[1] < errors[2] < errors[3]
