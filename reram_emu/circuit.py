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
   is a Norton equivalent ``d = q - K c`` (``K`` M x M siemens, ``q`` amperes).
   Adding level ``i`` gives ``P_i = K_{i-1} + Y_i`` and passing through the
   bit-line segment below it gives ``K_i = (I + r P_i)^{-1} P_i``,
   ``q_i = (I + r P_i)^{-1} (q_{i-1} + y_i V_i)``: a Cholesky factorization of
   the well-conditioned ``I + r P_i`` per level.  The last level uses
   ``r_sense`` and its ``q`` is the vector of bit-line currents.  This block
   elimination is exact and costs O(N M^3) dense arithmetic; unlike the nodal
   (conductance) form it involves no subtraction of nearly equal wire
   conductances, which keeps float32 accurate.
3. Iterative refinement (optional, default one step in float32): the full
   state (every cell current) is recovered by back substitution, its residual
   is evaluated in the working dtype from the structured operator (cumulative
   sums along the wires) and a correction is solved with the same factors.
4. Gradients (``jax.grad`` w.r.t. conductances, resistances and voltages) use
   implicit differentiation: a custom VJP solves the adjoint system with the
   same factors; nothing is backpropagated through the elimination.

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
    "kirchhoff_residual",
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
_STATE_ELEMENTS_PER_CHUNK = 1 << 22


# ---------------------------------------------------------------------------
# Configuration and input validation
# ---------------------------------------------------------------------------


def _check_resistance(name: str, value) -> None:
    """Raise ValueError unless ``value`` (ohms) is finite and >= 0 (skipped for tracers)."""
    if isinstance(value, jax.core.Tracer):
        return
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
            or array.dtype == bool):
        raise ValueError(f"{name} must be a real number of ohms, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if np.any(array < 0):
        raise ValueError(f"{name} must be >= 0 ohms, got {value!r}")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown crossbar layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")


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
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"WireConfig.{name} must be a real number of ohms, got {value!r}")
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

    def transfer_matrix(self, conductance_siemens, *, refinement_steps=None):
        """:func:`transfer_matrix` with these wires."""
        return transfer_matrix(conductance_siemens, *self.resistances, layout=self.layout,
                               refinement_steps=refinement_steps)

    def column_currents(self, conductance_siemens, voltages, *, refinement_steps=None):
        """:func:`column_currents` with these wires."""
        return column_currents(conductance_siemens, voltages, *self.resistances,
                               layout=self.layout, refinement_steps=refinement_steps)


def _working_dtype(conductance):
    dtype = jnp.result_type(conductance)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def _prepare_conductance(conductance_siemens):
    """Validate the conductance array (siemens) and return it as a float jax array."""
    if isinstance(conductance_siemens, (list, tuple)):
        conductance_siemens = np.asarray(conductance_siemens)
    shape = np.shape(conductance_siemens)
    if len(shape) < 2:
        raise ValueError(f"conductance must have shape (..., N, M) with N, M >= 1, got shape {shape}")
    if shape[-2] < 1 or shape[-1] < 1:
        raise ValueError(f"conductance needs at least one word line and one bit line, got shape {shape}")
    if not isinstance(conductance_siemens, jax.core.Tracer):
        array = np.asarray(conductance_siemens)
        if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.floating)
                                          or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"conductance must be real, got dtype {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise ValueError("conductance contains NaN or inf")
        if np.any(array < 0):
            raise ValueError(f"conductance must be >= 0 siemens, smallest value is {array.min()!r}")
    dtype = _working_dtype(conductance_siemens)
    return jnp.asarray(conductance_siemens, dtype)


def _prepare_resistances(batch_shape, dtype, r_wire_row, r_wire_col, r_driver, r_sense):
    """Validate the four resistances (ohms); return them stacked, shape batch_shape + (4,)."""
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
            raise ValueError(f"{name} of shape {array.shape} does not broadcast to the batch "
                             f"shape {batch_shape} of the conductance") from None
        arrays.append(array)
    return arrays


def _default_refinement_steps(dtype) -> int:
    """One refinement step below float64 precision, none in float64."""
    return 0 if jnp.finfo(dtype).bits >= 64 else 1


# ---------------------------------------------------------------------------
# Word-line ladder (one crossbar, all word lines at once)
# ---------------------------------------------------------------------------


class _WordLineLadder(NamedTuple):
    """Per-node quantities of every word line, each of shape (N, M).

    transmission: ``t_j`` = voltage ratio node j / node j-1 (node -1 = source)
        when the rest of the line is loaded by its cells (dimensionless, in (0, 1]).
    self_response: ``v_j`` = voltage at node j per ampere injected there, with
        the source and all bit-line nodes at 0 V (ohms).
    cell_self_admittance: diagonal of the Norton admittance ``Y`` (siemens).
    unit_source_current: cell currents with a 1 V source and bit lines at 0 V
        (siemens), i.e. the row sums of ``Y``.
    segment_resistance: ``rho_j``: driver at j = 0, word-line wire after (ohms),
        shape (M,).
    """

    transmission: jax.Array
    self_response: jax.Array
    cell_self_admittance: jax.Array
    unit_source_current: jax.Array
    segment_resistance: jax.Array


def _word_line_ladder(conductance, r_wire_row, r_driver) -> _WordLineLadder:
    """Ladder recurrences of all word lines of one crossbar (conductance (N, M), siemens)."""
    n_rows, n_cols = conductance.shape
    dtype = conductance.dtype
    segment = jnp.full((n_cols,), r_wire_row, dtype).at[0].set(r_driver)
    cells_by_column = conductance.T  # (M, N): scan over bit-line index j

    # Right to left: admittance looking right from node j (excluding its cell).
    def right_step(right_admittance, inputs):
        cell, rho = inputs
        node_admittance = cell + right_admittance
        transmission = 1.0 / (1.0 + rho * node_admittance)
        return node_admittance * transmission, (right_admittance, transmission)

    _, (right_admittance, transmission) = lax.scan(
        right_step, jnp.zeros((n_rows,), dtype), (cells_by_column, segment), reverse=True)

    # Left to right: series impedance looking left from node j towards the
    # (shorted) source, excluding its cell; and the unit-source node voltage.
    def left_step(carry, inputs):
        left_of_segment, unit_voltage = carry
        cell, rho, trans = inputs
        left_impedance = rho + left_of_segment
        unit_voltage = unit_voltage * trans
        return (left_impedance / (1.0 + cell * left_impedance), unit_voltage), (
            left_impedance, unit_voltage)

    init = (jnp.zeros((n_rows,), dtype), jnp.ones((n_rows,), dtype))
    _, (left_impedance, unit_voltage) = lax.scan(
        left_step, init, (cells_by_column, segment, transmission))

    right_admittance, transmission = right_admittance.T, transmission.T
    left_impedance, unit_voltage = left_impedance.T, unit_voltage.T
    denominator = 1.0 + left_impedance * (conductance + right_admittance)
    return _WordLineLadder(
        transmission=transmission,
        self_response=left_impedance / denominator,
        cell_self_admittance=conductance * (1.0 + left_impedance * right_admittance) / denominator,
        unit_source_current=conductance * unit_voltage,
        segment_resistance=segment,
    )


def _word_line_admittance(cells, transmission, self_response, cell_self_admittance):
    """Dense Norton admittance ``Y`` (M x M, siemens) of one word line.

    ``Y = diag(G) - diag(G) L^{-1} diag(G)`` with ``L^{-1}[j, k] =
    v_k prod_{l=k+1..j} t_l`` for ``j >= k`` (symmetric), built from the ladder
    quantities without any division.
    """
    n_cols = cells.shape[0]
    index = jnp.arange(n_cols)
    below = index[:, None] > index[None, :]
    diagonal = index[:, None] == index[None, :]
    factors = jnp.where(below, transmission[:, None],
                        jnp.where(diagonal, self_response[None, :], jnp.ones((), cells.dtype)))
    response = lax.associative_scan(jnp.multiply, factors, axis=0)
    response = jnp.where(index[:, None] >= index[None, :], response, response.T)
    admittance = -(cells[:, None] * response * cells[None, :])
    return jnp.where(diagonal, cell_self_admittance[None, :], admittance)


def _linear_recurrence(coefficient, offset, axis, reverse=False):
    """Solve ``x_k = coefficient_k * x_{k-1} + offset_k`` (or x_{k+1} if reverse) along ``axis``."""

    def combine(earlier, later):
        a_earlier, b_earlier = earlier
        a_later, b_later = later
        return a_earlier * a_later, a_later * b_earlier + b_later

    return lax.associative_scan(combine, (coefficient, offset), reverse=reverse, axis=axis)[1]


def _word_line_voltages(ladder: _WordLineLadder, source_voltage, injection):
    """Word-line node voltages (volts) for given sources and cell-branch injections.

    Args:
        ladder: the word-line ladder of the crossbar.
        source_voltage: (N, B) driver source voltages (volts) per right-hand side.
        injection: (N, M, B) current (amperes) leaving each word-line node through
            its cell branch in addition to ``G * v_node``.

    Returns:
        (N, M, B) node voltages.
    """
    transmission = ladder.transmission[:, :, None]
    # Right to left: Norton current looking right from node j, including node j.
    next_transmission = jnp.concatenate(
        [transmission[:, 1:], jnp.zeros_like(transmission[:, :1])], axis=1)
    norton = _linear_recurrence(jnp.broadcast_to(next_transmission, injection.shape), injection,
                                axis=1, reverse=True)
    # Left to right: v_j = t_j v_{j-1} - t_j rho_j J_j, with v_{-1} = source voltage.
    offset = -transmission * ladder.segment_resistance[None, :, None] * norton
    offset = offset.at[:, 0].add(transmission[:, 0] * source_voltage)
    return _linear_recurrence(jnp.broadcast_to(transmission, injection.shape), offset, axis=1)


# ---------------------------------------------------------------------------
# Structured operator (residual) in resistance form
# ---------------------------------------------------------------------------


def _cumulative_sum(x, axis, reverse=False):
    return lax.associative_scan(jnp.add, x, axis=axis, reverse=reverse)


def _bit_line_segment_resistance(resistances, n_rows, dtype):
    """(N,) resistance below each level: bit-line wire, then the sense resistance (ohms)."""
    return jnp.full((n_rows,), resistances[1], dtype).at[n_rows - 1].set(resistances[3])


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
    dtype = conductance.dtype
    word_segment = jnp.full((n_cols,), resistances[0], dtype).at[0].set(resistances[2])
    bit_segment = _bit_line_segment_resistance(resistances, n_rows, dtype)
    word_line_current = _cumulative_sum(cell_current, axis=1, reverse=True)
    word_drop = _cumulative_sum(word_segment[None, :, None] * word_line_current, axis=1)
    bit_line_current = _cumulative_sum(cell_current, axis=0)
    bit_voltage = _cumulative_sum(bit_segment[:, None, None] * bit_line_current, axis=0,
                                  reverse=True)
    return source_voltage[:, None, :] - word_drop, bit_voltage


def _residual(conductance, resistances, source_voltage, injection, cell_current):
    """KCL residual (amperes) of the cell currents: ``S + G (v_word - v_bit) - x``."""
    word_voltage, bit_voltage = _cell_voltages(conductance, resistances, source_voltage,
                                               cell_current)
    return injection + conductance[:, :, None] * (word_voltage - bit_voltage) - cell_current


def kirchhoff_residual(conductance_siemens, voltages, cell_currents, r_wire_row, r_wire_col,
                   r_driver=0.0, r_sense=0.0):
    """Residual (amperes) of candidate cell currents of one crossbar (canonical layout).

    For each right-hand side ``b``, the cell currents ``x[b]`` (N, M) (amperes,
    word line to bit line) imply word-line and bit-line node voltages through
    the wire, driver and sense resistances; the residual is
    ``G * (v_word - v_bit) - x``, zero for the exact solution.  Useful to
    check a solution independently of how it was found.

    Args:
        conductance_siemens: (N, M).
        voltages: (B, N) driver voltages (volts).
        cell_currents: (B, N, M) amperes.

    Returns:
        (B, N, M) residual in amperes.
    """
    conductance = jnp.asarray(conductance_siemens)
    dtype = _working_dtype(conductance)
    conductance = conductance.astype(dtype)
    resistances = jnp.stack([jnp.asarray(r, dtype) for r in
                             (r_wire_row, r_wire_col, r_driver, r_sense)])
    voltages = jnp.asarray(voltages, dtype)
    currents = jnp.moveaxis(jnp.asarray(cell_currents, dtype), 0, -1)
    residual = _residual(conductance, resistances, voltages.T, jnp.zeros_like(currents), currents)
    return jnp.moveaxis(residual, -1, 0)


# ---------------------------------------------------------------------------
# Bit-line sweep
# ---------------------------------------------------------------------------


def _inverse_identity_plus(matrix):
    """``(I + matrix)^{-1}`` for symmetric positive semidefinite ``matrix``, via Cholesky."""
    identity = jnp.eye(matrix.shape[-1], dtype=matrix.dtype)
    lower = jnp.linalg.cholesky(identity + matrix)
    lower_inverse = lax.linalg.triangular_solve(lower, identity, left_side=True, lower=True)
    return lower_inverse.T @ lower_inverse


def _level_inputs(conductance, resistances, ladder):
    n_rows = conductance.shape[0]
    return (conductance, ladder.transmission, ladder.self_response, ladder.cell_self_admittance,
            _bit_line_segment_resistance(resistances, n_rows, conductance.dtype))


def _forward_currents(conductance, resistances, voltages):
    """Bit-line currents (B, M) for word-line voltages ``voltages`` (N, B): fast path."""
    n_rows, n_cols = conductance.shape
    dtype = conductance.dtype
    ladder = _word_line_ladder(conductance, resistances[0], resistances[2])

    def level(carry, inputs):
        norton_admittance, norton_current = carry
        cells, transmission, self_response, self_admittance, segment, unit_current, drive = inputs
        combined = norton_admittance + _word_line_admittance(cells, transmission, self_response,
                                                             self_admittance)
        current = norton_current + unit_current[:, None] * drive[None, :]
        inverse = _inverse_identity_plus(segment * combined)
        next_admittance = inverse @ combined
        next_admittance = 0.5 * (next_admittance + next_admittance.T)
        return (next_admittance, inverse @ current), None

    init = (jnp.zeros((n_cols, n_cols), dtype), jnp.zeros((n_cols, voltages.shape[1]), dtype))
    inputs = _level_inputs(conductance, resistances, ladder) + (ladder.unit_source_current,
                                                                voltages)
    (_, currents), _ = lax.scan(level, init, inputs)
    return currents.T


class _Factors(NamedTuple):
    """Stored bit-line elimination of one crossbar (for full-state solves)."""

    ladder: _WordLineLadder
    admittance_above: jax.Array  # (N, M, M): K_{i-1}, Norton admittance above level i (siemens)
    segment_inverse: jax.Array   # (N, M, M): (I + r_i P_i)^{-1} (dimensionless)


def _factorize(conductance, resistances) -> _Factors:
    n_rows, n_cols = conductance.shape
    ladder = _word_line_ladder(conductance, resistances[0], resistances[2])

    def level(norton_admittance, inputs):
        cells, transmission, self_response, self_admittance, segment = inputs
        combined = norton_admittance + _word_line_admittance(cells, transmission, self_response,
                                                             self_admittance)
        inverse = _inverse_identity_plus(segment * combined)
        next_admittance = inverse @ combined
        next_admittance = 0.5 * (next_admittance + next_admittance.T)
        return next_admittance, (norton_admittance, inverse)

    _, (above, inverse) = lax.scan(level, jnp.zeros((n_cols, n_cols), conductance.dtype),
                                   _level_inputs(conductance, resistances, ladder))
    return _Factors(ladder, above, inverse)


def _solve_state(factors: _Factors, conductance, resistances, source_voltage, injection):
    """Cell currents (N, M, B) solving ``x = S + G (v_word - v_bit)`` with stored factors.

    Args:
        source_voltage: (N, B) driver voltages (volts).
        injection: (N, M, B) current sources (amperes) in parallel with the cells.
    """
    n_rows = conductance.shape[0]
    cells = conductance[:, :, None]
    bit_segment = _bit_line_segment_resistance(resistances, n_rows, conductance.dtype)
    # Cell currents with every bit-line node at 0 V.
    word_voltage = _word_line_voltages(factors.ladder, source_voltage, injection)
    short_circuit = injection + cells * word_voltage

    def down(current_above, inputs):
        inverse, level_current = inputs
        return inverse @ (current_above + level_current), current_above

    sense_current, current_above = lax.scan(
        down, jnp.zeros_like(short_circuit[0]), (factors.segment_inverse, short_circuit))

    def up(bit_voltage, inputs):
        admittance_above, current_in, segment_below = inputs
        # bit_voltage: level i; return voltage of level i-1 (top level: unused).
        segment_current = current_in - admittance_above @ bit_voltage
        return bit_voltage + segment_below * segment_current, bit_voltage

    bottom_voltage = resistances[3] * sense_current
    shifted_segment = jnp.concatenate([jnp.zeros((1,), conductance.dtype), bit_segment[:-1]])
    _, bit_voltage = lax.scan(up, bottom_voltage,
                              (factors.admittance_above, current_above, shifted_segment),
                              reverse=True)
    word_voltage = _word_line_voltages(factors.ladder, source_voltage,
                                       injection - cells * bit_voltage)
    return injection + cells * (word_voltage - bit_voltage)


def _refined_state(factors, conductance, resistances, source_voltage, injection, steps):
    cell_current = _solve_state(factors, conductance, resistances, source_voltage, injection)
    for _ in range(steps):
        residual = _residual(conductance, resistances, source_voltage, injection, cell_current)
        cell_current = cell_current + _solve_state(
            factors, conductance, resistances, jnp.zeros_like(source_voltage), residual)
    return cell_current


def _chunked(function, n_rows, n_cols, *arrays):
    """Apply ``function`` to chunks of right-hand sides (last axis of each array) in sequence.

    Returns a tuple with the per-chunk outputs concatenated along their last axis
    (outputs whose leading chunk axis must be summed are handled by the caller).
    """
    n_rhs = arrays[0].shape[-1]
    chunk = max(1, min(n_rhs, _STATE_ELEMENTS_PER_CHUNK // (n_rows * n_cols)))
    n_chunks = -(-n_rhs // chunk)
    padded = n_chunks * chunk
    stacked = []
    for array in arrays:
        pad = [(0, 0)] * (array.ndim - 1) + [(0, padded - n_rhs)]
        array = jnp.pad(array, pad)
        array = array.reshape(array.shape[:-1] + (n_chunks, chunk))
        stacked.append(jnp.moveaxis(array, -2, 0))
    return lax.map(lambda chunk_arrays: function(*chunk_arrays), tuple(stacked)), n_rhs


def _refined_currents(conductance, resistances, voltages, steps):
    """Bit-line currents (B, M) with ``steps`` refinement steps (voltages (N, B))."""
    n_rows, n_cols = conductance.shape
    factors = _factorize(conductance, resistances)

    def per_chunk(chunk_voltages):
        injection = jnp.zeros((n_rows, n_cols, chunk_voltages.shape[-1]), conductance.dtype)
        state = _refined_state(factors, conductance, resistances, chunk_voltages, injection, steps)
        return jnp.sum(state, axis=0).T  # (chunk, M)

    per_chunk_currents, n_rhs = _chunked(per_chunk, n_rows, n_cols, voltages)
    return per_chunk_currents.reshape(-1, n_cols)[:n_rhs]


# ---------------------------------------------------------------------------
# Differentiable core (one crossbar) with an implicit (adjoint) VJP
# ---------------------------------------------------------------------------


def _crossbar_currents_impl(conductance, resistances, voltages, steps):
    if steps == 0:
        return _forward_currents(conductance, resistances, voltages.T)
    return _refined_currents(conductance, resistances, voltages.T, steps)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _crossbar_currents(conductance, resistances, voltages, steps):
    """Bit-line currents (B, M) of one crossbar (N, M) for word-line voltages (B, N)."""
    return _crossbar_currents_impl(conductance, resistances, voltages, steps)


def _crossbar_currents_forward(conductance, resistances, voltages, steps):
    currents = _crossbar_currents_impl(conductance, resistances, voltages, steps)
    return currents, (conductance, resistances, voltages)


def _operator_voltages(conductance, resistances, source_voltage, cell_current):
    """``G (v_word - v_bit)`` as a function of the parameters (for the VJP)."""
    word_voltage, bit_voltage = _cell_voltages(conductance, resistances, source_voltage,
                                               cell_current)
    return conductance[:, :, None] * (word_voltage - bit_voltage)


def _crossbar_currents_backward(steps, residuals, cotangent):
    """Adjoint solve: ``A x = b`` with ``A = I + G R``; ``A^T = I + R G``, so
    ``lambda = g - R A^{-1} (G g)`` with ``R`` the wire-resistance operator."""
    conductance, resistances, voltages = residuals
    n_rows, n_cols = conductance.shape
    refinement = max(steps, _default_refinement_steps(conductance.dtype))
    factors = _factorize(conductance, resistances)
    cells = conductance[:, :, None]

    def per_chunk(chunk_voltages, chunk_cotangent):
        n_chunk = chunk_voltages.shape[-1]
        zero_injection = jnp.zeros((n_rows, n_cols, n_chunk), conductance.dtype)
        state = _refined_state(factors, conductance, resistances, chunk_voltages, zero_injection,
                               refinement)
        # dL/dx[i, j, b] = cotangent[b, j]: bit-line current is the column sum of cell currents.
        state_cotangent = jnp.broadcast_to(chunk_cotangent[None], (n_rows, n_cols, n_chunk))
        adjoint_source = _refined_state(factors, conductance, resistances,
                                        jnp.zeros_like(chunk_voltages), cells * state_cotangent,
                                        refinement)
        word_voltage, bit_voltage = _cell_voltages(conductance, resistances,
                                                   jnp.zeros_like(chunk_voltages), adjoint_source)
        # R u = (source - v_word) + v_bit for zero sources.
        adjoint = state_cotangent + word_voltage - bit_voltage
        _, vjp = jax.vjp(lambda g, r, v: _operator_voltages(g, r, v, state), conductance,
                         resistances, chunk_voltages)
        return vjp(adjoint)

    (grad_conductance, grad_resistances, grad_voltages), n_rhs = _chunked(
        per_chunk, n_rows, n_cols, voltages.T, cotangent.T)
    grad_voltages = jnp.moveaxis(grad_voltages, 0, -2).reshape(n_rows, -1)[:, :n_rhs].T
    return jnp.sum(grad_conductance, 0), jnp.sum(grad_resistances, 0), grad_voltages


_crossbar_currents.defvjp(_crossbar_currents_forward, _crossbar_currents_backward)


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


@partial(jax.jit, static_argnums=(3,))
def _batched_currents(conductance, resistances, voltages, steps):
    """vmap the single-crossbar core over the (flattened) batch dimension."""
    batch_shape = conductance.shape[:-2]
    size = int(np.prod(batch_shape, dtype=np.int64))
    flat_conductance = conductance.reshape((size,) + conductance.shape[-2:])
    flat_resistances = resistances.reshape((size, 4))
    flat_voltages = voltages.reshape((size,) + voltages.shape[-2:])
    core = jax.vmap(lambda g, r, v: _crossbar_currents(g, r, v, steps))
    currents = core(flat_conductance, flat_resistances, flat_voltages)
    return currents.reshape(batch_shape + currents.shape[-2:])


def _resolve_steps(refinement_steps, dtype) -> int:
    if refinement_steps is None:
        return _default_refinement_steps(dtype)
    if isinstance(refinement_steps, bool) or not isinstance(refinement_steps, (int, np.integer)) \
            or refinement_steps < 0:
        raise ValueError(f"refinement_steps must be a non-negative int or None, got "
                         f"{refinement_steps!r}")
    return int(refinement_steps)


def transfer_matrix(conductance_siemens, r_wire_row, r_wire_col, r_driver=0.0, r_sense=0.0, *,
                    layout: str = DEFAULT_LAYOUT, refinement_steps: int | None = None):
    """Transfer matrix ``T`` (siemens) of crossbars with IR drop: ``I = V @ T``.

    Args:
        conductance_siemens: cell conductances, shape ``(..., N, M)``, >= 0 S.
            Leading dimensions are a batch (tiles, noise draws).
        r_wire_row: word-line wire resistance per segment (ohms).
        r_wire_col: bit-line wire resistance per segment (ohms).
        r_driver: word-line driver resistance (ohms).
        r_sense: bit-line sense (virtual-ground) resistance (ohms).
            Each resistance is a scalar or an array broadcastable to the batch
            shape; zero is allowed and exact.
        layout: one of ``LAYOUTS`` (static).
        refinement_steps: iterative-refinement steps (static); ``None`` gives
            1 below float64 and 0 in float64.

    Returns:
        ``T`` of shape ``(..., N, M)`` and the conductance's floating dtype:
        ``T[k, j]`` is the current (A) into the virtual ground of bit line
        ``j`` per volt on word line ``k`` with all other word lines at 0 V.

    Raises:
        ValueError: bad shapes, NaN/inf, negative conductance or resistance,
            unknown layout (value checks are skipped for traced arrays).
    """
    _check_layout(layout)
    conductance = _prepare_conductance(conductance_siemens)
    n_rows = conductance.shape[-2]
    resistances = _prepare_resistances(conductance.shape[:-2], conductance.dtype, r_wire_row,
                                       r_wire_col, r_driver, r_sense)
    batch_shape = np.broadcast_shapes(conductance.shape[:-2], *[r.shape for r in resistances])
    steps = _resolve_steps(refinement_steps, conductance.dtype)
    resistances = jnp.stack([jnp.broadcast_to(r, batch_shape) for r in resistances], axis=-1)
    conductance = jnp.broadcast_to(conductance, batch_shape + conductance.shape[-2:])
    conductance = _flip_for_layout(conductance, layout, -2, -1)
    identity = jnp.broadcast_to(jnp.eye(n_rows, dtype=conductance.dtype),
                                batch_shape + (n_rows, n_rows))
    transfer = _batched_currents(conductance, resistances, identity, steps)
    return _flip_for_layout(transfer, layout, -2, -1)


def column_currents(conductance_siemens, voltages, r_wire_row, r_wire_col, r_driver=0.0,
                    r_sense=0.0, *, layout: str = DEFAULT_LAYOUT,
                    refinement_steps: int | None = None):
    """Currents (amperes) into the bit-line virtual grounds for given word-line voltages.

    Args:
        conductance_siemens: ``(..., N, M)`` cell conductances (siemens).
        voltages: ``(..., B, N)`` word-line driver voltages (volts), or ``(N,)``
            for a single read; batch dimensions broadcast with the conductance's.
        r_wire_row, r_wire_col, r_driver, r_sense, layout, refinement_steps:
            as in :func:`transfer_matrix`.

    Returns:
        ``(..., B, M)`` currents (or ``(M,)`` / ``(..., M)`` for 1-D voltages),
        equal to ``voltages @ transfer_matrix(...)``.  When ``B > N`` the
        transfer matrix is formed first and multiplied, which is cheaper.
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
    batch_shape = np.broadcast_shapes(conductance.shape[:-2], voltages.shape[:-2])
    resistances = _prepare_resistances(batch_shape, conductance.dtype, r_wire_row, r_wire_col,
                                       r_driver, r_sense)
    batch_shape = np.broadcast_shapes(batch_shape, *[r.shape for r in resistances])
    steps = _resolve_steps(refinement_steps, conductance.dtype)
    n_reads = voltages.shape[-2]
    if n_reads > n_rows:
        transfer = transfer_matrix(conductance, *resistances, layout=layout,
                                   refinement_steps=steps)
        currents = voltages @ transfer
    else:
        resistances = jnp.stack([jnp.broadcast_to(r, batch_shape) for r in resistances], axis=-1)
        conductance = _flip_for_layout(jnp.broadcast_to(conductance, batch_shape
                                                        + conductance.shape[-2:]), layout, -2, -1)
        voltages = _flip_for_layout(jnp.broadcast_to(voltages, batch_shape + voltages.shape[-2:]),
                                    layout, -1, None)
        currents = _batched_currents(conductance, resistances, voltages, steps)
        currents = _flip_for_layout(currents, layout, None, -1)
    return currents[..., 0, :] if single else currents
