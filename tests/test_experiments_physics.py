"""The ir_drop and zero_skip experiments: their evaluate on tiny points, checked against
independent computations and physical expectations, and one pass through the runner each."""

import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reram_emu as rx
from reram_emu.circuit import transfer_matrix
from reram_emu.datasets import load_dataset
from reram_emu.experiments import ir_drop, zero_skip
from reram_emu.experiments.runner import run_experiment
from reram_emu.models import mlp

# --------------------------------------------------------------------------- ir_drop


def ir_context(tmp_path, sizes=(8, 16), layer_rows=None, seed=0):
    rng = np.random.default_rng(seed)
    cells = {(n, p): ir_drop.cell_conductance(n, n, p, rng)
             for n in sizes for p in ir_drop.CELL_PATTERNS}
    context = {"cells": cells, "work_dir": tmp_path / "work", "layer": {}}
    if layer_rows:
        x = rng.integers(0, 256, size=(6, 2 * layer_rows))
        w = np.asarray(rx.project_polarized(
            rng.normal(size=(2 * layer_rows, layer_rows // 4)).astype(np.float32), 16))
        context["layer"][layer_rows] = (w, x)
    return context


def circuit_points(n, cells, ohms=(0.0, 0.3, 1.0, 10.0)):
    drives = ["all rows", "fragment 4", "fragment 8"]
    return [{"study": "circuit", "rows": n, "cells": cells, "drive": d, "r_wire_ohms": r}
            for d in drives for r in ohms]


def test_ir_drop_error_is_zero_without_wires_and_grows_with_resistance_and_size(tmp_path):
    context = ir_context(tmp_path)
    results = {}
    for n in (8, 16):
        batch = circuit_points(n, "all G_on")
        for point, metrics in zip(batch, ir_drop.evaluate(context, batch, 0)):
            results[(n, point["drive"], point["r_wire_ohms"])] = metrics
    for (n, drive, r), metrics in results.items():
        if r == 0.0:
            assert metrics["relative_error"] < 1e-6
        else:
            assert metrics["relative_error"] > 1e-4
    for n in (8, 16):
        for drive in ("all rows", "fragment 4", "fragment 8"):
            errors = [results[(n, drive, r)]["relative_error"] for r in (0.0, 0.3, 1.0, 10.0)]
            assert np.all(np.diff(errors) > 0)
    for drive in ("all rows", "fragment 4"):
        for r in (0.3, 1.0, 10.0):
            assert results[(16, drive, r)]["relative_error"] > \
                1.5 * results[(8, drive, r)]["relative_error"]
    # held-at-0-V rows: one fragment at a time is not better than all rows (measured finding),
    # and the fragment farthest from the sense amplifiers loses more than the nearest one
    for n in (8, 16):
        for r in (0.3, 1.0, 10.0):
            assert results[(n, "fragment 4", r)]["relative_error"] >= \
                0.95 * results[(n, "all rows", r)]["relative_error"]
        reads = results[(n, "fragment 4", 1.0)]["read_errors"]
        assert len(reads) == n // 4 and reads[0] > reads[-1]
        assert results[(n, "fragment 4", 1.0)]["read_error_max"] == pytest.approx(max(reads),
                                                                               rel=1e-5)


def test_current_errors_against_a_direct_computation():
    rng = np.random.default_rng(4)
    g = ir_drop.cell_conductance(8, 8, "random levels", rng)
    with jax.enable_x64(True):
        t = np.asarray(transfer_matrix(jnp.asarray(g), 2.0, 2.0))
    voltages = ir_drop.drive_voltages(8, "fragment 4")
    assert voltages.shape == (2, 8) and np.all(voltages.sum(axis=1) == 4 * 0.2)
    result = ir_drop.current_errors(t, g, voltages)
    ideal, actual = voltages @ g, voltages @ t
    assert result["relative_error"] == pytest.approx(
        np.linalg.norm(actual - ideal) / np.linalg.norm(ideal), rel=1e-12)
    per_read = [np.linalg.norm(actual[k] - ideal[k]) / np.linalg.norm(ideal[k]) for k in (0, 1)]
    np.testing.assert_allclose(result["read_errors"], per_read, rtol=1e-12)
    # IR drop only loses current: every bit line collects less than with ideal wires
    assert np.all(actual < ideal)


def test_nodal_solve_agrees_with_the_transfer_matrix_and_floating_rows_differ():
    rng = np.random.default_rng(5)
    g = rng.uniform(1e-6, 1e-4, size=(10, 7))
    voltages = rng.uniform(0, 0.2, size=(3, 10))
    word, bit, currents = ir_drop.nodal_solve(g, voltages, 1.5)
    with jax.enable_x64(True):
        reference = voltages @ np.asarray(transfer_matrix(jnp.asarray(g), 1.5, 1.5))
    np.testing.assert_allclose(currents, reference, rtol=1e-9)
    # node voltages: every cell current (siemens x volts) summed down a bit line is its output
    np.testing.assert_allclose(np.sum(g * (word - bit), axis=1), currents, rtol=1e-9)
    assert np.all(bit[:, -1, :] == 0) and np.allclose(word[:, :, 0], voltages)
    # one row driven, the others floating: their word lines float between 0 V and the drive
    read = np.zeros(10)
    read[0] = 0.2
    word_f, _, floating = ir_drop.nodal_solve(g, read[None], 1.5, floating=read == 0)
    _, _, held = ir_drop.nodal_solve(g, read[None], 1.5)
    assert np.all((word_f[0, 1:-1] > 0) & (word_f[0, 1:-1] < 0.2))
    assert np.allclose(word_f[0, -1], 0.0, atol=1e-15)  # its cells all end at 0 V
    assert not np.allclose(floating, held, rtol=1e-3)
    ideal = read @ g
    assert np.linalg.norm(floating - ideal) < np.linalg.norm(held - ideal)
    with pytest.raises(ValueError, match="r_wire_ohms"):
        ir_drop.nodal_solve(g, voltages, 0.0)
    with pytest.raises(ValueError, match="voltages"):
        ir_drop.nodal_solve(g, voltages[:, :5], 1.0)


def test_heat_map_voltage_loss(tmp_path):
    context = ir_context(tmp_path, sizes=(8,))
    point = {"study": "heat map", "rows": 8, "cells": "random levels",
             "drive": "all rows vs fragment 4", "r_wire_ohms": 1.0}
    metrics, = ir_drop.evaluate(context, [point], 0)
    saved = np.load(context["work_dir"] / "heat_map.npz")
    loss = saved["loss"]  # volts
    assert loss.shape == (2, 8, 8) and int(saved["fragment"]) == 4
    # the cell at the driver and the sense amplifier (row 7, column 0) sees the full read
    # voltage (0-ohm driver and sense); every other driven cell loses some, and all rows
    # driven lose more than 4 rows
    assert abs(loss[0, 7, 0]) < 1e-12
    assert np.all(loss[0, :7] > 0) and np.all(loss[0, 7, 1:] > 0)
    assert np.all(loss[1, :4] > 0) and loss[0].max() > loss[1, :4].max()
    assert metrics["all_rows_max_loss_mV"] == pytest.approx(1e3 * loss[0].max())
    assert metrics["solver_mismatch"] < 1e-4


def test_layer_through_the_pipeline_sweeps_wire_resistance(tmp_path):
    context = ir_context(tmp_path, sizes=(), layer_rows=16)
    batch = [{"study": "layer", "rows": 16, "cells": "polarized random weights",
              "drive": "fragment 8", "adc": "ideal", "r_wire_ohms": r} for r in (0.0, 1.0, 10.0)]
    metrics = ir_drop.evaluate(context, batch, 0)
    errors = [m["relative_error"] for m in metrics]
    assert errors[0] < 1e-5 and errors[0] < errors[1] < errors[2]
    assert metrics[1]["ideal_wires_error"] < 1e-5
    with pytest.raises(ValueError, match="adc"):
        ir_drop.layer_config(16, 8, "perfect", None)


def test_bad_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="cell pattern"):
        ir_drop.cell_conductance(4, 4, "half on", rng)
    with pytest.raises(ValueError, match="divide"):
        ir_drop.drive_voltages(10, "fragment 4")
    with pytest.raises(ValueError, match="drive"):
        ir_drop.drive_voltages(8, "every other row")


def test_ir_drop_through_the_runner(tmp_path):
    points = (circuit_points(8, "random levels") + circuit_points(8, "all G_on")
              + [{"study": "floating", "rows": 8, "cells": "random levels",
                  "drive": "fragment 4", "r_wire_ohms": 1.0},
                 {"study": "heat map", "rows": 8, "cells": "random levels",
                  "drive": "all rows vs fragment 4", "r_wire_ohms": 1.0}])
    module = types.SimpleNamespace(
        NAME="ir_drop", DESCRIPTION=ir_drop.DESCRIPTION, points=lambda quick: points,
        group=ir_drop.group, evaluate=ir_drop.evaluate, report=ir_drop.report,
        prepare=lambda quick, seed, work: {**ir_context(tmp_path, sizes=(8,)), "work_dir": work})
    record = run_experiment(module, tmp_path / "out", quick=True, progress=False)
    assert len(record["rows"]) == len(points)
    floating, = [r for r in record["rows"] if r["study"] == "floating"]
    assert 0 < floating["relative_error"] < floating["held_at_0V_relative_error"]
    summary = (tmp_path / "out" / "summary.md").read_text()
    for plot in ("ir_drop_error.png", "ir_drop_position.png", "ir_drop_heatmap.png"):
        assert plot in summary and (tmp_path / "out" / plot).stat().st_size > 10_000
    assert "ir_drop_layer.png" not in summary  # no layer points, no layer plot
    assert "What the data shows" in summary
    assert not re.search(r"\bnan\b", summary.split("###")[0])


# --------------------------------------------------------------------------- zero_skip


def numpy_cycles(x, m):
    """Independent count: per fragment of m inputs (zero-padded), the bit length of the
    largest input, by testing the bits one by one."""
    x = np.asarray(x, np.int64)
    v, k = x.shape
    padded = np.zeros((v, -(-k // m) * m), np.int64)
    padded[:, :k] = x
    top = padded.reshape(v, -1, m).max(axis=-1)
    cycles = np.zeros_like(top)
    for bit in range(31):
        cycles = np.where(top >= (1 << bit), bit + 1, cycles)
    return cycles


def test_fragment_cycles_on_a_hand_made_input():
    x = np.array([[0, 0, 0, 0, 1, 0, 0, 0, 255, 3, 0, 0, 16, 17, 0, 1],
                  [0, 0, 0, 128, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(zero_skip.fragment_cycles(x, 8, 4), [[0, 1, 8, 5],
                                                                       [8, 0, 2, 0]])
    np.testing.assert_array_equal(zero_skip.fragment_cycles(x, 8, 8), [[1, 8], [8, 2]])
    np.testing.assert_array_equal(zero_skip.fragment_cycles(x, 8, 16), [[8], [8]])
    # K not a multiple of m: the last fragment is padded with unused (zero) rows
    np.testing.assert_array_equal(zero_skip.fragment_cycles(x[:, :10], 8, 4),
                                  [[0, 1, 8], [8, 0, 2]])


def test_fragment_cycles_match_numpy_and_grow_with_m():
    rng = np.random.default_rng(6)
    # ReLU-like: many zeros, magnitudes spread over the 16 bits
    x = np.where(rng.random((40, 256)) < 0.5, 0,
                 np.minimum(rng.geometric(0.002, (40, 256)), 2 ** 16 - 1))
    means = []
    by_size = zero_skip.fragment_cycles_by_size(x, 16, zero_skip.FRAGMENT_ROWS)
    for m in zero_skip.FRAGMENT_ROWS:
        cycles = np.asarray(by_size[m])
        np.testing.assert_array_equal(cycles, numpy_cycles(x, m))
        means.append(cycles.mean())
    assert np.all(np.diff(means) >= 0) and means[-1] > means[0]
    odd = x[:, :37]
    for m in (4, 16, 128):
        np.testing.assert_array_equal(zero_skip.fragment_cycles(odd, 16, m), numpy_cycles(odd, m))


def test_cycle_statistics_and_quantization():
    rng = np.random.default_rng(7)
    activations = {"fc1": rng.random((5, 8)), "fc2": np.maximum(rng.normal(size=(5, 12)), 0)}
    x_int = zero_skip.quantized_layer_inputs(activations, 8, "per_vector")
    assert all(int(jnp.max(x, axis=1).min()) == 255 for x in x_int.values())
    stats = zero_skip.cycle_statistics(x_int, 8, (4, 8), "fc1", images=5)[4]
    c1, c2 = numpy_cycles(x_int["fc1"], 4), numpy_cycles(x_int["fc2"], 4)
    assert stats["cycles fc1"] == pytest.approx(c1.mean())
    assert stats["cycles hidden layers"] == pytest.approx(c2.mean())
    assert stats["cycles"] == pytest.approx((c1.sum() + c2.sum()) / (c1.size + c2.size))
    assert stats["saved"] == pytest.approx(1 - stats["cycles"] / 8)
    assert stats["fragment reads per image"] == pytest.approx((c1.size + c2.size) / 5)
    static = zero_skip.quantized_layer_inputs(activations, 8, "static",
                                              {"fc1": 1 / 255, "fc2": 10.0})
    assert int(static["fc2"].max()) <= 1  # a coarse step: few bits, few cycles
    with pytest.raises(ValueError, match="calibrated step"):
        zero_skip.quantized_layer_inputs(activations, 8, "static", {"fc1": 0.1})
    with pytest.raises(ValueError, match="scale"):
        zero_skip.quantized_layer_inputs(activations, 8, "per_layer")
    with pytest.raises(ValueError, match="m must be"):
        zero_skip.fragment_cycles(np.zeros((2, 4), int), 8, 0)
    with pytest.raises(TypeError, match="integers"):
        zero_skip.fragment_cycles(np.zeros((2, 4)), 8, 4)
    with pytest.raises(ValueError, match="lie in"):
        zero_skip.fragment_cycles(np.full((2, 4), 256), 8, 4)


def test_zero_skip_through_the_runner(tmp_path):
    """evaluate and report on real digits activations of an untrained small MLP."""
    def prepare(quick, seed, work):
        data = load_dataset("digits", seed=seed, flatten=True)
        model = mlp((64, 32, 10))
        params = model.init(jax.random.key(seed))
        record = zero_skip._record(model, params, data, data.x_train[:100])
        return {"digits MLP": {**record, "accuracy": 0.1}}

    module = types.SimpleNamespace(
        NAME="zero_skip", DESCRIPTION=zero_skip.DESCRIPTION, group=zero_skip.group,
        points=lambda quick: [p for p in zero_skip.points(True) if p["m"] in (2, 8, 128)],
        prepare=prepare, evaluate=zero_skip.evaluate, report=zero_skip.report)
    record = run_experiment(module, tmp_path, quick=True, progress=False)
    rows = record["rows"]
    assert len(rows) == 2 * 2 * 3
    for bits in (8, 16):
        for scale in ("static", "per_vector"):
            series = sorted((r["m"], r["cycles"]) for r in rows
                            if r["input_bits"] == bits and r["scale"] == scale)
            cycles = [c for _, c in series]
            assert 0 < cycles[0] <= cycles[1] <= cycles[2] <= bits
    summary = (tmp_path / "summary.md").read_text()
    assert "zero_skip_cycles.png" in summary and (tmp_path / "zero_skip_cycles.png").exists()
    assert "first layer" in summary and "hidden layers" in summary
