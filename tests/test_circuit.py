"""Tests of the IR-drop circuit solver (reram_emu.circuit).

The reference is written here, independently of the solver: the modified nodal
analysis (MNA) of the FIELD.md section 3 circuit assembled with scipy.sparse
and solved by scipy.sparse.linalg.splu.  Zero resistances become branch-current
unknowns (v_a - v_b = 0), so the reference is exact for ideal wires, drivers
and sense amplifiers too.  Analytic cases: a 1 x 1 cell (series resistors),
one uniform word line and one uniform bit line (discrete cosh / sinh profiles),
ideal wires (T == G).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg

from reram_emu import circuit
from reram_emu.circuit import LAYOUTS, WireConfig, column_currents, transfer_matrix


@pytest.fixture(autouse=True)
def float64_enabled():
    with jax.enable_x64(True):
        yield


def reference_transfer(conductance, r_wire_row, r_wire_col, r_driver, r_sense,
                       layout="driver_col0_sense_lastrow", driven_rows=None):
    """Rows ``driven_rows`` of T by MNA + sparse LU (float64).

    Unknowns: word-line node voltages, bit-line node voltages, driver source
    node voltages, then one current per zero-resistance element and per source.
    """
    n_rows, n_cols = conductance.shape
    driven_rows = np.arange(n_rows) if driven_rows is None else np.asarray(driven_rows)
    driver_column = n_cols - 1 if "driver_lastcol" in layout else 0
    sense_row = 0 if "sense_row0" in layout else n_rows - 1
    cells = n_rows * n_cols
    word = np.arange(cells).reshape(n_rows, n_cols)
    bit = cells + word
    source = 2 * cells + np.arange(n_rows)
    ground = -1
    n_nodes = 2 * cells + n_rows

    # two-terminal elements: (node a, node b, resistance); the sense elements last
    elements = [
        (word.ravel(), bit.ravel(), np.where(conductance.ravel() > 0,
                                             1.0 / np.maximum(conductance.ravel(), 1e-300),
                                             np.inf)),
        (word[:, :-1].ravel(), word[:, 1:].ravel(), np.full(n_rows * (n_cols - 1), r_wire_row)),
        (bit[:-1].ravel(), bit[1:].ravel(), np.full((n_rows - 1) * n_cols, r_wire_col)),
        (source, word[:, driver_column], np.full(n_rows, r_driver)),
        (bit[sense_row], np.full(n_cols, ground), np.full(n_cols, r_sense)),
    ]
    a, b, resistance = (np.concatenate(parts) for parts in zip(*elements))
    sense = np.arange(len(a) - n_cols, len(a))
    rows, cols, vals = [], [], []

    def stamp(r, c, v):
        keep = (r >= 0) & (c >= 0)
        rows.append(r[keep]), cols.append(c[keep]), vals.append(v[keep])

    resistive = np.isfinite(resistance) & (resistance > 0)
    g = 1.0 / resistance[resistive]
    ra, rb = a[resistive], b[resistive]
    stamp(ra, ra, g), stamp(rb, rb, g), stamp(ra, rb, -g), stamp(rb, ra, -g)
    shorted = np.flatnonzero(resistance == 0)
    branch = n_nodes + np.arange(len(shorted))          # current a -> b of each short
    ones = np.ones(len(shorted))
    stamp(a[shorted], branch, ones), stamp(branch, a[shorted], ones)
    stamp(b[shorted], branch, -ones), stamp(branch, b[shorted], -ones)
    source_branch = n_nodes + len(shorted) + np.arange(n_rows)
    stamp(source, source_branch, np.ones(n_rows)), stamp(source_branch, source, np.ones(n_rows))
    size = n_nodes + len(shorted) + n_rows
    matrix = sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                       np.concatenate(cols))), shape=(size, size))
    rhs = np.zeros((size, len(driven_rows)))
    rhs[source_branch[driven_rows], np.arange(len(driven_rows))] = 1.0
    factor = sparse_linalg.splu(matrix)
    solution = np.concatenate([factor.solve(rhs[:, k:k + 4]) for k in range(0, rhs.shape[1], 4)],
                              axis=1)
    if r_sense == 0:
        position = {element: n_nodes + index for index, element in enumerate(shorted)}
        currents = solution[[position[element] for element in sense]]
    else:
        currents = solution[bit[sense_row]] / r_sense
    return currents.T


def relative_error(value, reference):
    return float(np.max(np.abs(np.asarray(value, np.float64) - reference))
                 / np.max(np.abs(reference)))


def random_conductance(shape, seed, low=1e-6, high=1e-4):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


def wire_for_ratio(conductance, ratio):
    """Wire resistance (ohms) with wire conductance / mean cell conductance = ratio."""
    return 1.0 / (ratio * conductance.mean())


# --- against the sparse reference ------------------------------------------------------------

SHAPE = (6, 5)  # most tests share one shape, so that they share compiled solvers

CASES = [
    # shape, ratio, driver / wire, sense / wire
    ((1, 1), 1e2, 0.0, 0.0),
    ((1, 1), 1e4, 3.0, 2.0),
    ((1, 9), 1e2, 0.0, 0.5),
    ((9, 1), 1e2, 0.5, 0.0),
    (SHAPE, 1e6, 0.3, 0.5),
    ((16, 24), 1e2, 0.0, 0.0),
    ((16, 24), 1e4, 2.0, 1.0),
    ((16, 24), 1e6, 1.0, 0.0),
    ((64, 64), 1e2, 0.0, 0.0),
    ((64, 64), 1e4, 0.0, 0.0),
    ((64, 64), 1e6, 1.0, 1.0),
]


@pytest.mark.parametrize("shape,ratio,driver,sense", CASES)
def test_float64_matches_sparse_reference(shape, ratio, driver, sense):
    """ratio = wire conductance / mean cell conductance; driver, sense in wire resistances."""
    conductance = random_conductance(shape, seed=shape[0] * 1000 + shape[1])
    r = wire_for_ratio(conductance, ratio)
    reference = reference_transfer(conductance, r, 1.3 * r, driver * r, sense * r)
    result = transfer_matrix(conductance, r, 1.3 * r, driver * r, sense * r)
    assert result.dtype == jnp.float64 and result.shape == shape
    assert relative_error(result, reference) <= 1e-9


def test_float64_256_matches_sparse_reference():
    conductance = random_conductance((256, 256), seed=256)
    r = wire_for_ratio(conductance, 1e4)
    rows = np.array([0, 1, 77, 128, 200, 254, 255])
    reference = reference_transfer(conductance, r, r, 0.0, 0.0, driven_rows=rows)
    result = np.asarray(transfer_matrix(conductance, r, r))[rows]
    assert relative_error(result, reference) <= 1e-9


@pytest.mark.parametrize("ratio", [1e2, 1e4, 1e6])
def test_float32_within_1e_4(ratio):
    conductance = random_conductance((128, 128), seed=int(ratio))
    r = wire_for_ratio(conductance, ratio)
    rows = np.arange(0, 128, 7)
    reference = reference_transfer(conductance, r, r, 0.5 * r, 0.5 * r, driven_rows=rows)
    plain = transfer_matrix(conductance.astype(np.float32), r, r, 0.5 * r, 0.5 * r)
    assert plain.dtype == jnp.float32
    # measured: about 1e-6 (the target is 1e-4)
    assert relative_error(np.asarray(plain)[rows], reference) <= 1e-5


def test_float32_refinement():
    conductance = random_conductance((64, 64), seed=64)
    r = wire_for_ratio(conductance, 1e4)
    reference = reference_transfer(conductance, r, r, 0.0, 0.0)
    refined = transfer_matrix(conductance.astype(np.float32), r, r, refinement_steps=1)
    assert refined.dtype == jnp.float32
    assert relative_error(refined, reference) <= 1e-6


@pytest.mark.parametrize("resistances", [(0.0, 2.0, 0.5, 0.0), (2.0, 0.0, 0.0, 0.7),
                                         (0.0, 0.0, 0.5, 0.7), (2.0, 3.0, 0.0, 0.0)])
def test_zero_resistances_match_reference(resistances):
    conductance = random_conductance(SHAPE, seed=7)
    reference = reference_transfer(conductance, *resistances)
    assert relative_error(transfer_matrix(conductance, *resistances), reference) <= 1e-12


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_match_reference(layout):
    conductance = random_conductance(SHAPE, seed=11)
    resistances = (20.0, 30.0, 5.0, 7.0)
    reference = reference_transfer(conductance, *resistances, layout=layout)
    result = transfer_matrix(conductance, *resistances, layout=layout)
    assert relative_error(result, reference) <= 1e-12
    if layout != "driver_col0_sense_lastrow":
        assert relative_error(transfer_matrix(conductance, *resistances), reference) > 1e-3


def test_zero_conductance_cells():
    conductance = random_conductance(SHAPE, seed=3)
    conductance[::3, 1::2] = 0.0
    reference = reference_transfer(conductance, 50.0, 40.0, 10.0, 0.0)
    result = transfer_matrix(conductance, 50.0, 40.0, 10.0, 0.0)
    assert relative_error(result, reference) <= 1e-12
    assert np.all(np.asarray(transfer_matrix(np.zeros(SHAPE), 1.0, 1.0)) == 0.0)


# --- analytic cases ---------------------------------------------------------------------------


def test_single_cell_is_series_resistors():
    g = 1e-4
    result = transfer_matrix(np.array([[g]]), 5.0, 7.0, 100.0, 50.0)
    assert float(result[0, 0]) == pytest.approx(1.0 / (100.0 + 1.0 / g + 50.0), rel=1e-14)


def test_single_word_line_cosh_profile():
    """One uniform word line, ideal driver and sense: v_j = cosh(theta (M - 1/2 - j)) /
    cosh(theta (M - 1/2)) with cosh(theta) = 1 + r g / 2."""
    n_cols, g, r = 9, 1e-3, 30.0
    theta = math.acosh(1.0 + r * g / 2.0)
    j = np.arange(n_cols)
    expected = g * np.cosh(theta * (n_cols - 0.5 - j)) / math.cosh(theta * (n_cols - 0.5))
    result = np.asarray(transfer_matrix(np.full((1, n_cols), g), r, 123.0))[0]
    np.testing.assert_allclose(result, expected, rtol=1e-12)


def test_single_bit_line_sinh_profile():
    """One uniform bit line, word line k driven, the others at 0 V, ideal driver and sense.
    Above the driven cell the bit-line voltage is A cosh(theta (i + 1/2)), below it
    B sinh(theta (N - 1 - i)); the sense current is B sinh(theta) / r."""
    n_rows, g, r = 9, 1e-3, 20.0
    theta = math.acosh(1.0 + r * g / 2.0)
    beta = 2.0 + r * g
    expected = np.empty(n_rows)
    for k in range(n_rows - 1):
        below = math.sinh(theta * (n_rows - 2 - k)) / math.sinh(theta * (n_rows - 1 - k))
        above = math.cosh(theta * (k - 0.5)) / math.cosh(theta * (k + 0.5))
        voltage = r * g / (beta - above - below)
        expected[k] = voltage * math.sinh(theta) / (r * math.sinh(theta * (n_rows - 1 - k)))
    expected[n_rows - 1] = g  # the driven cell meets the virtual ground directly
    result = np.asarray(transfer_matrix(np.full((n_rows, 1), g), 99.0, r))[:, 0]
    np.testing.assert_allclose(result, expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ideal_wires_give_conductance_exactly(dtype):
    conductance = random_conductance(SHAPE, seed=5).astype(dtype)
    result = transfer_matrix(conductance, 0.0, 0.0)
    assert result.dtype == dtype
    np.testing.assert_array_equal(np.asarray(result), conductance)
    assert WireConfig(0.0, 0.0).is_ideal


def test_ideal_wires_with_driver_resistance():
    """Ideal word line = one node: T[i, j] = G[i, j] / (1 + r_driver sum_k G[i, k])."""
    conductance = random_conductance(SHAPE, seed=9)
    r_driver = 300.0
    expected = conductance / (1.0 + r_driver * conductance.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(np.asarray(transfer_matrix(conductance, 0.0, 0.0, r_driver)),
                               expected, rtol=1e-13)


@pytest.mark.parametrize("shape", [(9, 1), SHAPE])
def test_reciprocity(shape):
    """Swapping word and bit lines (and drivers and sense amplifiers) transposes T."""
    conductance = random_conductance(shape, seed=13)
    forward = np.asarray(transfer_matrix(conductance, 20.0, 30.0, 5.0, 7.0))
    mirrored = conductance[::-1, ::-1].T
    backward = np.asarray(transfer_matrix(mirrored, 30.0, 20.0, 7.0, 5.0))
    np.testing.assert_allclose(backward[::-1, ::-1].T, forward, rtol=1e-12)


# --- API: reads, batches, jit, vmap, refinement ------------------------------------------------


def test_column_currents_equal_voltages_times_transfer():
    conductance = random_conductance(SHAPE, seed=17)
    wires = WireConfig(10.0, 20.0, 3.0, 4.0)
    transfer = np.asarray(wires.transfer_matrix(conductance))
    rng = np.random.default_rng(0)
    few = rng.uniform(0, 1, size=(3, 6))          # B < N: direct solve
    many = rng.uniform(0, 1, size=(9, 6))         # B > N: through T
    np.testing.assert_allclose(np.asarray(wires.column_currents(conductance, few)),
                               few @ transfer, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(wires.column_currents(conductance, many)),
                               many @ transfer, rtol=1e-12)
    single = np.asarray(column_currents(conductance, few[0], *wires.resistances))
    assert single.shape == (5,)
    np.testing.assert_allclose(single, few[0] @ transfer, rtol=1e-12)


def test_batches_broadcast_and_vmap():
    conductance = random_conductance((3,) + SHAPE, seed=19)        # three tiles
    batched = np.asarray(transfer_matrix(conductance, 10.0, 20.0, 1.0, 2.0))
    assert batched.shape == (3,) + SHAPE
    single = np.asarray(transfer_matrix(conductance[1], 10.0, 20.0, 1.0, 2.0))
    np.testing.assert_allclose(batched[1], single, rtol=1e-13)
    # resistances broadcast against the batch: one wire resistance per tile
    wires = np.array([1.0, 10.0, 100.0])
    swept = np.asarray(transfer_matrix(conductance[0], wires, wires))
    assert swept.shape == (3,) + SHAPE
    np.testing.assert_allclose(swept[1], np.asarray(transfer_matrix(conductance[0], 10.0, 10.0)),
                               rtol=1e-13)
    traced = jax.jit(jax.vmap(lambda r: transfer_matrix(conductance[0], r, r)))(wires)
    np.testing.assert_allclose(np.asarray(traced), swept, rtol=1e-13)
    # voltages with their own batch dimensions broadcast against the tiles
    voltages = np.random.default_rng(2).uniform(0, 1, size=(2, 1, 2, 6))
    currents = np.asarray(column_currents(conductance, voltages, 10.0, 20.0, 1.0, 2.0))
    assert currents.shape == (2, 3, 2, 5)
    np.testing.assert_allclose(currents, voltages @ batched, rtol=1e-12)


def test_refinement_matches_direct_solve_and_chunks(monkeypatch):
    conductance = random_conductance(SHAPE, seed=29)
    resistances = jnp.asarray([30.0, 40.0, 5.0, 6.0])
    plain = np.asarray(transfer_matrix(conductance, *resistances))
    refined = np.asarray(transfer_matrix(conductance, *resistances, refinement_steps=1))
    np.testing.assert_allclose(refined, plain, rtol=1e-12, atol=1e-12 * plain.max())
    # full-state solves in several chunks of reads (4 reads per chunk, the last one padded)
    monkeypatch.setattr(circuit, "_STATE_ELEMENTS_PER_CHUNK", SHAPE[0] * SHAPE[1] * 4)
    chunked = jax.jit(lambda g: circuit._crossbar_transfer(g, resistances, 1))(conductance)
    np.testing.assert_allclose(np.asarray(chunked), plain, rtol=1e-12, atol=1e-12 * plain.max())


def test_jit_with_traced_conductance_and_resistance():
    conductance = random_conductance(SHAPE, seed=31)

    @jax.jit
    def solve(g, r):
        return transfer_matrix(g, r, r, 0.0, 0.0)

    np.testing.assert_allclose(np.asarray(solve(conductance, 25.0)),
                               np.asarray(transfer_matrix(conductance, 25.0, 25.0)), rtol=1e-13)


# --- gradients ------------------------------------------------------------------------------


def _central_difference(function, value, step):
    return (function(value + step) - function(value - step)) / (2 * step)


def _gradients(loss_of_transfer, conductance, resistances, refinement_steps=0):
    """Gradients of ``loss_of_transfer(T)`` w.r.t. conductance and the four resistances.

    Always differentiating w.r.t. all of them lets the tests share compiled solvers.
    """

    def loss(g, r):
        return loss_of_transfer(transfer_matrix(g, *r, refinement_steps=refinement_steps))

    return jax.grad(loss, argnums=(0, 1))(jnp.asarray(conductance), jnp.asarray(resistances))


@pytest.mark.parametrize("refinement_steps", [0, 1])
def test_gradients_match_finite_differences(refinement_steps):
    rng = np.random.default_rng(37)
    conductance = rng.uniform(1e-5, 1e-3, size=SHAPE)
    weights = rng.standard_normal(SHAPE)
    resistances = np.array([3.0, 5.0, 7.0, 11.0])

    def loss_of_transfer(transfer):
        return jnp.sum(weights * transfer) + 1e3 * jnp.sum(transfer ** 2)

    def loss(g, r):
        return float(loss_of_transfer(transfer_matrix(g, *r)))

    grad_conductance, grad_resistances = _gradients(loss_of_transfer, conductance, resistances,
                                                    refinement_steps)
    for index in [(0, 0), (2, 3), (5, 4), (5, 0)]:
        def along_cell(value, index=index):
            g = conductance.copy()
            g[index] = value
            return loss(g, resistances)
        numeric = _central_difference(along_cell, conductance[index], 1e-9)
        assert float(grad_conductance[index]) == pytest.approx(numeric, rel=1e-6)
    for k in range(4):
        def along_resistance(value, k=k):
            r = resistances.copy()
            r[k] = value
            return loss(conductance, r)
        numeric = _central_difference(along_resistance, resistances[k], 1e-4)
        assert float(grad_resistances[k]) == pytest.approx(numeric, rel=1e-6)


def test_gradient_at_zero_resistance_and_of_voltages():
    conductance = random_conductance(SHAPE, seed=41)
    # d/dr_driver sum(T) at ideal wires: T = G / (1 + r_driver S_i) -> -sum_i S_i^2
    _, grad_resistances = _gradients(jnp.sum, conductance, np.zeros(4))
    assert float(grad_resistances[2]) == pytest.approx(-np.sum(conductance.sum(axis=1) ** 2),
                                                       rel=1e-12)
    # through column_currents (direct solve) w.r.t. voltages and conductance
    resistances = np.array([10.0, 20.0, 1.0, 2.0])
    voltages = np.random.default_rng(3).uniform(0, 1, size=(2, 6))
    cotangent = np.random.default_rng(4).standard_normal((2, 5))
    grad_voltages, grad_conductance = jax.grad(
        lambda v, g: jnp.sum(cotangent * column_currents(g, v, *resistances)),
        argnums=(0, 1))(voltages, conductance)
    transfer = np.asarray(transfer_matrix(conductance, *resistances))
    np.testing.assert_allclose(np.asarray(grad_voltages), cotangent @ transfer.T, rtol=1e-12)
    via_transfer, _ = _gradients(lambda t: jnp.sum(cotangent * (voltages @ t)), conductance,
                                 resistances)
    np.testing.assert_allclose(np.asarray(grad_conductance), np.asarray(via_transfer),
                               rtol=1e-10)


def test_float32_gradients_close_to_float64():
    conductance = random_conductance(SHAPE, seed=43)
    weights = np.random.default_rng(5).standard_normal(SHAPE)
    resistances = np.array([300.0, 300.0, 0.0, 0.0])
    grad64 = _gradients(lambda t: jnp.sum(weights * t), conductance, resistances)
    grad32 = _gradients(lambda t: jnp.sum(weights * t), conductance.astype(np.float32),
                        resistances.astype(np.float32))
    assert grad32[0].dtype == jnp.float32
    assert relative_error(grad32[0], np.asarray(grad64[0])) <= 1e-5
    assert relative_error(grad32[1][:2], np.asarray(grad64[1][:2])) <= 1e-4


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("conductance,message", [
    (np.ones(3), "shape"),
    (np.ones((0, 3)), "at least one"),
    (np.array([[1e-4, np.nan]]), "NaN"),
    (np.array([[1e-4, np.inf]]), "NaN or inf"),
    (np.array([[1e-4, -1e-6]]), ">= 0"),
    (np.array([[1e-4 + 1j]]), "real"),
])
def test_bad_conductance(conductance, message):
    with pytest.raises(ValueError, match=message):
        transfer_matrix(conductance, 1.0, 1.0)


@pytest.mark.parametrize("resistances,message", [
    ((-1.0, 1.0, 0.0, 0.0), "r_wire_row must be >= 0"),
    ((1.0, np.nan, 0.0, 0.0), "r_wire_col must be finite"),
    ((1.0, 1.0, np.inf, 0.0), "r_driver must be finite"),
    ((1.0, 1.0, 0.0, -2.0), "r_sense must be >= 0"),
    ((np.ones(3), 1.0, 0.0, 0.0), "broadcast"),
    (("1", 1.0, 0.0, 0.0), "real number"),
])
def test_bad_resistances(resistances, message):
    with pytest.raises(ValueError, match=message):
        transfer_matrix(np.ones((2, 4, 3)) * 1e-5, *resistances)


def test_bad_options_and_voltages():
    conductance = np.ones((3, 2)) * 1e-5
    with pytest.raises(ValueError, match="unknown crossbar layout"):
        transfer_matrix(conductance, 1.0, 1.0, layout="driver_left")
    with pytest.raises(ValueError, match="refinement_steps"):
        transfer_matrix(conductance, 1.0, 1.0, refinement_steps=-1)
    with pytest.raises(ValueError, match="WireConfig"):
        transfer_matrix(conductance, WireConfig(), 1.0)
    with pytest.raises(ValueError, match="voltages must have shape"):
        column_currents(conductance, np.ones((2, 4)), 1.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        column_currents(conductance, np.array([1.0, np.nan, 0.0]), 1.0, 1.0)
    with pytest.raises(ValueError, match="do not broadcast"):
        column_currents(np.ones((2, 3, 2)) * 1e-5, np.ones((3, 1, 3)), 1.0, 1.0)


@pytest.mark.parametrize("field,value,message", [
    ("r_wire_row_ohms", -1.0, "finite and >= 0"),
    ("r_wire_col_ohms", float("nan"), "finite and >= 0"),
    ("r_driver_ohms", float("inf"), "finite and >= 0"),
    ("r_sense_ohms", "0", "real number"),
    ("r_sense_ohms", True, "real number"),
    ("layout", "driver_col1", "unknown crossbar layout"),
])
def test_wire_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        WireConfig(**{field: value})


def test_wire_config_is_hashable_and_static():
    wires = WireConfig(2, 3, 0.5, 0.7)
    assert wires.r_wire_row_ohms == 2.0 and isinstance(wires.r_wire_row_ohms, float)
    assert hash(wires) == hash(WireConfig(2.0, 3.0, 0.5, 0.7))
    conductance = random_conductance(SHAPE, seed=47)
    solve = jax.jit(lambda g, wires: wires.transfer_matrix(g), static_argnums=1)
    np.testing.assert_allclose(np.asarray(solve(conductance, wires)),
                               np.asarray(transfer_matrix(conductance, 2, 3, 0.5, 0.7)),
                               rtol=1e-13)
