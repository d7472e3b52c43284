"""IR drop: how much bit-line current the wires cost, by array size, wire resistance and drive.

Circuit (FIELD.md section 3, :data:`reram_emu.circuit.DEFAULT_LAYOUT`): N x N cells, word lines
driven at column 0, bit lines at virtual ground at row N-1, ``r`` ohms per word-line and
bit-line segment, ideal drivers and sense amplifiers (0 ohm), undriven word lines held at 0 V.
Cells are the FORMS preset's 2-bit cells (G_off = 1e-6 S, G_on = 1e-4 S, i.e. R_on = 10 kohm):
either random levels 0..3 (``G = G_off + level (G_on - G_off) / 3``) or the worst case, every
cell at G_on. A 1 bit drives its word line at the read voltage (0.2 V).

Studies (the ``study`` field of a point):

* ``circuit``: exact transfer matrices (:func:`reram_emu.circuit.transfer_matrix`, one batched
  solve per array size and cell pattern over every wire resistance). Drive ``all rows``: every
  word line at the read voltage, one read. Drive ``fragment m``: FORMS's conversions, each
  fragment of m consecutive rows driven in turn (the others at 0 V), one read per fragment.
  Metric: relative error of the bit-line currents against ideal wires (``T = G``), over all the
  reads of the drive (``||I - I_ideal|| / ||I_ideal||``, Frobenius over reads x bit lines), and
  the best and worst single read.
* ``floating``: the same fragment drive with the undriven word lines left floating instead of
  held at 0 V (a layout the solver does not model): a scipy.sparse nodal solve, one
  factorization per fragment.
* ``layer``: the read pipeline (:func:`reram_emu.read_integers` with
  ``CrossbarConfig(wires=WireConfig(...))``, the wire resistance swept by
  ``NoiseParameters.with_wire_resistance`` under ``jax.vmap``): a random layer polarized over 16
  rows (2R x R/4 on two R x R tiles, R = 128 full, 32 quick; 8-bit weights in four 2-bit cells;
  8-bit inputs from the digits images) on FORMS at m = 4, 8, 16, with the preset's ADC
  (``log2(m)+1`` bits, worst-case range) and with an ideal ADC; error of the outputs against
  the exact integer product, with and without wires.
* ``heat map``: see below.

The heat map: the voltage lost across every cell, ``V_applied - (V_word - V_bit)`` (volts; the
applied voltage is 0 on undriven rows), of one array with all rows driven and with only the
fragment farthest from the sense amplifiers (rows 0..m-1) driven, from the scipy nodal solve
(whose bit-line currents are checked against the transfer-matrix solver).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg

import reram_emu as rx
from reram_emu.circuit import WireConfig, column_currents, transfer_matrix
from reram_emu.config import (ADCConfig, CellConfig, CrossbarGeometry, InputConfig,
                              MappingConfig)
from reram_emu.converters import adc_lsb_levels
from reram_emu.crossbar import adc_inputs
from reram_emu.datasets import load_dataset
from reram_emu.quantization import input_scale, quantize_inputs
from reram_emu.training import read_npz

NAME = "ir_drop"
DESCRIPTION = ("bit-line current and layer output error from IR drop vs array size, wire "
               "resistance and fragment drive, with a heat map of the cell voltage loss")

CELL = CellConfig()  # the FORMS preset's cells: 2 bits, G_on 1e-4 S, G_off 1e-6 S, 0.2 V read
READ_VOLTAGE_VOLTS = CELL.read_voltage_volts
FRAGMENTS = (4, 8, 16)
CELL_PATTERNS = ("random levels", "all G_on")
HEATMAP_WIRE_OHMS = 1.0
HEATMAP_FRAGMENT = 8


def _sizes(quick: bool) -> tuple[int, ...]:
    return (32, 64) if quick else (32, 64, 128, 256)


def _wire_ohms(quick: bool) -> tuple[float, ...]:
    return (0.0, 0.3, 1.0, 3.0) if quick else (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)


def _floating_rows(quick: bool) -> int:
    return 32 if quick else 128


def _floating_ohms(quick: bool) -> tuple[float, ...]:
    return (1.0,) if quick else (0.3, 1.0, 3.0)


def _layer_fragments(quick: bool) -> tuple[int, ...]:
    return (8,) if quick else FRAGMENTS


def _layer_rows(quick: bool) -> int:
    return 32 if quick else 128


def _layer_vectors(quick: bool) -> int:
    return 64 if quick else 128


def _layer_ohms(quick: bool) -> tuple[float, ...]:
    return (0.0, 0.3, 1.0, 3.0) if quick else (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)


def points(quick: bool) -> list[dict]:
    drives = ["all rows"] + [f"fragment {m}" for m in FRAGMENTS]
    out = [{"study": "circuit", "rows": n, "cells": cells, "drive": drive, "r_wire_ohms": r}
           for n in _sizes(quick) for cells in CELL_PATTERNS for drive in drives
           for r in _wire_ohms(quick)]
    out += [{"study": "floating", "rows": _floating_rows(quick), "cells": "random levels",
             "drive": f"fragment {m}", "r_wire_ohms": r}
            for m in FRAGMENTS for r in _floating_ohms(quick)]
    out += [{"study": "heat map", "rows": _floating_rows(quick), "cells": "random levels",
             "drive": f"all rows vs fragment {HEATMAP_FRAGMENT}",
             "r_wire_ohms": HEATMAP_WIRE_OHMS}]
    out += [{"study": "layer", "rows": _layer_rows(quick), "cells": "polarized random weights",
             "drive": f"fragment {m}", "adc": adc, "r_wire_ohms": r}
            for m in _layer_fragments(quick) for adc in ("preset", "ideal")
            for r in _layer_ohms(quick)]
    return out


def group(point: dict):
    if point["study"] == "circuit":
        return ("circuit", point["rows"], point["cells"])
    if point["study"] in ("floating", "heat map"):
        return (point["study"], point["rows"], point["drive"])
    return ("layer", point["rows"], point["drive"], point["adc"])


def configuration(quick: bool) -> dict:
    return {
        "layout": "word lines driven at column 0, bit lines sensed at row N-1 (virtual ground), "
                  "r_driver = r_sense = 0 ohm, undriven rows held at 0 V (floating study: left "
                  "floating)",
        "cells": f"2-bit, G_off {CELL.g_off_siemens} S, G_on {CELL.g_on_siemens} S; random "
                 f"levels 0..3 (uniform) or all G_on",
        "read_voltage_volts": READ_VOLTAGE_VOLTS,
        "sizes": list(_sizes(quick)), "wire_ohms_per_segment": list(_wire_ohms(quick)),
        "fragments": list(FRAGMENTS),
        "floating": {"rows": _floating_rows(quick), "wire_ohms": list(_floating_ohms(quick))},
        "layer": {"crossbar": f"{_layer_rows(quick)} x {_layer_rows(quick)}, FORMS preset "
                              "otherwise (2-bit cells, 8-bit weights, reference column)",
                  "weights": f"normal({2 * _layer_rows(quick)} x {_layer_rows(quick) // 4}), "
                             f"projected onto weights polarized over {max(FRAGMENTS)} rows "
                             "(so polarized for every m), 8-bit",
                  "inputs": "digits test images tiled to the layer's inputs, 8-bit, per-vector "
                            f"scale, {_layer_vectors(quick)} vectors",
                  "fragments": list(_layer_fragments(quick)),
                  "wire_ohms": list(_layer_ohms(quick)), "ideal_adc": repr(IDEAL_ADC)},
        "heat_map": {"rows": _floating_rows(quick), "wire_ohms": HEATMAP_WIRE_OHMS,
                     "fragment": HEATMAP_FRAGMENT, "cells": "random levels"},
        "dtype": "float32 (transfer matrices, pipeline); float64 (scipy nodal solve)",
    }


# --------------------------------------------------------------------------- cells


def cell_conductance(rows: int, columns: int, pattern: str, rng: np.random.Generator
                     ) -> np.ndarray:
    """Cell conductances (siemens) of one ``rows x columns`` array of the preset's 2-bit cells.

    ``"random levels"``: levels drawn uniformly from 0..3; ``"all G_on"``: every cell at G_on.
    """
    if pattern == "random levels":
        levels = rng.integers(0, CELL.max_level + 1, size=(rows, columns))
        return CELL.g_off_siemens + levels * CELL.level_step_siemens
    if pattern == "all G_on":
        return np.full((rows, columns), CELL.g_on_siemens)
    raise ValueError(f"unknown cell pattern {pattern!r}; known: {', '.join(CELL_PATTERNS)}")


def drive_voltages(rows: int, drive: str) -> np.ndarray:
    """Word-line voltages (volts) of every read of a drive, shape (reads, rows).

    ``"all rows"``: one read, every row at the read voltage. ``"fragment m"``: ``rows / m`` reads,
    read k drives rows ``k m .. k m + m - 1`` at the read voltage, every other row at 0 V.
    """
    if drive == "all rows":
        return np.full((1, rows), READ_VOLTAGE_VOLTS)
    if not drive.startswith("fragment "):
        raise ValueError(f"unknown drive {drive!r}: 'all rows' or 'fragment m'")
    m = int(drive.split()[1])
    if m < 1 or rows % m:
        raise ValueError(f"fragment rows {m} must divide the array's {rows} rows")
    return READ_VOLTAGE_VOLTS * np.kron(np.eye(rows // m), np.ones((1, m)))


def current_errors(transfer, conductance, voltages) -> dict:
    """Relative error of the bit-line currents against ideal wires.

    Args:
      transfer: (..., N, M) transfer matrices (siemens) with wires.
      conductance: (N, M) cell conductances (siemens): the ideal-wire transfer matrix.
      voltages: (reads, N) word-line voltages (volts).

    Returns ``relative_error`` (...,): over every read and bit line (Frobenius norms);
    ``read_errors`` (..., reads): each read's own relative error; ``read_error_min`` and
    ``read_error_max`` (...,): the smallest and largest of those.
    """
    transfer = np.asarray(transfer, np.float64)
    voltages = np.asarray(voltages, np.float64)
    ideal = voltages @ np.asarray(conductance, np.float64)     # (reads, M) amperes
    error = np.einsum("rn,...nm->...rm", voltages, transfer) - ideal
    return _error_summary(error, ideal)


def _error_summary(error, ideal) -> dict:
    """Relative errors of currents ``ideal + error`` (..., reads, M) against ``ideal``."""
    per_read = np.linalg.norm(error, axis=-1) / np.linalg.norm(ideal, axis=-1)
    total = np.sqrt(np.sum(error ** 2, axis=(-2, -1)) / np.sum(ideal ** 2))
    return {"relative_error": total, "read_errors": per_read,
            "read_error_min": per_read.min(-1), "read_error_max": per_read.max(-1)}


def _point_metrics(summary: dict, index=(), keep_reads: bool = False) -> dict:
    """JSON-friendly metrics of one point from :func:`_error_summary` arrays."""
    out = {k: float(summary[k][index]) for k in ("relative_error", "read_error_min",
                                                 "read_error_max")}
    if keep_reads:
        out["read_errors"] = [float(f"{e:.6g}") for e in summary["read_errors"][index]]
    return out


# --------------------------------------------------------------------------- nodal solve


def nodal_solve(conductance, voltages, r_wire_ohms: float, *, floating=None):
    """Node voltages (volts) and bit-line currents (amperes) by a scipy.sparse nodal solve.

    The circuit of the module docstring with ideal drivers and sense amplifiers: word line
    ``i``'s column-0 node is tied to its source (``voltages[:, i]`` volts), bit line ``j``'s
    row-(N-1) node to 0 V; ``r_wire_ohms`` (> 0) per segment of both lines. Word lines marked
    in ``floating`` (bool (N,)) have no source: their nodes float.

    Args:
      conductance: (N, M) cell conductances, siemens.
      voltages: (B, N) source voltages, volts (entries of floating rows are ignored).
      r_wire_ohms: wire resistance per segment, ohms, > 0.
      floating: (N,) bool or None (every word line driven or held at its source voltage).

    Returns:
      ``(word, bit, currents)``: word-line and bit-line node voltages (B, N, M) and the
      currents into the virtual grounds (B, M), float64.
    """
    g = np.asarray(conductance, np.float64)
    v = np.atleast_2d(np.asarray(voltages, np.float64))
    if g.ndim != 2 or v.shape[-1] != g.shape[0]:
        raise ValueError(f"conductance must be (N, M) and voltages (B, N); got {g.shape} and "
                         f"{v.shape}")
    if not (np.isfinite(r_wire_ohms) and r_wire_ohms > 0):
        raise ValueError(f"r_wire_ohms must be > 0 for the nodal solve, got {r_wire_ohms!r}")
    n, m = g.shape
    floating = np.zeros(n, bool) if floating is None else np.asarray(floating, bool)
    index = np.arange(2 * n * m).reshape(2, n, m)                # [0]: word, [1]: bit nodes
    wire = 1.0 / r_wire_ohms
    branches = [(index[0].ravel(), index[1].ravel(), g.ravel()),                    # cells
                (index[0, :, :-1].ravel(), index[0, :, 1:].ravel(), wire),          # word
                (index[1, :-1].ravel(), index[1, 1:].ravel(), wire)]                # bit
    a = np.concatenate([b[0] for b in branches])
    b = np.concatenate([b[1] for b in branches])
    y = np.concatenate([np.broadcast_to(b[2], b[0].shape) for b in branches])
    laplacian = sparse.coo_matrix(
        (np.concatenate([y, y, -y, -y]), (np.concatenate([a, b, a, b]),
                                          np.concatenate([a, b, b, a]))),
        shape=(2 * n * m, 2 * n * m)).tocsr()
    fixed = np.concatenate([index[0, ~floating, 0], index[1, -1, :]])
    fixed_values = np.concatenate([v[:, ~floating], np.zeros((v.shape[0], m))], axis=1).T
    free = np.setdiff1d(np.arange(2 * n * m), fixed)
    rhs = -laplacian[free][:, fixed] @ fixed_values
    solution = np.empty((2 * n * m, v.shape[0]))
    solution[fixed] = fixed_values
    factor = sparse_linalg.splu(laplacian[free][:, free].tocsc(), permc_spec="MMD_AT_PLUS_A")
    solution[free] = factor.solve(rhs)
    # current into each virtual ground: what its node's branches deliver to it
    currents = -(laplacian[index[1, -1, :]] @ solution).T
    nodes = solution.T.reshape(v.shape[0], 2, n, m)
    return nodes[:, 0], nodes[:, 1], currents


# --------------------------------------------------------------------------- layer study

IDEAL_ADC = ADCConfig(bits=24, range="fixed", full_scale_levels=2.0 ** 12)
"""An ADC fine enough not to matter: LSB 2**12 / (2**24 - 1) ~ 2.4e-4 conductance levels."""


def layer_config(rows: int, m: int, adc: str, wires: WireConfig | None) -> rx.CrossbarConfig:
    """FORMS at fragment ``m`` on ``rows x rows`` crossbars (the preset's 128 x 128, or smaller
    for quick runs), 8-bit inputs, the preset's ADC (``log2(m)+1`` bits, worst-case range) or
    :data:`IDEAL_ADC`, and the given wires (None: ideal wires, no circuit solve)."""
    config = rx.preset("forms", fragment_rows=m).replace(
        geometry=CrossbarGeometry(rows, rows, m), inputs=InputConfig(bits=8), wires=wires,
        mapping=MappingConfig(scheme="polarized", on_violation="project"))
    if adc == "ideal":
        return config.replace(adc=IDEAL_ADC)
    if adc != "preset":
        raise ValueError(f"adc must be 'preset' or 'ideal', got {adc!r}")
    # the study's "preset ADC" is the worst-case range (the FORMS preset's default when it ran)
    return config.replace(adc=ADCConfig(bits=config.adc.bits, range="worst_case"))


def layer_errors(weights, x_int, rows: int, m: int, adc: str, wire_ohms) -> dict:
    """Output error of a FORMS layer with IR drop, the wire resistance swept under ``jax.vmap``.

    Args:
      weights: (K, N) float weights, polarized over fragments of ``m`` rows (or a multiple).
      x_int: (B, K) integer inputs (8-bit).
      rows, m, adc: see :func:`layer_config`.
      wire_ohms: wire resistances per segment (ohms, word and bit lines), swept through
        ``NoiseParameters.with_wire_resistance``.

    Returns (arrays over ``wire_ohms``): ``relative_error`` of the outputs against the exact
    integer product ``x_int @ integer_weights``; ``vs_ideal_wires``: against the same design
    read with ideal wires; the scalars ``ideal_wires_error`` (ideal wires vs exact) and
    ``ideal_wires_tie_fraction``: the fraction of noise-free ADC inputs (ideal wires) that lie
    exactly half an LSB between two codes.
    """
    ideal = rx.program(rx.map_weights(weights, layer_config(rows, m, adc, None)))
    config = layer_config(rows, m, adc, WireConfig(1.0, 1.0))
    mapped = rx.map_weights(weights, config)
    exact = x_int @ mapped.integer_weights
    reference = rx.read_integers(ideal, x_int).outputs
    base = config.noise_parameters()
    r = jnp.asarray(wire_ohms, config.float_dtype)
    # program eagerly under vmap: the circuit solver's own jit is compiled once per crossbar
    # shape and reused by every design; the read is one vmapped, jitted call
    layers = jax.vmap(lambda value: rx.program(
        mapped, jax.random.key(0), base.with_wire_resistance(value)))(r)
    outputs = jax.jit(jax.vmap(lambda layer: rx.read_integers(layer, x_int).outputs))(layers)

    def relative(a, b):
        return np.asarray(jnp.linalg.norm(a - b, axis=(-2, -1)) / jnp.linalg.norm(b))

    # noise-free ADC inputs with ideal wires, in LSB: how many sit exactly on a rounding tie
    codes = np.asarray(adc_inputs(ideal, x_int)) / float(ideal.adc_lsb)
    return {"relative_error": relative(outputs, exact),
            "vs_ideal_wires": relative(outputs, reference),
            "ideal_wires_error": float(relative(reference, exact)),
            "ideal_wires_tie_fraction": float(np.mean(codes - np.floor(codes) == 0.5))}


# --------------------------------------------------------------------------- experiment


def prepare(quick: bool, seed: int, work_dir):
    rng = np.random.default_rng(seed)
    cells = {(n, pattern): cell_conductance(n, n, pattern, rng)
             for n in sorted(set(_sizes(quick)) | {_floating_rows(quick)})
             for pattern in CELL_PATTERNS}
    data = load_dataset("digits", seed=seed, flatten=True)
    rows = _layer_rows(quick)
    inputs = InputConfig(bits=8)
    x = jnp.asarray(np.resize(data.x_test[:_layer_vectors(quick)],
                              (_layer_vectors(quick), 2 * rows)))
    x_int = quantize_inputs(x, input_scale(x, inputs), inputs)
    weights = rx.project_polarized(rng.normal(size=(2 * rows, rows // 4)).astype(np.float32),
                                   max(FRAGMENTS))
    return {"cells": cells, "layer": {rows: (np.asarray(weights), np.asarray(x_int))},
            "work_dir": Path(work_dir)}


def _evaluate_circuit(context, batch):
    n, pattern = batch[0]["rows"], batch[0]["cells"]
    g = context["cells"][(n, pattern)]
    ohms = sorted({p["r_wire_ohms"] for p in batch})
    start = time.perf_counter()
    r = jnp.asarray(ohms, jnp.float32)
    transfer = np.asarray(transfer_matrix(jnp.asarray(g, jnp.float32)[None], r[:, None],
                                          r[:, None]))[:, 0]         # (R, N, N) siemens
    seconds = (time.perf_counter() - start) / len(ohms)
    by_drive = {}
    rows = []
    for point in batch:
        drive = point["drive"]
        if drive not in by_drive:
            by_drive[drive] = current_errors(transfer, g, drive_voltages(n, drive))
        r = point["r_wire_ohms"]
        keep = drive != "all rows" and r == HEATMAP_WIRE_OHMS
        rows.append(_point_metrics(by_drive[drive], ohms.index(r), keep)
                    | {"solve_seconds_per_array": seconds})
    return rows


def _evaluate_floating(context, batch):
    n, drive = batch[0]["rows"], batch[0]["drive"]
    g = context["cells"][(n, "random levels")]
    voltages = drive_voltages(n, drive)
    ideal = voltages @ g
    rows = []
    for point in batch:
        r = point["r_wire_ohms"]
        # floating rows change the circuit: one factorization per driven fragment
        floating = np.stack([nodal_solve(g, read[None], r, floating=read == 0)[2][0]
                             for read in voltages])
        held = nodal_solve(g, voltages, r)[2]          # one factorization, every read
        keep = r == HEATMAP_WIRE_OHMS
        rows.append(_point_metrics(_error_summary(floating - ideal, ideal), (), keep)
                    | {"held_at_0V_relative_error":
                       float(_error_summary(held - ideal, ideal)["relative_error"])})
    return rows


def _evaluate_layer(context, batch):
    rows, adc = batch[0]["rows"], batch[0]["adc"]
    m = int(batch[0]["drive"].split()[1])
    weights, x_int = context["layer"][rows]
    start = time.perf_counter()
    result = layer_errors(weights, jnp.asarray(x_int), rows, m, adc,
                          [p["r_wire_ohms"] for p in batch])
    seconds = time.perf_counter() - start
    return [{"relative_error": float(result["relative_error"][i]),
             "vs_ideal_wires": float(result["vs_ideal_wires"][i]),
             "ideal_wires_error": result["ideal_wires_error"],
             "ideal_wires_tie_fraction": result["ideal_wires_tie_fraction"],
             "seconds_for_sweep": seconds}
            for i in range(len(batch))]


def evaluate(context, batch, seed):
    study = batch[0]["study"]
    if study == "circuit":
        return _evaluate_circuit(context, batch)
    if study == "floating":
        return _evaluate_floating(context, batch)
    if study == "layer":
        return _evaluate_layer(context, batch)
    if study == "heat map":
        return _evaluate_heat_map(context, batch)
    raise ValueError(f"unknown study {study!r}")


# --------------------------------------------------------------------------- report


def heat_map_voltages(conductance, m: int, r_wire_ohms: float) -> dict:
    """The voltage lost across every cell (volts) with all rows driven and with the fragment of
    rows ``0 .. m-1`` (farthest from the sense amplifiers) driven, undriven rows at 0 V.

    Returns ``loss`` (2, N, M): ``V_applied - (V_word - V_bit)`` per cell (the applied voltage
    is 0 on undriven rows); ``currents`` (2, M) amperes from the nodal solve and
    ``solver_mismatch``: their largest difference from :func:`reram_emu.circuit.column_currents`
    relative to the largest current.
    """
    n = conductance.shape[0]
    applied = np.stack([drive_voltages(n, "all rows")[0], drive_voltages(n, f"fragment {m}")[0]])
    word, bit, currents = nodal_solve(conductance, applied, r_wire_ohms)
    reference = np.asarray(column_currents(jnp.asarray(conductance, jnp.float32),
                                           jnp.asarray(applied, jnp.float32),
                                           r_wire_ohms, r_wire_ohms))
    return {"loss": applied[:, :, None] - (word - bit), "currents": currents,
            "solver_mismatch": float(np.max(np.abs(currents - reference))
                                     / np.max(np.abs(currents)))}


def _evaluate_heat_map(context, batch):
    point = batch[0]
    m = int(point["drive"].split()[-1])
    result = heat_map_voltages(context["cells"][(point["rows"], point["cells"])], m,
                               point["r_wire_ohms"])
    context["work_dir"].mkdir(parents=True, exist_ok=True)
    np.savez_compressed(context["work_dir"] / "heat_map.npz", loss=result["loss"],
                        fragment=m, r_wire_ohms=point["r_wire_ohms"])
    loss, mV = result["loss"], 1e3
    return [{"all_rows_max_loss_mV": mV * float(loss[0].max()),
             "all_rows_mean_loss_mV": mV * float(loss[0].mean()),
             "fragment_driven_max_loss_mV": mV * float(loss[1, :m].max()),
             "fragment_driven_mean_loss_mV": mV * float(loss[1, :m].mean()),
             "fragment_undriven_max_mV": mV * float(loss[1, m:].max()),
             "fragment_undriven_min_mV": mV * float(loss[1, m:].min()),
             "solver_mismatch": result["solver_mismatch"]}]


def _plot_heat_map(path_in: Path, path_out: Path) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not path_in.exists():
        return False
    saved = read_npz(path_in, ("loss", "fragment", "r_wire_ohms"),
                     redo="rerun without --resume to recompute it")
    loss, m, r = saved["loss"], int(saved["fragment"]), float(saved["r_wire_ohms"])
    n = loss.shape[1]
    titles = ["all rows driven", f"rows 0..{m - 1} driven (the fragment farthest from the "
                                 "sense amplifiers),\nthe others held at 0 V"]
    figure, axes = plt.subplots(1, 2, figsize=(11.5, 5.0))
    for axis, title, values in zip(axes, titles, loss):
        scale = np.max(np.abs(values)) * 1e3
        image = axis.imshow(values * 1e3, cmap="RdBu_r", vmin=-scale, vmax=scale,
                            interpolation="nearest", aspect="equal")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("bit line j (drivers at j = 0)")
        axis.set_ylabel(f"word line i (sense amplifiers below i = {n - 1})")
        figure.colorbar(image, ax=axis, shrink=0.85,
                        label="V_applied - (V_word - V_bit)  (mV)")
    figure.suptitle(f"Voltage lost across each cell: {n} x {n} array, random 2-bit levels, "
                    f"{r:g} ohm per wire segment, read at {1e3 * READ_VOLTAGE_VOLTS:g} mV",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path_out, dpi=110)
    plt.close(figure)
    return True


def _select(table, /, **where) -> list[dict]:
    """The result rows whose fields equal ``where``."""
    return [r for r in table if all(r.get(k) == v for k, v in where.items())]


def _value(table, key="relative_error", /, **where):
    """``key`` of the first result row matching ``where`` (NaN when there is none)."""
    found = _select(table, **where)
    return found[0][key] if found else np.nan


def _compare(value: float, reference: float) -> str:
    """'smaller', 'larger' or 'about the same' (within 5 %) for two positive numbers."""
    if value < 0.95 * reference:
        return "smaller"
    if value > 1.05 * reference:
        return "larger"
    return "about the same"


def _percent(value: float) -> str:
    return f"{100 * value:.3g} %"


def _ohm_axis(axis, ohms) -> None:
    """Log x axis labelled at the swept wire resistances (ohms), no minor labels."""
    from matplotlib.ticker import NullFormatter
    axis.set_xscale("log")
    axis.set_xticks(list(ohms), [f"{r:g}" for r in ohms])
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel("wire resistance per segment (ohm)")


def report(rows, out_dir, quick) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    circuit = _select(rows, study="circuit")
    sizes = sorted({r["rows"] for r in circuit})
    ohms = sorted({r["r_wire_ohms"] for r in circuit})
    positive = [r for r in ohms if r > 0]
    fragments = sorted({int(r["drive"].split()[1]) for r in circuit
                        if r["drive"].startswith("fragment")})
    drives = ["all rows"] + [f"fragment {m}" for m in fragments]
    dashed = 8 if 8 in fragments else fragments[0]
    r1 = HEATMAP_WIRE_OHMS

    # 1. error vs wire resistance per size (all rows driven; fragment 8 dashed)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.3), sharey=True)
    for axis, pattern in zip(axes, CELL_PATTERNS):
        for n in sizes:
            line, = axis.plot(positive, [_value(circuit, rows=n, cells=pattern, drive="all rows",
                                                r_wire_ohms=r) for r in positive],
                              "o-", label=f"{n} x {n}, all rows")
            axis.plot(positive, [_value(circuit, rows=n, cells=pattern,
                                        drive=f"fragment {dashed}", r_wire_ohms=r)
                                 for r in positive],
                      "x--", color=line.get_color(), label=f"{n} x {n}, fragments of {dashed}")
        _ohm_axis(axis, positive)
        axis.set_yscale("log")
        axis.set_title(f"cells: {pattern}", fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("relative error of the bit-line currents")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_dir / "ir_drop_error.png", dpi=110)
    plt.close(figure)

    # 2. each fragment's error against its position (rows, r1 ohm)
    n_pos = 128 if 128 in sizes else sizes[-1]
    floating = _select(rows, study="floating")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.3), sharey=True)
    for axis, pattern in zip(axes, CELL_PATTERNS):
        for m in fragments:
            errors = _value(circuit, "read_errors", rows=n_pos, cells=pattern,
                            drive=f"fragment {m}", r_wire_ohms=r1)
            if isinstance(errors, list):
                axis.plot(m * (np.arange(len(errors)) + 0.5), errors, ".-", lw=0.8,
                          label=f"fragments of {m}, undriven rows at 0 V")
            found = _select(floating, rows=n_pos, drive=f"fragment {m}", r_wire_ohms=r1)
            if pattern == "random levels" and found and "read_errors" in found[0]:
                errors = found[0]["read_errors"]
                axis.plot(m * (np.arange(len(errors)) + 0.5), errors, ".:", lw=0.8,
                          label=f"fragments of {m}, undriven rows floating")
        axis.axhline(_value(circuit, rows=n_pos, cells=pattern, drive="all rows",
                            r_wire_ohms=r1), color="k", lw=1.2, label="all rows driven")
        axis.set_xlabel(f"rows of the fragment (0 = far end, {n_pos - 1} = next to the "
                        "sense amplifiers)")
        axis.set_title(f"{n_pos} x {n_pos}, {r1:g} ohm per segment, cells: {pattern}",
                       fontsize=10)
        axis.grid(True, alpha=0.3)
    axes[0].set_ylabel("relative error of one read's bit-line currents")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_dir / "ir_drop_position.png", dpi=110)
    plt.close(figure)

    # 3. layer outputs through the read pipeline
    layer = _select(rows, study="layer")
    designs = list(dict.fromkeys(r["drive"] for r in layer))
    if layer:
        figure, axis = plt.subplots(figsize=(7, 4.4))
        for drive in designs:
            for adc, style in (("ideal", "o-"), ("preset", "s--")):
                values = sorted((r["r_wire_ohms"], r["relative_error"])
                                for r in _select(layer, drive=drive, adc=adc)
                                if r["r_wire_ohms"] > 0)
                if values:
                    label = f"FORMS m={drive.split()[1]}, {adc} ADC"
                    line, = axis.plot(*zip(*values), style, label=label)
                    if adc == "preset":
                        axis.axhline(_value(layer, "ideal_wires_error", drive=drive, adc=adc),
                                     color=line.get_color(), lw=0.8, ls=":")
        _ohm_axis(axis, sorted({r["r_wire_ohms"] for r in layer if r["r_wire_ohms"] > 0}))
        axis.set_yscale("log")
        axis.set_ylabel("relative error of the layer outputs\n(vs the exact integer product)")
        n_layer = layer[0]["rows"]
        axis.set_title(f"{2 * n_layer} x {n_layer // 4} polarized layer on two {n_layer} x "
                       f"{n_layer} tiles (dotted: preset ADC, ideal wires)", fontsize=9)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(out_dir / "ir_drop_layer.png", dpi=110)
        plt.close(figure)

    # 4. heat map (node voltages saved by the heat-map point under work/)
    heat_plotted = _plot_heat_map(out_dir / "work" / "heat_map.npz",
                                  out_dir / "ir_drop_heatmap.png")
    heat = (_select(rows, study="heat map") or [{}])[0]

    # ---- numbers for the text, all read from the rows above
    big = sizes[-1]
    zero = max(r["relative_error"] for r in circuit if r["r_wire_ohms"] == 0) \
        if 0.0 in ohms else np.nan
    by_r = [_value(circuit, rows=big, cells="random levels", drive="all rows", r_wire_ohms=r)
            for r in positive]
    by_n = [_value(circuit, rows=n, cells="random levels", drive="all rows", r_wire_ohms=r1)
            for n in sizes]
    on_by_n = [_value(circuit, rows=n, cells="all G_on", drive="all rows", r_wire_ohms=r1)
               for n in sizes]
    monotone_r = all(np.all(np.diff([_value(circuit, rows=n, cells=c, drive=d, r_wire_ohms=r)
                                     for r in ohms]) > 0)
                     for n in sizes for c in CELL_PATTERNS for d in drives)
    monotone_n = all(np.all(np.diff([_value(circuit, rows=n, cells=c, drive=d, r_wire_ohms=r)
                                     for n in sizes]) > 0)
                     for r in positive for c in CELL_PATTERNS for d in drives)
    ratios = [_value(circuit, rows=n, cells=c, drive=f"fragment {m}", r_wire_ohms=r)
              / _value(circuit, rows=n, cells=c, drive="all rows", r_wire_ohms=r)
              for n in sizes for c in CELL_PATTERNS for m in fragments for r in positive]
    frag = {m: _value(circuit, rows=n_pos, cells="random levels", drive=f"fragment {m}",
                      r_wire_ohms=r1) for m in fragments}
    spread = {m: (_value(circuit, "read_error_min", rows=n_pos, cells="random levels",
                         drive=f"fragment {m}", r_wire_ohms=r1),
                  _value(circuit, "read_error_max", rows=n_pos, cells="random levels",
                         drive=f"fragment {m}", r_wire_ohms=r1)) for m in fragments}
    all_pos = _value(circuit, rows=n_pos, cells="random levels", drive="all rows",
                     r_wire_ohms=r1)

    lines = [
        "Relative error of the bit-line currents against ideal wires, FIELD.md section 3 "
        "circuit (word lines driven at column 0, virtual grounds at row N-1, 0-ohm drivers and "
        f"sense amplifiers, undriven rows at 0 V), the FORMS preset's 2-bit cells (R_on = "
        f"{1 / CELL.g_on_siemens / 1e3:g} kohm, on/off {CELL.g_on_siemens / CELL.g_off_siemens:g}"
        f"), read at {READ_VOLTAGE_VOLTS} V. \"fragment m\": every fragment of m rows driven in "
        "turn (FORMS's conversions), error over all those reads.",
        "",
        "What the data shows:",
        "",
        f"- Zero wire resistance gives no error (largest at 0 ohm: {zero:.1e}, float32 "
        f"rounding). The error {'grows' if monotone_r else 'does not always grow'} with the wire "
        f"resistance (every size, pattern and drive{'' if monotone_r else ': not in every case'})"
        f": {big} x {big}, random levels, all rows: "
        + ", ".join(f"{_percent(e)} at {r:g} ohm" for e, r in zip(by_r, positive))
        + f". It {'grows' if monotone_n else 'does not always grow'} with the array size: at "
        f"{r1:g} ohm, random levels " + ", ".join(f"{_percent(e)} ({n})" for e, n in
                                                  zip(by_n, sizes))
        + "; all cells at G_on (worst case) " + ", ".join(f"{_percent(e)} ({n})" for e, n in
                                                         zip(on_by_n, sizes)) + ".",
        f"- Driving one fragment at a time instead of all rows: the error over all fragment "
        f"reads is {min(ratios):.3f} to {max(ratios):.3f} times the all-rows error (every size, "
        f"pattern, m and r > 0), i.e. {_compare(float(np.mean(ratios)), 1.0)}. At {n_pos} x "
        f"{n_pos}, {r1:g} ohm, random levels: all rows {_percent(all_pos)}, "
        + ", ".join(f"m = {m}: {_percent(frag[m])} (single fragments "
                    f"{_percent(spread[m][0])}..{_percent(spread[m][1])})" for m in fragments)
        + ". With undriven rows at 0 V the circuit is linear: a fragment's currents are its rows "
        "of the same transfer matrix, so its relative loss is roughly the loss of its own rows. "
        "Fewer driven rows draw less current, but the bit-line voltage they raise now pushes "
        "current back through the undriven cells into their grounded word lines. What matters is "
        "where a fragment sits (plot below: fragments far from the sense amplifiers lose most), "
        "not how many rows it drives.",
    ]
    if floating:
        held = [r["held_at_0V_relative_error"] for r in floating]
        free = [r["relative_error"] for r in floating]
        n_float = floating[0]["rows"]
        lines.append(
            f"- Leaving the undriven word lines floating ({n_float} x {n_float}, random levels, "
            "scipy nodal solve with one factorization per fragment) gives "
            + ", ".join(f"{_percent(r['relative_error'])} (m = {r['drive'].split()[1]}, "
                        f"{r['r_wire_ohms']:g} ohm; held at 0 V: "
                        f"{_percent(r['held_at_0V_relative_error'])})" for r in floating)
            + f": floating rows give a {_compare(float(np.mean(np.divide(free, held))), 1.0)} "
            f"error (ratio {min(np.divide(free, held)):.2f}..{max(np.divide(free, held)):.2f}), "
            "and again almost no dependence on m. The reverse current into the undriven rows is "
            "gone, but the floating lines still couple the bit lines to each other.")
    if layer:
        ideal = {d: [r["relative_error"] for r in sorted(_select(layer, drive=d, adc="ideal"),
                                                         key=lambda r: r["r_wire_ohms"])]
                 for d in designs}
        layer_ohms = sorted({r["r_wire_ohms"] for r in layer})
        spread_m = max(np.ptp([ideal[d][i] for d in designs]) for i in range(len(layer_ohms)))
        preset_lines = []
        for d in designs:
            found = sorted(_select(layer, drive=d, adc="preset"), key=lambda r: r["r_wire_ohms"])
            if found:
                preset_lines.append(
                    f"m = {d.split()[1]}: {_percent(found[0]['ideal_wires_error'])} with ideal "
                    f"wires ({_percent(found[0]['ideal_wires_tie_fraction'])} of its ADC inputs "
                    "exactly on a half-LSB tie), " + ", ".join(f"{_percent(r['relative_error'])} at "
                                         f"{r['r_wire_ohms']:g} ohm" for r in found))
        n_layer = layer[0]["rows"]
        lsbs = {int(d.split()[1]): adc_lsb_levels(layer_config(n_layer, int(d.split()[1]),
                                                               "preset", None))
                for d in designs}
        lines.append(
            f"- Through the read pipeline ({2 * n_layer} x {n_layer // 4} polarized layer on two "
            f"{n_layer} x {n_layer} tiles, digits inputs, `NoiseParameters.with_wire_resistance` "
            "swept under `jax.vmap`), with an ideal ADC the output error is "
            + ", ".join(f"{_percent(e)} at {r:g} ohm" for e, r in zip(ideal[designs[0]],
                                                                     layer_ohms))
            + f" (m = {designs[0].split()[1]})"
            + (f"; the fragment sizes differ by at most {100 * spread_m:.2g} percentage points "
               "(by superposition the sum of the fragments' reads is the all-rows read, and the "
               "weights, polarized over 16 rows, are the same for every m)"
               if len(designs) > 1 else "")
            + ". With the preset's ADC (worst-case range, LSB "
            + ", ".join(f"{lsb:g}" for lsb in lsbs.values()) + " levels for m = "
            + ", ".join(str(m) for m in lsbs) + "): " + "; ".join(preset_lines)
            + ". At 0 ohm the circuit path reproduces the ideal-wire read exactly; integer "
            "column sums that fall exactly on a half-LSB tie are tipped down by any IR drop at "
            "all (a bias), so the error jumps at the smallest resistance and then stays flat "
            "until the loss exceeds half an LSB.")
    if heat:
        lines.append(
            f"- Heat map ({heat_rows(rows)} x {heat_rows(rows)}, {r1:g} ohm, random levels): "
            f"with all rows driven the cells lose up to {heat['all_rows_max_loss_mV']:.3g} mV of "
            f"the {1e3 * READ_VOLTAGE_VOLTS:g} mV read voltage (mean "
            f"{heat['all_rows_mean_loss_mV']:.3g} mV), growing away from the drivers (column 0) "
            "and from the sense amplifiers (row N-1). With only rows "
            f"0..{HEATMAP_FRAGMENT - 1} driven, those cells lose up to "
            f"{heat['fragment_driven_max_loss_mV']:.3g} mV (mean "
            f"{heat['fragment_driven_mean_loss_mV']:.3g} mV) and the undriven cells carry "
            f"{heat['fragment_undriven_min_mV']:.2g} to {heat['fragment_undriven_max_mV']:.3g} mV "
            "of reverse voltage (bit line above its grounded word line). The scipy nodal solve "
            "behind the map agrees with `circuit.column_currents` (float32) to "
            f"{heat['solver_mismatch']:.1e} of the largest current.")

    def table(pattern):
        out = ["| array | drive | " + " | ".join(f"{r:g} ohm" for r in positive) + " |",
               "|---|---|" + "---|" * len(positive)]
        for n in sizes:
            for drive in drives:
                cells = []
                for r in positive:
                    where = dict(rows=n, cells=pattern, drive=drive, r_wire_ohms=r)
                    text = _percent(_value(circuit, **where))
                    if drive != "all rows":
                        text += (f" ({_percent(_value(circuit, 'read_error_min', **where))}.."
                                 f"{_percent(_value(circuit, 'read_error_max', **where))})")
                    cells.append(text)
                out.append(f"| {n} x {n} | {drive} | " + " | ".join(cells) + " |")
        return "\n".join(out)

    floating_table = ["| array | drive | wire (ohm) | undriven rows floating (single "
                      "fragments) | held at 0 V |", "|---|---|---|---|---|"]
    floating_table += [f"| {r['rows']} x {r['rows']} | {r['drive']} | {r['r_wire_ohms']:g} | "
                       f"{_percent(r['relative_error'])} ({_percent(r['read_error_min'])}.."
                       f"{_percent(r['read_error_max'])}) | "
                       f"{_percent(r['held_at_0V_relative_error'])} |" for r in floating]
    layer_ohms = sorted({r["r_wire_ohms"] for r in layer})
    layer_table = ["| design | ADC | ideal wires | " + " | ".join(f"{r:g} ohm" for r in layer_ohms)
                   + " |", "|---|---|---|" + "---|" * len(layer_ohms)]
    for drive in designs:
        for adc in ("ideal", "preset"):
            found = sorted(_select(layer, drive=drive, adc=adc), key=lambda r: r["r_wire_ohms"])
            if found:
                layer_table.append(
                    f"| FORMS m={drive.split()[1]} | {adc} | "
                    f"{_percent(found[0]['ideal_wires_error'])} | "
                    + " | ".join(_percent(r["relative_error"]) for r in found) + " |")
    plots = [("error vs wire resistance and array size", "ir_drop_error.png"),
             ("error of each fragment vs its position", "ir_drop_position.png")]
    plots += [("voltage lost across the cells", "ir_drop_heatmap.png")] if heat_plotted else []
    plots += [("layer output error", "ir_drop_layer.png")] if layer else []
    return "\n".join(lines) + "\n\n" + "\n\n".join(f"![{a}]({b})" for a, b in plots) + f"""

### Bit-line current error, random levels (in brackets: best..worst single fragment)

{table("random levels")}

### Bit-line current error, all cells at G_on

{table("all G_on")}

### Fragment drive with the undriven rows floating

{chr(10).join(floating_table)}

### Layer outputs through the read pipeline (relative error vs the exact integer product)

{chr(10).join(layer_table)}
"""


def heat_rows(rows) -> int:
    """Rows of the heat-map array (from its point)."""
    found = _select(rows, study="heat map")
    return found[0]["rows"] if found else 0
