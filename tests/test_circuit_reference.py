"""The circuit solver against an independent scipy.sparse nodal solve, analytic cases and
finite differences (written apart from reram_emu.circuit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg

from reram_emu.circuit import transfer_matrix


def scipy_transfer(g, r_row, r_col, r_driver, r_sense):
    """Nodal equations of FIELD.md section 3 with scipy.sparse; zero resistances handled by
    tiny positive ones would bias the answer, so they must be > 0 here."""
    n, m = g.shape
    row = lambda i, j: i * m + j  # noqa: E731
    col = lambda i, j: n * m + i * m + j  # noqa: E731
    entries = {}

    def add(a, b, value):
        entries[(a, b)] = entries.get((a, b), 0.0) + value

    def link(a, b, conductance):
        add(a, a, conductance), add(b, b, conductance)
        add(a, b, -conductance), add(b, a, -conductance)

    for i in range(n):
        for j in range(m):
            link(row(i, j), col(i, j), g[i, j])
            if j + 1 < m:
                link(row(i, j), row(i, j + 1), 1 / r_row)
            if i + 1 < n:
                link(col(i, j), col(i + 1, j), 1 / r_col)
        add(row(i, 0), row(i, 0), 1 / r_driver)
    for j in range(m):
        add(col(n - 1, j), col(n - 1, j), 1 / r_sense)
    keys = np.array(list(entries))
    matrix = sparse.csc_matrix((list(entries.values()), (keys[:, 0], keys[:, 1])),
                               shape=(2 * n * m, 2 * n * m))
    rhs = np.zeros((2 * n * m, n))
    for i in range(n):
        rhs[row(i, 0), i] = 1 / r_driver
    voltages = sparse_linalg.splu(matrix).solve(rhs)
    return np.stack([voltages[col(n - 1, j)] / r_sense for j in range(m)], axis=1)


CASES = [((1, 1), 1e2), ((1, 7), 1e3), ((6, 1), 1e4), ((16, 16), 1e2), ((32, 24), 1e4),
         ((64, 64), 1e6), ((64, 64), 1e3)]


@pytest.mark.parametrize("shape,ratio", CASES)
def test_float64_matches_scipy(shape, ratio):
    """ratio = wire conductance / mean cell conductance."""
    rng = np.random.default_rng(hash(shape) % 2 ** 32)
    g = rng.uniform(1e-6, 1e-4, size=shape)
    r_wire = 1.0 / (ratio * g.mean())
    reference = scipy_transfer(g, r_wire, r_wire, 0.3 * r_wire, 0.5 * r_wire)
    with jax.enable_x64(True):
        t = np.asarray(transfer_matrix(jnp.asarray(g), r_wire, r_wire, 0.3 * r_wire,
                                       0.5 * r_wire))
    assert np.max(np.abs(t - reference)) <= 1e-9 * np.max(np.abs(reference))


@pytest.mark.parametrize("shape,ratio", [((32, 32), 1e2), ((128, 128), 1e4), ((64, 64), 1e6)])
def test_float32_within_1e_4(shape, ratio):
    rng = np.random.default_rng(1)
    g = rng.uniform(1e-6, 1e-4, size=shape)
    r_wire = 1.0 / (ratio * g.mean())
    reference = scipy_transfer(g, r_wire, r_wire, r_wire, r_wire)
    t = np.asarray(transfer_matrix(jnp.asarray(g, jnp.float32), r_wire, r_wire, r_wire, r_wire))
    assert t.dtype == np.float32
    assert np.max(np.abs(t - reference)) <= 1e-4 * np.max(np.abs(reference))


def test_analytic_cases():
    with jax.enable_x64(True):
        # 1 x 1: driver, cell and sense in series
        t = transfer_matrix(jnp.asarray([[1e-4]]), 5.0, 7.0, 100.0, 50.0)
        assert float(t[0, 0]) == pytest.approx(1 / (100.0 + 1e4 + 50.0), rel=1e-12)
        # no wire resistance at all: T == G exactly
        g = np.random.default_rng(0).uniform(1e-6, 1e-4, size=(9, 11))
        np.testing.assert_allclose(np.asarray(transfer_matrix(jnp.asarray(g), 0.0, 0.0)), g,
                                   rtol=1e-13)
        # one row, ideal bit lines: a ladder; compare with scipy with tiny sense resistance
        row = g[:1]
        t_row = np.asarray(transfer_matrix(jnp.asarray(row), 2.0, 0.0, 0.0, 0.0))
        reference = scipy_transfer(row, 2.0, 1e-9, 1e-9, 1e-9)
        np.testing.assert_allclose(t_row, reference, rtol=1e-6)
        # one column: cells in parallel up a resistive bit line
        column = g[:, :1]
        t_col = np.asarray(transfer_matrix(jnp.asarray(column), 0.0, 3.0, 0.0, 0.0))
        np.testing.assert_allclose(t_col, scipy_transfer(column, 1e-9, 3.0, 1e-9, 1e-9),
                                   rtol=1e-6)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        g = jnp.asarray(rng.uniform(1e-6, 1e-4, size=(6, 5)))
        v = jnp.asarray(rng.uniform(0, 0.2, size=(6,)))

        def loss(g, r):
            return jnp.sum((v @ transfer_matrix(g, r, r, 1.0, 1.0)) ** 2)

        grad_g, grad_r = jax.grad(loss, argnums=(0, 1))(g, 2.0)
        eps = 1e-10
        for index in [(0, 0), (3, 2), (5, 4)]:
            delta = jnp.zeros_like(g).at[index].set(eps)
            numeric = (loss(g + delta, 2.0) - loss(g - delta, 2.0)) / (2 * eps)
            assert float(grad_g[index]) == pytest.approx(float(numeric), rel=1e-5)
        numeric_r = (loss(g, 2.0 + 1e-6) - loss(g, 2.0 - 1e-6)) / 2e-6
        assert float(grad_r) == pytest.approx(float(numeric_r), rel=1e-5)
