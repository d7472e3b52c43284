"""IR-drop circuit solver of a ReRAM crossbar (exact, direct, differentiable).

Circuit convention (``layout="driver_col0_sense_lastrow"``, FIELD.md section 3)
-------------------------------------------------------------------------------
* The crossbar has ``N`` word lines (rows) and ``M`` bit lines (columns).
  Cell ``(i, j)`` of conductance ``G[i, j]`` (siemens) joins word-line node
  ``(i, j)`` to bit-line node ``(i, j)``.
* Word line ``i`` is driven at its column-0 end by an ideal source of
  ``V[i]`` volts through the driver resistance ``r_driver`` (ohms); neighbouring
  word-line nodes are joined by ``r_wire_row`` (ohms per segment).
* Bit line ``j`` is held at virtual ground (0 V) at its row-(N-1) end through
  the sense resistance ``r_sense`` (ohms); neighbouring bit-line nodes are
  joined by ``r_wire_col`` (ohms per segment).
* Word lines that are not driven are held at 0 V (driven, not floating).
* The output is the current (amperes) flowing into each virtual ground.

The circuit is linear, so the bit-line currents are a linear map of the
word-line voltages: ``I = V @ T`` with the transfer matrix ``T`` (siemens,
shape ``(N, M)``).  Ideal wires (all resistances zero) give ``T == G``.
Other layouts (driver at the last column, sense at row 0) are mirror images of
this one and are solved by flipping the conductance array.

Method
------
Everything is written in resistance form (series resistances multiply, never
divide), so zero resistances are exact limits and no node is ever given an
infinite conductance.

1. Word-line ladder.  With the bit-line nodes of level ``i`` at voltages
   ``c_i``, the cell currents of word line ``i`` are
   ``x_i = Y_i (V_i 1 - c_i)`` where the Norton admittance ``Y_i`` (M x M,
   siemens) of the word line follows in O(M^2) from two ladder recurrences
   (left series impedance, right shunt admittance): its inverse nodal matrix
   is semiseparable.
2. Bit-line sweep.  Going down the bit lines, the network above level ``i``
   is a Norton equivalent ``d = q - K c`` (``K`` M x M siemens, ``q`` amperes
   per read).  Adding word line ``i`` gives ``P_i = K_{i-1} + Y_i``; passing
   the bit-line segment below it (resistance ``r``) gives
   ``K_i = (I + r P_i)^{-1} P_i`` and ``q_i = p_i - r K_i p_i``.  ``K_i`` is
   computed as ``P - r P (I + r P)^{-1} P`` by recursive 2 x 2 blocks (Schur
   complements; Cholesky on blocks of 16), so the work is matrix products and
   every correction is multiplied by ``r`` instead of subtracted from a large
   wire conductance.  The last level uses ``r_sense`` and its ``q`` is the
   vector of bit-line currents.  This block elimination is exact and costs
   O(N M^3) dense arithmetic (vectorizable over tiles); unlike the nodal
   (conductance) form it never subtracts nearly equal wire conductances, so
   float32 stays within a few 1e-6 of float64 up to 512 x 512 and wire-to-cell
   conductance ratios 1 to 1e10.
3. Iterative refinement (``refinement_steps``, default 0): the full state
   (every cell current) is recovered by back substitution, its residual is
   evaluated in the working dtype from the structured operator (cumulative
   sums along the wires) and a correction is solved with the same factors
   (float32: ~3e-7 after one step).
4. Gradients (``jax.grad`` w.r.t. conductances, resistances and voltages) use
   implicit differentiation: a custom VJP solves the adjoint system with the
   same factors; nothing is backpropagated through the elimination.  Forward
   mode (``jax.jvp``/``jacfwd``) is not supported.

Range
-----
Every resistance the solver accepts it solves to its dtype's accuracy, or it says
so.  Two quantities bound what a dtype can resolve:

* ``r x G_max`` (every resistance times the largest cell conductance) must stay
  below ``1 / eps^2`` (``RESISTANCE_CONDUCTANCE_MAX``: 7.0e13 in float32, 2.0e31
  in float64); beyond it a wire is an open circuit for all purposes.
* ``kappa = min(r_driver x max_i sum_j G_ij, (r_sense + (N - 1) r_wire_col) x
  max_j sum_i G_ij)`` (the array nearly floats: it is driven or sensed through a
  resistance that dwarfs the cells) must stay below ``KAPPA_MAX`` (1e3 in
  float32, 1e9 in float64); the relative error grows like ``eps x kappa``.

Concrete inputs outside the range raise ``ValueError`` naming the resistance and
the limit (and float64 when it would help).  Under ``jit`` the values are not
known, so an out-of-range crossbar, or a transfer matrix that fails the physical
bounds check (``T >= 0``, each word line's sensed currents at most its cells'
conductance sum), comes back as NaN: never as a plausible wrong number.  Inside
the range, the elimination keeps the transmission ``(I + r P)^{-1}`` in a
deviation form where ``r P`` is small and a direct, cancellation-free form where
it is large, and each crossbar is scaled by a power of two (exactly) so no
intermediate under- or overflows.

Shapes: conductance ``(..., N, M)`` where leading dimensions are a batch (tiles,
noise draws); resistances are scalars or arrays broadcastable to the batch
shape (so they can be traced and vmapped).  All functions are jit/vmap
friendly and follow the floating dtype of the conductance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "DEFAULT_LAYOUT",
    "LAYOUTS",
    "WireConfig",
    "transfer_matrix",
    "column_currents",
]

DEFAULT_LAYOUT = "driver_col0_sense_lastrow"
"""Word lines driven at column 0, bit lines sensed at row N-1 (FIELD.md sec. 3)."""

LAYOUTS = (
    "driver_col0_sense_lastrow",
    "driver_col0_sense_row0",
    "driver_lastcol_sense_lastrow",
    "driver_lastcol_sense_row0",
)
"""Supported layouts: where the word-line drivers and the bit-line sense ends sit."""

# Largest number of cell-current values (N * M * right-hand sides) held at once
# by the full-state solves used for refinement and gradients.
_STATE_ELEMENTS_PER_CHUNK = 1 << 24

KAPPA_MAX = {"float32": 1e3, "float64": 1e9}
"""Largest accepted floating-network index ``kappa`` per dtype (module docstring, "Range")."""

RESISTANCE_CONDUCTANCE_MAX = {"float32": float(1.0 / np.finfo(np.float32).eps ** 2),
                              "float64": float(1.0 / np.finfo(np.float64).eps ** 2)}
"""Largest accepted resistance x largest cell conductance per dtype (``1 / eps^2``)."""

# Tolerance of the physical bounds check of a transfer matrix (relative to the array's largest
# word-line conductance sum): 0 <= T and sum_j T[k, j] <= sum_j G[k, j].
_BOUNDS_TOLERANCE = 1e-3


# ---------------------------------------------------------------------------
# Configuration and input validation
# ---------------------------------------------------------------------------


def _check_resistance(name: str, value) -> None:
    """Raise ValueError unless ``value`` (ohms) is finite and >= 0 (skipped for tracers)."""
    if isinstance(value, jax.core.Tracer):
        return
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be a real number of ohms, got {value!r}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if np.any(array < 0):
        raise ValueError(f"{name} must be >= 0 ohms, got {value!r}")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown crossbar layout {layout!r}; known layouts: "
                         f"{', '.join(LAYOUTS)}")


@dataclass(frozen=True)
class WireConfig:
    """Parasitic resistances of a crossbar (ohms) and its layout.

    Attributes:
        r_wire_row_ohms: word-line wire resistance per cell segment.
        r_wire_col_ohms: bit-line wire resistance per cell segment.
        r_driver_ohms: output resistance of each word-line driver.
        r_sense_ohms: input resistance of each bit-line sense amplifier
            (virtual ground).
        layout: where drivers and sense amplifiers sit, one of ``LAYOUTS``.

    Frozen and hashable, so it can be a static argument of ``jax.jit``.  To
    trace or vmap over resistances, call :func:`transfer_matrix` with arrays.
    """

    r_wire_row_ohms: float = 1.0
    r_wire_col_ohms: float = 1.0
    r_driver_ohms: float = 0.0
    r_sense_ohms: float = 0.0
    layout: str = DEFAULT_LAYOUT

    def __post_init__(self):
        for name in ("r_wire_row_ohms", "r_wire_col_ohms", "r_driver_ohms", "r_sense_ohms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                                 np.floating)):
                raise ValueError(f"WireConfig.{name} must be a real number of ohms, "
                                 f"got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"WireConfig.{name} must be finite and >= 0 ohms, got {value!r}")
            object.__setattr__(self, name, float(value))
        _check_layout(self.layout)

    @property
    def resistances(self) -> tuple[float, float, float, float]:
        """``(r_wire_row, r_wire_col, r_driver, r_sense)`` in ohms."""
        return (self.r_wire_row_ohms, self.r_wire_col_ohms, self.r_driver_ohms, self.r_sense_ohms)

    @property
    def is_ideal(self) -> bool:
        """True when every resistance is zero (then ``T == G``)."""
        return all(r == 0.0 for r in self.resistances)

    def transfer_matrix(self, conductance_siemens, *, refinement_steps=0):
        """:func:`transfer_matrix` with these wires."""
        return transfer_matrix(conductance_siemens, *self.resistances, layout=self.layout,
                               refinement_steps=refinement_steps)

    def column_currents(self, conductance_siemens, voltages, *, refinement_steps=0):
        """:func:`column_currents` with these wires."""
        return column_currents(conductance_siemens, voltages, *self.resistances,
                               layout=self.layout, refinement_steps=refinement_steps)


def _working_dtype(conductance):
    dtype = jnp.result_type(conductance)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    if np.dtype(dtype).name not in KAPPA_MAX:
        raise ValueError(f"conductance of dtype {np.dtype(dtype).name} is not supported: the "
                         f"solver works in float32 or float64 (convert the array)")
    return dtype


def _prepare_conductance(conductance_siemens):
    """Validate the conductance array (siemens) and return it as a float jax array."""
    if isinstance(conductance_siemens, (list, tuple)):
        try:
            conductance_siemens = np.asarray(conductance_siemens)
        except ValueError as error:
            raise ValueError(f"conductance must be a rectangular array of shape (..., N, M): "
                             f"{error}") from None
    shape = np.shape(conductance_siemens)
    if len(shape) < 2:
        raise ValueError(f"conductance must have shape (..., N, M) with N, M >= 1, "
                         f"got shape {shape}")
    if shape[-2] < 1 or shape[-1] < 1:
        raise ValueError(f"conductance needs at least one word line and one bit line, "
                         f"got shape {shape}")
    if not isinstance(conductance_siemens, jax.core.Tracer):
        array = np.asarray(conductance_siemens)
        if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.floating)
                                          or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"conductance must be real, got dtype {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise ValueError("conductance contains NaN or inf")
        if np.any(array < 0):
            raise ValueError(f"conductance must be >= 0 siemens, smallest value is "
                             f"{array.min()!r}")
    dtype = _working_dtype(conductance_siemens)
    return jnp.asarray(conductance_siemens, dtype)


def _prepare_resistances(batch_shape, dtype, r_wire_row, r_wire_col, r_driver, r_sense):
    """Validate the four resistances (ohms); return them as arrays of ``dtype``.

    Each must broadcast with ``batch_shape`` (the conductance's batch shape).
    """
    names = ("r_wire_row", "r_wire_col", "r_driver", "r_sense")
    values = (r_wire_row, r_wire_col, r_driver, r_sense)
    arrays = []
    for name, value in zip(names, values):
        if isinstance(value, WireConfig):
            raise ValueError(f"{name} got a WireConfig; use WireConfig.transfer_matrix or "
                             "pass *wires.resistances")
        _check_resistance(name, value)
        array = jnp.asarray(value, dtype)
        try:
            np.broadcast_shapes(array.shape, batch_shape)
        except ValueError:
            raise ValueError(f"{name} of shape {array.shape} does not broadcast with the batch "
                             f"shape {batch_shape} of the conductance") from None
        arrays.append(array)
    return arrays


def _is_concrete(*values) -> bool:
    return not any(isinstance(value, jax.core.Tracer) for value in values)


def _check_range(conductance, resistances) -> None:
    """Raise ValueError when concrete inputs lie outside the accepted range (module docstring).

    ``conductance``: (..., N, M) siemens in the working dtype; ``resistances``: the four
    arrays ``r_wire_row, r_wire_col, r_driver, r_sense`` (ohms), broadcastable to the batch.
    Skipped when any of them is traced (then out-of-range crossbars give NaN instead).
    """
    if not _is_concrete(conductance, *resistances):
        return
    dtype = np.dtype(conductance.dtype).name
    g = np.asarray(conductance, np.float64)
    n_rows = g.shape[-2]
    r_row, r_col, r_driver, r_sense = (np.asarray(r, np.float64) for r in resistances)
    g_max = g.max(axis=(-2, -1))
    names = ("r_wire_row", "r_wire_col", "r_driver", "r_sense")
    limit = RESISTANCE_CONDUCTANCE_MAX[dtype]
    for name, r in zip(names, (r_row, r_col, r_driver, r_sense)):
        product = np.broadcast_to(r * g_max, np.broadcast_shapes(r.shape, g_max.shape))
        if np.any(product > limit):
            index = np.unravel_index(np.argmax(product), product.shape)
            value = float(np.broadcast_to(r, product.shape)[index])
            largest = float(np.broadcast_to(g_max, product.shape)[index])
            raise ValueError(
                f"{name} = {value:.3g} ohm is outside the accepted range in {dtype}: "
                f"{name} x largest cell conductance ({largest:.3g} S) = "
                f"{value * largest:.3g} must be <= {limit:.3g} (1/eps^2), i.e. {name} <= "
                f"{limit / largest:.3g} ohm for this array (beyond that the wire is an open "
                f"circuit for all purposes{'' if dtype == 'float64' else '; float64 allows up to ' + format(RESISTANCE_CONDUCTANCE_MAX['float64'], '.3g')})")
    word_line_sum = g.sum(axis=-1).max(axis=-1)
    bit_line_sum = g.sum(axis=-2).max(axis=-1)
    drive = r_driver * word_line_sum
    bit_path = r_sense + (n_rows - 1) * r_col
    sense = bit_path * bit_line_sum
    kappa = np.minimum(drive, sense)
    kappa_max = KAPPA_MAX[dtype]
    if np.any(kappa > kappa_max):
        index = np.unravel_index(np.argmax(kappa), kappa.shape)
        at = lambda array: float(np.broadcast_to(array, kappa.shape)[index])  # noqa: E731
        where = f" (batch element {tuple(int(i) for i in index)})" if kappa.ndim else ""
        raise ValueError(
            f"r_driver = {at(r_driver):.3g} ohm together with r_sense = {at(r_sense):.3g} ohm "
            f"and r_wire_col = {at(r_col):.3g} ohm is outside the range the solver resolves "
            f"in {dtype}{where}: the array is driven and sensed through so much resistance "
            f"that it nearly floats, kappa = min(r_driver x {at(word_line_sum):.3g} S, "
            f"(r_sense + {n_rows - 1} r_wire_col) x {at(bit_line_sum):.3g} S) = "
            f"{at(kappa):.3g} > {kappa_max:.3g} (largest word-line and bit-line conductance "
            f"sums; the relative error grows like eps x kappa). Keep r_driver <= "
            f"{kappa_max / max(at(word_line_sum), 1e-300):.3g} ohm or r_sense + "
            f"{n_rows - 1} r_wire_col <= {kappa_max / max(at(bit_line_sum), 1e-300):.3g} ohm"
            + ("" if dtype == "float64" else
               f", or solve in float64 (kappa <= {KAPPA_MAX['float64']:.3g})"))


def _scaled(conductance, resistances):
    """Rescale each crossbar by a power of two ``s`` near its largest conductance.

    ``T(G, r) = s T(G / s, r s)``; with ``s = 2^k`` every operation of the solver
    sees the same mantissas (it is homogeneous in siemens and ohms), so the result
    is bit-for-bit unchanged unless an intermediate would have under- or
    overflowed: the scaling only moves the exponent range to where it is safe.
    Returns the scaled conductance, resistances and ``s`` (batch shape).
    """
    g_max = jnp.max(conductance, axis=(-2, -1))
    _, exponent = jnp.frexp(g_max)
    scale = jnp.where(g_max > 0, jnp.ldexp(jnp.ones_like(g_max), exponent), 1.0)
    scale = lax.stop_gradient(scale)
    return conductance / scale[..., None, None], resistances * scale[..., None], scale


def _in_range(conductance, resistances):
    """Traced form of :func:`_check_range`: True for crossbars inside the accepted range."""
    dtype = np.dtype(conductance.dtype).name
    n_rows = conductance.shape[-2]
    r_row, r_col, r_driver, r_sense = jnp.moveaxis(resistances, -1, 0)
    g_max = jnp.max(conductance, axis=(-2, -1))
    kappa = jnp.minimum(r_driver * jnp.max(jnp.sum(conductance, -1), -1),
                        (r_sense + (n_rows - 1) * r_col) * jnp.max(jnp.sum(conductance, -2), -1))
    product = jnp.max(resistances, axis=-1) * g_max
    return (kappa <= KAPPA_MAX[dtype]) & (product <= RESISTANCE_CONDUCTANCE_MAX[dtype])


def _within_bounds(conductance, transfer):
    """Physical bounds of a transfer matrix: ``T >= 0`` and ``sum_j T[k] <= sum_j G[k]``.

    Every node voltage lies between 0 V and the driving volt, so no bit line draws a
    negative current and the sensed currents of a word line cannot exceed what its
    cells could carry at 1 V.  A cheap check (``O(N M)``) against gross failures.
    """
    row_conductance = jnp.sum(conductance, axis=-1)
    slack = _BOUNDS_TOLERANCE * jnp.max(row_conductance, axis=-1)[..., None]
    lower = jnp.all(transfer >= -slack[..., None], axis=(-2, -1))
    upper = jnp.all(jnp.sum(transfer, axis=-1) <= row_conductance + slack, axis=-1)
    return lower & upper


# ---------------------------------------------------------------------------
# Word-line ladder (one crossbar, all word lines at once)
# ---------------------------------------------------------------------------


class _WordLineLadder(NamedTuple):
    """Per-node quantities of every word line, each of shape (N, M).

    transmission: ``t_j`` = voltage ratio node j / node j-1 (node -1 = source)
        when the rest of the line is loaded by its cells (dimensionless, in (0, 1]).
    attenuation_high, attenuation_low: ``S_j = sum_{l <= j} log t_l`` (nepers,
        <= 0) as an unevaluated sum high + low (compensated summation), so that
        differences ``S_j - S_k`` keep full relative precision even when
        ``|S_j|`` is large.
    self_response: ``v_j`` = voltage at node j per ampere injected there, with
        the source and all bit-line nodes at 0 V (ohms).
    cell_self_admittance: diagonal of the Norton admittance ``Y`` (siemens).
    unit_source_current: cell currents with a 1 V source and bit lines at 0 V
        (siemens), i.e. the row sums of ``Y``.
    segment_resistance: ``rho_j``: driver at j = 0, word-line wire after (ohms),
        shape (M,).
    """

    transmission: jax.Array
    attenuation_high: jax.Array
    attenuation_low: jax.Array
    self_response: jax.Array
    cell_self_admittance: jax.Array
    unit_source_current: jax.Array
    segment_resistance: jax.Array


def _word_line_ladder(conductance, r_wire_row, r_driver) -> _WordLineLadder:
    """Ladder recurrences of all word lines of one crossbar (conductance (N, M), siemens).

    With the bit-line nodes and the source at 0 V, each word line is a ladder
    of series segments ``rho_j`` and shunt cells ``G_j``.  Right to left: the
    admittance ``A_j`` (siemens) seen from node j into the line beyond it;
    the transmission ``t_j = 1 / (1 + rho_j (G_j + A_j))``.  Left to right: the
    series impedance (ohms) seen from node j towards the source.  Everything
    is a ratio of the form ``x / (1 + y)`` with ``x, y >= 0``: zero resistances
    are exact and nothing is divided by a resistance.
    """
    n_rows, n_cols = conductance.shape
    dtype = conductance.dtype
    segment = jnp.full((n_cols,), r_wire_row, dtype).at[0].set(r_driver)
    cells_by_column = conductance.T  # (M, N): scan over the bit-line index j

    # Right to left: admittance looking right from node j (excluding its cell).
    def right_step(right_admittance, inputs):
        cell, rho = inputs
        loss = rho * (cell + right_admittance)         # rho_j A'_j, dimensionless
        transmission = 1.0 / (1.0 + loss)
        return (cell + right_admittance) * transmission, (right_admittance, loss)

    _, (right_admittance, loss) = lax.scan(
        right_step, jnp.zeros((n_rows,), dtype), (cells_by_column, segment), reverse=True)

    # Left to right: series impedance looking left from node j towards the
    # (shorted) source, excluding its cell; compensated sum of log t.
    def left_step(carry, inputs):
        left_of_segment, high, compensation = carry
        cell, rho, node_loss = inputs
        left_impedance = rho + left_of_segment
        term = -jnp.log1p(node_loss) - compensation
        total = high + term
        compensation = (total - high) - term
        carry = (left_impedance / (1.0 + cell * left_impedance), total, compensation)
        return carry, (left_impedance, total, -compensation)

    zeros = jnp.zeros((n_rows,), dtype)
    _, (left_impedance, high, low) = lax.scan(left_step, (zeros, zeros, zeros),
                                              (cells_by_column, segment, loss))

    right_admittance, loss = right_admittance.T, loss.T
    left_impedance, high, low = left_impedance.T, high.T, low.T
    denominator = 1.0 + left_impedance * (conductance + right_admittance)
    return _WordLineLadder(
        transmission=1.0 / (1.0 + loss),
        attenuation_high=high,
        attenuation_low=low,
        self_response=left_impedance / denominator,
        cell_self_admittance=conductance * (1.0 + left_impedance * right_admittance) / denominator,
        unit_source_current=conductance * jnp.exp(high + low),
        segment_resistance=segment,
    )


def _word_line_admittance(cells, attenuation_high, attenuation_low, self_response,
                          cell_self_admittance):
    """Dense Norton admittance ``Y`` (M x M, siemens) of one word line.

    ``Y = diag(G) - diag(G) L^{-1} diag(G)`` where ``L^{-1}[j, k]`` (ohms) is
    the voltage at node j per ampere injected at node k with the source and
    the bit lines at 0 V: ``L^{-1}[j, k] = v_k exp(S_j - S_k)`` for ``j >= k``
    (symmetric).  ``S`` is non-increasing, so
    ``L^{-1}[j, k] = v_min(j,k) exp(-|S_j - S_k|)``, every exponential <= 1,
    and the compensated ``S`` keeps the differences accurate.  The diagonal
    of ``Y`` comes from the ladder directly (no cancellation).
    """
    index = jnp.arange(cells.shape[0])
    difference = ((attenuation_high[:, None] - attenuation_high[None, :])
                  + (attenuation_low[:, None] - attenuation_low[None, :]))
    nearer = jnp.where(index[:, None] >= index[None, :], self_response[None, :],
                       self_response[:, None])
    response = nearer * jnp.exp(-jnp.abs(difference))
    admittance = -(cells[:, None] * response * cells[None, :])
    return jnp.where(index[:, None] == index[None, :], cell_self_admittance[None, :], admittance)


def _word_line_voltages(ladder: _WordLineLadder, source_voltage, injection):
    """Word-line node voltages (volts) for given sources and cell-branch injections.

    Two sequential passes along every word line (vectorized over word lines
    and reads): right to left the Norton current ``J_j = b_j + t_{j+1} J_{j+1}``
    of the line beyond node j, then left to right
    ``v_j = t_j (v_{j-1} - rho_j J_j)`` from ``v_{-1}`` = source voltage.

    Args:
        ladder: the word-line ladder of the crossbar.
        source_voltage: (N, B) driver source voltages (volts) per read.
        injection: (N, M, B) current (amperes) leaving each word-line node
            through its cell branch in addition to ``G * v_node``.

    Returns:
        (N, M, B) node voltages.
    """
    by_column = jnp.moveaxis(injection, 1, 0)                  # (M, N, B)
    transmission = ladder.transmission.T[:, :, None]           # (M, N, 1)
    next_transmission = jnp.concatenate([transmission[1:], jnp.zeros_like(transmission[:1])])

    def right_to_left(beyond, inputs):
        local, trans_next = inputs
        norton = local + trans_next * beyond
        return norton, norton

    _, norton = lax.scan(right_to_left, jnp.zeros_like(by_column[0]),
                         (by_column, next_transmission), reverse=True)

    def left_to_right(previous, inputs):
        trans, rho, current = inputs
        voltage = trans * (previous - rho * current)
        return voltage, voltage

    _, voltage = lax.scan(left_to_right, source_voltage,
                          (transmission, ladder.segment_resistance, norton))
    return jnp.moveaxis(voltage, 0, 1)


# ---------------------------------------------------------------------------
# Structured operator (residual) in resistance form
# ---------------------------------------------------------------------------


def _cumulative_sum(values, reverse=False):
    """Cumulative sum over the leading axis (a sequential scan over whole slices)."""

    def accumulate(total, local):
        total = total + local
        return total, total

    return lax.scan(accumulate, jnp.zeros_like(values[0]), values, reverse=reverse)[1]


def _wire_currents(cell_current):
    """Currents (amperes) in every wire segment implied by the cell currents (N, M, B).

    Returns ``(word, bit)``: ``word[i, j]`` flows away from the driver through
    the word-line segment on the driver side of node (i, j) (``j = 0``: the
    driver resistance itself); ``bit[i, j]`` flows towards the sense end
    through the bit-line segment below node (i, j) (``i = N-1``: the sense
    resistance).
    """
    by_column = jnp.moveaxis(cell_current, 1, 0)
    word = jnp.moveaxis(_cumulative_sum(by_column, reverse=True), 0, 1)
    return word, _cumulative_sum(cell_current)


def _bit_line_segment_resistance(resistances, n_rows, dtype):
    """(N,) resistance below each level: bit-line wire, then the sense resistance (ohms)."""
    return jnp.full((n_rows,), resistances[1], dtype).at[n_rows - 1].set(resistances[3])


def _segment_resistances(resistances, n_rows, n_cols, dtype):
    """(M,) word-line segments (driver first) and (N,) bit-line segments (sense last), ohms."""
    word = jnp.full((n_cols,), resistances[0], dtype).at[0].set(resistances[2])
    return word, _bit_line_segment_resistance(resistances, n_rows, dtype)


def _cell_voltages(conductance, resistances, source_voltage, cell_current):
    """Word-line and bit-line node voltages implied by the cell currents.

    Args:
        conductance: (N, M) siemens (only for shape/dtype).
        resistances: (4,) ``r_wire_row, r_wire_col, r_driver, r_sense`` ohms.
        source_voltage: (N, B) volts.
        cell_current: (N, M, B) amperes, word line to bit line.

    Returns:
        (word-line node voltages, bit-line node voltages), each (N, M, B) volts.
    """
    n_rows, n_cols = conductance.shape
    word_segment, bit_segment = _segment_resistances(resistances, n_rows, n_cols,
                                                     conductance.dtype)
    word_current, bit_current = _wire_currents(cell_current)
    word_drop = _cumulative_sum(jnp.moveaxis(word_segment[None, :, None] * word_current, 1, 0))
    bit_voltage = _cumulative_sum(bit_segment[:, None, None] * bit_current, reverse=True)
    return source_voltage[:, None, :] - jnp.moveaxis(word_drop, 0, 1), bit_voltage


def _residual(conductance, resistances, source_voltage, injection, cell_current):
    """KCL residual (amperes) of the cell currents: ``S + G (v_word - v_bit) - x``."""
    word_voltage, bit_voltage = _cell_voltages(conductance, resistances, source_voltage,
                                               cell_current)
    return injection + conductance[:, :, None] * (word_voltage - bit_voltage) - cell_current


# ---------------------------------------------------------------------------
# Bit-line sweep
# ---------------------------------------------------------------------------


# Blocks of at most this many bit lines are eliminated by a Cholesky factorization; larger
# ones by recursive halving, which turns the work into matrix products.  (Small LAPACK
# calls also stay single-threaded, which avoids oversubscribing the CPU from XLA threads.)
_CHOLESKY_BLOCK = 16


class _Transmission(NamedTuple):
    """``T = (I + r P)^{-1}`` of a bit-line segment as ``diag(identity) + deviation``.

    identity: (M,) 1 where bit line j is stored in deviation form (``r K_jj < 1/2``:
        row j of ``deviation`` is ``-r K`` row j, so ``T p = p - r K p`` adds a small
        correction to ``p`` and never stores a number near 1), 0 where it is stored
        directly (row j of ``deviation`` is row j of ``T``, all >= 0).
    deviation: (M, M) the rest (dimensionless); off the diagonal it is ``T`` itself.

    Either form is exact; the choice only decides which rounding errors are made:
    the deviation form is unbiased when ``T ~ I`` (no drift over hundreds of
    levels), the direct form does not cancel when ``r P >> 1``.
    """

    identity: jax.Array
    deviation: jax.Array

    def apply(self, currents):
        """``T @ currents`` for currents of shape (M, B)."""
        return self.identity[:, None] * currents + self.deviation @ currents

    def apply_right(self, matrix):
        """``matrix @ T`` for a matrix of shape (B, M) (no transposes: cheap under vmap)."""
        return matrix * self.identity[None, :] + matrix @ self.deviation


def _through_segment(admittance, r):
    """Norton admittance and transmission seen through a series resistance on every bit line.

    For a symmetric positive semidefinite admittance ``P`` (M x M, siemens) and a
    resistance ``r`` >= 0 (ohms) returns ``(K, T)``: the transmission
    ``T = (I + r P)^{-1}`` (dimensionless, a :class:`_Transmission`) and
    ``K = T P = (I + r P)^{-1} P``; exactly ``(P, I)`` when ``r = 0``.  The Norton
    current through the segment is ``T p``.

    No subtraction cancels in either regime.  ``K = P - r P T P`` and ``T = I - r K``
    are the accurate forms while ``r P`` is small, but lose ``log10(r |P|)`` digits
    once ``r |P| >> 1`` (large sense, driver or wire resistances); there
    ``T = W^T W`` (``W = L^{-1}``, ``L L^T = I + r P``, a sum of non-negative terms)
    and ``K = (I - T) / r`` are used instead, bit line by bit line (see
    :class:`_Transmission`).  Recursive 2 x 2 block form, with
    ``P = [[A, C], [C^T, D]]``: ``(K_A, T_A)`` of ``A``; ``E = T_A C`` and
    ``F = r E``; the Schur complement ``S = D - C^T F``; ``(K_S, T_S)`` of ``S``;
    ``X = E T_S`` (the off-diagonal block of ``K``) and ``X F^T = r E T_S E^T``; then
    ``K = [[K_A - X F^T, X], [X^T, K_S]]`` and
    ``T = [[T_A + r X F^T, -r X], [-r X^T, T_S]]`` (four half-size products per
    level of recursion, as in the purely subtractive form).  ``r`` only multiplies
    quantities that it makes small or dimensionless, so nothing overflows for large
    resistances.  Blocks of up to ``_CHOLESKY_BLOCK`` use the Cholesky factor
    directly.  The results are symmetric up to rounding (the leaf factorizations
    read only the lower triangle).
    """
    size = admittance.shape[-1]
    dtype = admittance.dtype
    if size <= _CHOLESKY_BLOCK:
        identity = jnp.eye(size, dtype=dtype)
        lower = lax.linalg.cholesky(identity + r * admittance, symmetrize_input=False)
        solved = lax.linalg.triangular_solve(
            lower, jnp.concatenate([identity, admittance], axis=1), left_side=True,
            lower=True)                                    # [W, Z] = [L^{-1}, L^{-1} P]
        products = solved.T @ solved                       # [[W^T W, W^T Z], [., Z^T Z]]
        transmission = products[:size, :size]             # T = W^T W
        subtractive = admittance - r * products[size:, size:]        # P - r Z^T Z
        # diagonals by masked sums: jnp.diagonal is a gather, slow under vmap on CPU
        deviation_diagonal = jnp.sum(identity * transmission, axis=-1)
        small = deviation_diagonal > 0.5                    # r K_jj < 1/2
        safe_r = jnp.where(r > 0, r, jnp.ones_like(r))
        direct = (identity - transmission) / safe_r        # (I - T) / r
        both_small = small[:, None] & small[None, :]
        admittance_through = jnp.where(both_small, subtractive, direct)
        deviation = jnp.where(
            identity.astype(bool),
            jnp.where(small, -r * jnp.sum(identity * subtractive, axis=-1),
                      deviation_diagonal)[:, None],
            transmission)
        return admittance_through, _Transmission(small.astype(dtype), deviation)
    half = size // 2
    leading, coupling = admittance[:half, :half], admittance[:half, half:]
    leading_admittance, leading_transmission = _through_segment(leading, r)
    coupling_through = leading_transmission.apply(coupling)           # E = T_A C
    scaled_coupling = r * coupling_through                            # F = r E
    trailing_admittance, trailing_transmission = _through_segment(
        admittance[half:, half:] - coupling.T @ scaled_coupling, r)
    off_diagonal = trailing_transmission.apply_right(coupling_through)  # X = E T_S
    correction = off_diagonal @ scaled_coupling.T                     # X F^T
    admittance_through = jnp.block([[leading_admittance - correction, off_diagonal],
                                    [off_diagonal.T, trailing_admittance]])
    off_transmission = -r * off_diagonal
    deviation = jnp.block([[leading_transmission.deviation + r * correction, off_transmission],
                           [off_transmission.T, trailing_transmission.deviation]])
    identity = jnp.concatenate([leading_transmission.identity,
                                trailing_transmission.identity])
    return admittance_through, _Transmission(identity, deviation)


def _level_inputs(conductance, resistances, ladder):
    """Per-level scan inputs: cells, ladder quantities and the segment below each level."""
    n_rows = conductance.shape[0]
    return (conductance, ladder.attenuation_high, ladder.attenuation_low, ladder.self_response,
            ladder.cell_self_admittance,
            _bit_line_segment_resistance(resistances, n_rows, conductance.dtype))


def _level_update(norton_admittance, inputs):
    """Add word line i to the Norton admittance above it, then pass the bit-line segment below.

    Returns ``(K_i, T_i)``: the Norton admittance (M x M, siemens) below the segment
    and its transmission ``T_i = (I + r P_i)^{-1}``; the Norton current follows as
    ``q_i = T_i p_i``.
    """
    cells, high, low, self_response, self_admittance, segment = inputs
    combined = norton_admittance + _word_line_admittance(cells, high, low, self_response,
                                                         self_admittance)
    # materialize P once: otherwise XLA may fuse (and recompute) the exponentials of Y
    # into each block that the recursion slices out of P
    return _through_segment(lax.optimization_barrier(combined), segment)


def _forward_currents(conductance, resistances, voltages):
    """Bit-line currents (B, M) for word-line voltages (N, B), without refinement.

    One sweep down the bit lines carrying ``K`` (M x M) and the Norton current
    ``q`` (M x B, amperes) of every read.
    """
    n_cols = conductance.shape[1]
    dtype = conductance.dtype
    ladder = _word_line_ladder(conductance, resistances[0], resistances[2])

    def level(state, inputs):
        norton_admittance, norton_current = state
        unit_current, drive = inputs[-2:]
        next_admittance, transmission = _level_update(norton_admittance, inputs[:-2])
        current = norton_current + unit_current[:, None] * drive[None, :]
        return (next_admittance, transmission.apply(current)), None

    init = (jnp.zeros((n_cols, n_cols), dtype), jnp.zeros((n_cols, voltages.shape[1]), dtype))
    inputs = _level_inputs(conductance, resistances, ladder) + (ladder.unit_source_current,
                                                                voltages)
    (_, currents), _ = lax.scan(level, init, inputs)
    return currents.T


def _forward_transfer(conductance, resistances):
    """Transfer matrix (N, M) without refinement: the sweep with one read per word line."""
    identity = jnp.eye(conductance.shape[0], dtype=conductance.dtype)
    return _forward_currents(conductance, resistances, identity)


class _Factors(NamedTuple):
    """Stored bit-line elimination of one crossbar (for full-state solves).

    admittance_below: (N, M, M) ``K_i`` (siemens), the levels <= i seen through
        the bit-line segment below level i.
    transmission_below: ``T_i = (I + r_i P_i)^{-1}`` (dimensionless) of the same
        segment, a :class:`_Transmission` with leading axis N.  ``2 N M^2``
        values in all: the memory cost of refinement and gradients.
    """

    ladder: _WordLineLadder
    admittance_below: jax.Array
    transmission_below: _Transmission


def _factorize(conductance, resistances) -> _Factors:
    """The sweep of :func:`_forward_currents` without reads, keeping every ``K_i``."""
    n_cols = conductance.shape[1]
    ladder = _word_line_ladder(conductance, resistances[0], resistances[2])

    def level(norton_admittance, inputs):
        next_admittance, transmission = _level_update(norton_admittance, inputs)
        return next_admittance, (next_admittance, transmission)

    _, (admittance, transmission) = lax.scan(
        level, jnp.zeros((n_cols, n_cols), conductance.dtype),
        _level_inputs(conductance, resistances, ladder))
    return _Factors(ladder, admittance, transmission)


def _solve_state(factors: _Factors, conductance, resistances, source_voltage, injection):
    """Cell currents (N, M, B) solving ``x = S + G (v_word - v_bit)`` with stored factors.

    Args:
        source_voltage: (N, B) driver voltages (volts).
        injection: (N, M, B) current sources (amperes) in parallel with the cells.
    """
    n_rows = conductance.shape[0]
    dtype = conductance.dtype
    cells = conductance[:, :, None]
    bit_segment = _bit_line_segment_resistance(resistances, n_rows, dtype)
    # Cell currents with every bit-line node at 0 V.
    word_voltage = _word_line_voltages(factors.ladder, source_voltage, injection)
    short_circuit = injection + cells * word_voltage

    def down(current_above, inputs):
        transmission, level_current = inputs
        return transmission.apply(current_above + level_current), current_above

    sense_current, current_above = lax.scan(
        down, jnp.zeros_like(short_circuit[0]), (factors.transmission_below, short_circuit))
    admittance_above = jnp.concatenate(
        [jnp.zeros_like(factors.admittance_below[:1]), factors.admittance_below[:-1]])

    def up(bit_voltage, inputs):
        admittance, current_in, segment_above = inputs
        # bit_voltage: level i; carry out the voltage of level i-1 (top level: unused).
        segment_current = current_in - admittance @ bit_voltage
        return bit_voltage + segment_above * segment_current, bit_voltage

    bottom_voltage = resistances[3] * sense_current
    segment_above = jnp.concatenate([jnp.zeros((1,), dtype), bit_segment[:-1]])
    _, bit_voltage = lax.scan(up, bottom_voltage,
                              (admittance_above, current_above, segment_above), reverse=True)
    word_voltage = _word_line_voltages(factors.ladder, source_voltage,
                                       injection - cells * bit_voltage)
    return injection + cells * (word_voltage - bit_voltage)


def _refined_state(factors, conductance, resistances, source_voltage, injection, steps):
    """Full state with ``steps`` rounds of iterative refinement.

    Round 0 solves with the given sources; every later round evaluates the
    residual ``S + G (v_word - v_bit) - x`` in the working dtype and adds the
    solution of the same system driven by it (one copy of the solve in the
    compiled loop).
    """
    if steps == 0:
        return _solve_state(factors, conductance, resistances, source_voltage, injection)

    def round_(index, cell_current):
        first = index == 0
        residual = _residual(conductance, resistances, source_voltage, injection, cell_current)
        return cell_current + _solve_state(
            factors, conductance, resistances, jnp.where(first, source_voltage, 0.0),
            jnp.where(first, injection, residual))

    return lax.fori_loop(0, steps + 1, round_, jnp.zeros_like(injection))


def _map_over_reads(function, n_rows, n_cols, *arrays):
    """Apply ``function`` to chunks of reads (last axis of every array), one chunk at a time.

    Bounds the memory of full-state solves to about ``_STATE_ELEMENTS_PER_CHUNK``
    cell currents per array; the last chunk is padded with zero reads.
    Returns the stacked per-chunk outputs and the number of reads.
    """
    n_reads = arrays[0].shape[-1]
    chunk = max(1, min(n_reads, _STATE_ELEMENTS_PER_CHUNK // (n_rows * n_cols)))
    n_chunks = -(-n_reads // chunk)
    stacked = []
    for array in arrays:
        pad = [(0, 0)] * (array.ndim - 1) + [(0, n_chunks * chunk - n_reads)]
        array = jnp.pad(array, pad).reshape(array.shape[:-1] + (n_chunks, chunk))
        stacked.append(jnp.moveaxis(array, -2, 0))
    return lax.map(lambda chunk_arrays: function(*chunk_arrays), tuple(stacked)), n_reads


def _refined_currents(conductance, resistances, voltages, steps):
    """Bit-line currents (B, M) with ``steps`` refinement steps (voltages (N, B))."""
    n_rows, n_cols = conductance.shape
    factors = _factorize(conductance, resistances)

    def per_chunk(chunk_voltages):
        injection = jnp.zeros((n_rows, n_cols, chunk_voltages.shape[-1]), conductance.dtype)
        state = _refined_state(factors, conductance, resistances, chunk_voltages, injection, steps)
        return jnp.sum(state, axis=0).T  # (chunk, M): a bit line collects all its cell currents

    per_chunk_currents, n_reads = _map_over_reads(per_chunk, n_rows, n_cols, voltages)
    return per_chunk_currents.reshape(-1, n_cols)[:n_reads]


# ---------------------------------------------------------------------------
# Differentiable core (one crossbar) with an implicit (adjoint) VJP
# ---------------------------------------------------------------------------


def _implicit_gradients(conductance, resistances, voltages, cotangent, steps):
    """VJP of the bit-line currents by the adjoint method.

    The cell currents solve ``x = G (v_word(x) - v_bit(x))``, i.e.
    ``A x = G V`` with ``A = I + G R`` (``R``: the symmetric operator mapping
    cell currents to wire voltage drops); the bit-line currents are column
    sums of ``x``.  With the state cotangent ``g`` (the bit-line cotangent
    broadcast over word lines) the adjoint is
    ``lambda = A^{-T} g = g - R A^{-1} (G g)``: one more solve with the same
    factors, done together with the forward one.  Then, with ``mu = G lambda``
    and the wire currents ``h`` of ``x`` and ``H`` of ``mu``:
    ``dL/dG = sum over reads of lambda (v_word - v_bit)``,
    ``dL/dV = sum over bit lines of mu`` and ``dL/dr = -sum h H`` over the
    segments of each resistance.

    Args:
        voltages: (N, B) word-line voltages; cotangent: (M, B).

    Returns:
        gradients w.r.t. conductance (N, M), resistances (4,) and voltages (N, B).
    """
    n_rows, n_cols = conductance.shape
    dtype = conductance.dtype
    factors = _factorize(conductance, resistances)
    cells = conductance[:, :, None]

    def per_chunk(chunk_voltages, chunk_cotangent):
        n_chunk = chunk_voltages.shape[-1]
        state_cotangent = jnp.broadcast_to(chunk_cotangent[None], (n_rows, n_cols, n_chunk))
        # forward reads and adjoint right-hand sides solved as one batch of reads
        sources = jnp.concatenate([chunk_voltages, jnp.zeros_like(chunk_voltages)], axis=-1)
        injection = jnp.concatenate([jnp.zeros_like(state_cotangent), cells * state_cotangent],
                                    axis=-1)
        solution = _refined_state(factors, conductance, resistances, sources, injection, steps)
        word_voltage, bit_voltage = _cell_voltages(conductance, resistances, sources, solution)
        drop = word_voltage - bit_voltage
        state, cell_drop = solution[..., :n_chunk], drop[..., :n_chunk]
        # for the adjoint reads (no sources) the drop v_word - v_bit is -R u
        adjoint = state_cotangent + drop[..., n_chunk:]
        weighted = cells * adjoint
        word_current, bit_current = _wire_currents(state)
        word_adjoint, bit_adjoint = _wire_currents(weighted)
        word_product = jnp.sum(word_current * word_adjoint, axis=(0, 2))   # per segment (M,)
        bit_product = jnp.sum(bit_current * bit_adjoint, axis=(1, 2))      # per segment (N,)
        grad_resistances = -jnp.stack([jnp.sum(word_product[1:]), jnp.sum(bit_product[:-1]),
                                       word_product[0], bit_product[-1]])
        return (jnp.sum(adjoint * cell_drop, axis=-1), grad_resistances.astype(dtype),
                jnp.sum(weighted, axis=1))

    (grad_conductance, grad_resistances, grad_voltages), n_reads = _map_over_reads(
        per_chunk, n_rows, n_cols, voltages, cotangent)
    grad_voltages = jnp.moveaxis(grad_voltages, 0, -2).reshape(n_rows, -1)[:, :n_reads]
    return jnp.sum(grad_conductance, 0), jnp.sum(grad_resistances, 0), grad_voltages


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _crossbar_currents(conductance, resistances, voltages, steps):
    """Bit-line currents (M, B) of one crossbar (N, M) for word-line voltages (N, B)."""
    if steps == 0:
        return _forward_currents(conductance, resistances, voltages).T
    return _refined_currents(conductance, resistances, voltages, steps).T


def _crossbar_currents_forward(conductance, resistances, voltages, steps):
    return (_crossbar_currents(conductance, resistances, voltages, steps),
            (conductance, resistances, voltages))


def _crossbar_currents_backward(steps, residuals, cotangent):
    return _implicit_gradients(*residuals, cotangent, steps)


_crossbar_currents.defvjp(_crossbar_currents_forward, _crossbar_currents_backward)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _crossbar_transfer(conductance, resistances, steps):
    """Transfer matrix (N, M) of one crossbar."""
    if steps == 0:
        return _forward_transfer(conductance, resistances)
    identity = jnp.eye(conductance.shape[0], dtype=conductance.dtype)
    return _refined_currents(conductance, resistances, identity, steps)


def _crossbar_transfer_forward(conductance, resistances, steps):
    return _crossbar_transfer(conductance, resistances, steps), (conductance, resistances)


def _crossbar_transfer_backward(steps, residuals, cotangent):
    conductance, resistances = residuals
    identity = jnp.eye(conductance.shape[0], dtype=conductance.dtype)
    grad_conductance, grad_resistances, _ = _implicit_gradients(
        conductance, resistances, identity, cotangent.T, steps)
    return grad_conductance, grad_resistances


_crossbar_transfer.defvjp(_crossbar_transfer_forward, _crossbar_transfer_backward)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def _flip_for_layout(array, layout, row_axis, column_axis):
    """Mirror an array between ``layout`` and the canonical layout (self-inverse)."""
    if "sense_row0" in layout and row_axis is not None:
        array = jnp.flip(array, axis=row_axis)
    if "driver_lastcol" in layout and column_axis is not None:
        array = jnp.flip(array, axis=column_axis)
    return array


@partial(jax.jit, static_argnums=(2,))
def _batched_transfer(conductance, resistances, steps):
    """vmap the single-crossbar transfer over the flattened batch dimension.

    Crossbars outside the accepted range, or whose result fails the physical
    bounds check, come back as NaN (concrete inputs were rejected before).
    """
    batch_shape = conductance.shape[:-2]
    flat = conductance.reshape((-1,) + conductance.shape[-2:])
    flat_resistances = resistances.reshape(-1, 4)
    scaled, scaled_resistances, scale = _scaled(flat, flat_resistances)
    core = jax.vmap(lambda g, r: _crossbar_transfer(g, r, steps))
    transfer = scale[:, None, None] * core(scaled, scaled_resistances)
    valid = _in_range(flat, flat_resistances) & _within_bounds(flat, transfer)
    transfer = jnp.where(valid[:, None, None], transfer, jnp.nan)
    return transfer.reshape(batch_shape + transfer.shape[-2:])


@partial(jax.jit, static_argnums=(3,))
def _batched_currents(conductance, resistances, voltages, steps):
    """vmap the single-crossbar direct solve over the flattened batch dimension.

    Crossbars outside the accepted range come back as NaN.
    """
    batch_shape = conductance.shape[:-2]
    flat_conductance = conductance.reshape((-1,) + conductance.shape[-2:])
    flat_voltages = jnp.swapaxes(voltages.reshape((-1,) + voltages.shape[-2:]), -1, -2)
    flat_resistances = resistances.reshape(-1, 4)
    scaled, scaled_resistances, scale = _scaled(flat_conductance, flat_resistances)
    core = jax.vmap(lambda g, r, v: _crossbar_currents(g, r, v, steps))
    currents = scale[:, None, None] * core(scaled, scaled_resistances, flat_voltages)
    valid = _in_range(flat_conductance, flat_resistances)
    currents = jnp.where(valid[:, None, None], currents, jnp.nan)
    return jnp.swapaxes(currents, -1, -2).reshape(batch_shape + (voltages.shape[-2],
                                                                 conductance.shape[-1]))


def _resolve_steps(refinement_steps) -> int:
    if isinstance(refinement_steps, bool) or not isinstance(refinement_steps, (int, np.integer)) \
            or refinement_steps < 0:
        raise ValueError(f"refinement_steps must be a non-negative int, got "
                         f"{refinement_steps!r}")
    return int(refinement_steps)


def _stack_resistances(resistances, batch_shape):
    return jnp.stack([jnp.broadcast_to(r, batch_shape) for r in resistances], axis=-1)


def transfer_matrix(conductance_siemens, r_wire_row, r_wire_col, r_driver=0.0, r_sense=0.0, *,
                    layout: str = DEFAULT_LAYOUT, refinement_steps: int = 0):
    """Transfer matrix ``T`` (siemens) of crossbars with IR drop: ``I = V @ T``.

    Args:
        conductance_siemens: cell conductances, shape ``(..., N, M)``, >= 0 S.
            Leading dimensions are a batch (tiles, noise draws).
        r_wire_row: word-line wire resistance per segment (ohms).
        r_wire_col: bit-line wire resistance per segment (ohms).
        r_driver: word-line driver resistance (ohms).
        r_sense: bit-line sense (virtual-ground) resistance (ohms).
            Each resistance is a scalar or an array broadcastable to the batch
            shape (it may be traced: jit, vmap, grad); zero is allowed and exact.
        layout: one of ``LAYOUTS`` (static).
        refinement_steps: iterative-refinement steps (static int, default 0).
            Without refinement float32 is within a few 1e-6 of float64 up to
            512 x 512; one step gives ~3e-7 for three to four times the time.

    Returns:
        ``T`` of shape ``batch + (N, M)`` in the conductance's floating dtype:
        ``T[k, j]`` is the current (A) into the virtual ground of bit line
        ``j`` per volt on word line ``k``, all other word lines at 0 V.

    Cost: O(N M^3) per crossbar, O(M^2 + M N) memory without refinement.
    ``jax.grad`` w.r.t. the conductance and the resistances solves the adjoint
    system (implicit differentiation); refinement and gradients keep the
    ``N M^2`` elimination factors of each crossbar in memory.

    Raises:
        ValueError: bad shapes, NaN/inf, negative conductance or resistance,
            unknown layout (value checks are skipped for traced arrays).
    """
    _check_layout(layout)
    conductance = _prepare_conductance(conductance_siemens)
    resistances = _prepare_resistances(conductance.shape[:-2], conductance.dtype, r_wire_row,
                                       r_wire_col, r_driver, r_sense)
    steps = _resolve_steps(refinement_steps)
    _check_range(conductance, resistances)
    batch_shape = np.broadcast_shapes(conductance.shape[:-2], *[r.shape for r in resistances])
    conductance = jnp.broadcast_to(conductance, batch_shape + conductance.shape[-2:])
    transfer = _batched_transfer(_flip_for_layout(conductance, layout, -2, -1),
                                 _stack_resistances(resistances, batch_shape), steps)
    return _flip_for_layout(transfer, layout, -2, -1)


def column_currents(conductance_siemens, voltages, r_wire_row, r_wire_col, r_driver=0.0,
                    r_sense=0.0, *, layout: str = DEFAULT_LAYOUT,
                    refinement_steps: int = 0):
    """Currents (amperes) into the bit-line virtual grounds for given word-line voltages.

    Args:
        conductance_siemens: ``(..., N, M)`` cell conductances (siemens).
        voltages: ``(..., B, N)`` word-line driver voltages (volts), or ``(N,)``
            for a single read; batch dimensions broadcast with the conductance's.
        r_wire_row, r_wire_col, r_driver, r_sense, layout, refinement_steps:
            as in :func:`transfer_matrix`.

    Returns:
        ``(..., B, M)`` currents (``(M,)`` for 1-D voltages), equal to
        ``voltages @ transfer_matrix(...)``.  The circuit is solved directly
        for the B reads when ``B <= N``; otherwise ``T`` is formed and
        multiplied, which is cheaper.
    """
    _check_layout(layout)
    conductance = _prepare_conductance(conductance_siemens)
    n_rows = conductance.shape[-2]
    if isinstance(voltages, (list, tuple)):
        voltages = np.asarray(voltages)
    voltage_shape = np.shape(voltages)
    if len(voltage_shape) < 1 or voltage_shape[-1] != n_rows:
        raise ValueError(f"voltages must have shape (..., B, N) with N = {n_rows} word lines, "
                         f"got shape {voltage_shape}")
    if not isinstance(voltages, jax.core.Tracer):
        voltage_array = np.asarray(voltages)
        if np.iscomplexobj(voltage_array) or not np.all(np.isfinite(voltage_array)):
            raise ValueError("voltages must be real and finite")
    single = len(voltage_shape) == 1
    voltages = jnp.asarray(voltages, conductance.dtype)
    if single:
        voltages = voltages[None, :]
    try:
        batch_shape = np.broadcast_shapes(conductance.shape[:-2], voltages.shape[:-2])
    except ValueError:
        raise ValueError(f"batch shapes of conductance {conductance.shape} and voltages "
                         f"{voltages.shape} do not broadcast") from None
    resistances = _prepare_resistances(batch_shape, conductance.dtype, r_wire_row, r_wire_col,
                                       r_driver, r_sense)
    steps = _resolve_steps(refinement_steps)
    _check_range(conductance, resistances)
    if voltages.shape[-2] > n_rows:
        currents = voltages @ transfer_matrix(conductance, *resistances, layout=layout,
                                              refinement_steps=steps)
    else:
        batch_shape = np.broadcast_shapes(batch_shape, *[r.shape for r in resistances])
        conductance = jnp.broadcast_to(conductance, batch_shape + conductance.shape[-2:])
        voltages = jnp.broadcast_to(voltages, batch_shape + voltages.shape[-2:])
        currents = _batched_currents(_flip_for_layout(conductance, layout, -2, -1),
                                     _stack_resistances(resistances, batch_shape),
                                     _flip_for_layout(voltages, layout, -1, None), steps)
        currents = _flip_for_layout(currents, layout, None, -1)
    return currents[..., 0, :] if single else currents
