"""ngspice export and agreement of the circuit solver with ngspice (the circuit ground truth).

The agreement tests need the ``ngspice`` binary (Debian package ``ngspice``) and are skipped,
with that reason, when it is not on the PATH; the netlist tests run everywhere.
"""

import io

import jax
import numpy as np
import pytest

from reram_emu import spice
from reram_emu.circuit import LAYOUTS, WireConfig, column_currents

needs_ngspice = pytest.mark.skipif(not spice.ngspice_available(),
                                   reason="ngspice binary not found on PATH "
                                          "(apt-get install ngspice)")


def random_case(shape, reads, seed):
    rng = np.random.default_rng(seed)
    conductance = rng.uniform(1e-6, 1e-4, size=shape)
    voltages = rng.uniform(0.0, 0.3, size=(reads, shape[0]))
    return conductance, voltages


def netlist_text(conductance, voltages, wires):
    buffer = io.StringIO()
    spice.write_netlist(buffer, conductance, voltages, wires)
    return buffer.getvalue()


# --- netlist ---------------------------------------------------------------------------------


def test_netlist_elements():
    conductance, voltages = random_case((3, 4), 1, seed=0)
    conductance[1, 2] = 0.0                      # an absent cell is left out
    text = netlist_text(conductance, voltages[0], WireConfig(1.5, 2.5, 10.0, 20.0))
    lines = text.splitlines()
    count = lambda prefix: sum(line.startswith(prefix) for line in lines)  # noqa: E731
    assert count("Vdrive") == 3 and count("Rdrive") == 3
    assert count("Rcell") == 11
    assert count("Rrow") == 3 * 3 and count("Rcol") == 2 * 4
    assert count("Vsense") == 4 and count("Rsense") == 4
    assert ".op" in lines and lines[-1] == ".end"
    assert "Rcell0_0 r0_0 c0_0 " + repr(float(1.0 / conductance[0, 0])) in text
    assert any(line.startswith("wrdata currents0.txt i(vsense0)") for line in lines)


def test_netlist_merges_zero_resistances():
    conductance, voltages = random_case((3, 4), 2, seed=1)
    text = netlist_text(conductance, voltages, WireConfig(0.0, 2.0, 0.0, 0.0))
    assert "Rrow" not in text and "Rdrive" not in text and "Rsense" not in text
    assert "Vdrive0 r0 0 DC" in text            # one node per ideal word line, driven directly
    assert "Vsense3 c2_3 0 DC 0" in text         # ideal virtual ground on the last row
    assert text.count("\nop\n") == 2             # one operating point per read
    assert "alter vdrive0 dc = " in text
    ideal_bit_lines = netlist_text(conductance, voltages, WireConfig(1.0, 0.0, 1.0, 1.0,
                                                                    "driver_lastcol_sense_row0"))
    assert "Rcol" not in ideal_bit_lines and "Rdrive2 s2 r2_3 " in ideal_bit_lines
    assert "Vsense1 c1 x1 DC 0" in ideal_bit_lines


def test_write_netlist_to_path(tmp_path):
    conductance, voltages = random_case((2, 2), 1, seed=2)
    path = tmp_path / "crossbar.cir"
    spice.write_netlist(path, conductance, voltages[0], WireConfig())
    assert path.read_text() == netlist_text(conductance, voltages[0], WireConfig())


@pytest.mark.parametrize("arguments,message", [
    ((np.ones((2, 3)) * 1e-5, np.ones(2), "wires"), "WireConfig"),
    ((np.ones(3) * 1e-5, np.ones(2), WireConfig()), "shape"),
    ((np.ones((2, 3)) * 1e-5, np.ones(3), WireConfig()), "voltages"),
    ((-np.ones((2, 3)), np.ones(2), WireConfig()), ">= 0"),
    ((np.ones((2, 3)) * 1e-5, np.array([np.nan, 1.0]), WireConfig()), "finite"),
])
def test_bad_input(arguments, message):
    with pytest.raises(ValueError, match=message):
        spice.write_netlist(io.StringIO(), *arguments)


def test_missing_binary_is_reported(monkeypatch):
    monkeypatch.setattr(spice, "NGSPICE", "ngspice-not-installed")
    assert not spice.ngspice_available()
    with pytest.raises(spice.NgspiceError, match="not on the PATH"):
        spice.run_ngspice(np.ones((2, 2)) * 1e-5, np.ones(2), WireConfig())


# --- agreement with ngspice ------------------------------------------------------------------


@needs_ngspice
@pytest.mark.parametrize("shape,wires", [
    ((4, 4), WireConfig(1.0, 1.0)),
    ((4, 4), WireConfig(2.5, 1.5, 30.0, 20.0)),
    ((8, 16), WireConfig(2.0, 3.0, 0.0, 0.0)),
    ((8, 16), WireConfig(0.0, 3.0, 50.0, 0.0, "driver_lastcol_sense_row0")),
    ((8, 16), WireConfig(2.0, 0.0, 0.0, 10.0, "driver_col0_sense_row0")),
    ((5, 3), WireConfig(100.0, 200.0, 0.0, 0.0, "driver_lastcol_sense_lastrow")),
])
def test_solver_agrees_with_ngspice(shape, wires):
    conductance, voltages = random_case(shape, reads=3, seed=shape[0] * shape[1])
    reference = spice.run_ngspice(conductance, voltages, wires)
    assert reference.shape == (3, shape[1])
    with jax.enable_x64(True):
        currents = np.asarray(wires.column_currents(conductance, voltages))
    # ngspice prints 16 significant digits; its LU solve agrees to ~1e-14
    np.testing.assert_allclose(currents, reference, rtol=1e-9, atol=1e-12 * reference.max())


@needs_ngspice
def test_single_read_and_all_layouts_agree():
    conductance, voltages = random_case((6, 5), 1, seed=7)
    for layout in LAYOUTS:
        wires = WireConfig(5.0, 8.0, 2.0, 3.0, layout)
        reference = spice.run_ngspice(conductance, voltages[0], wires)
        assert reference.shape == (5,)
        with jax.enable_x64(True):
            currents = np.asarray(column_currents(conductance, voltages[0], *wires.resistances,
                                                  layout=layout))
        np.testing.assert_allclose(currents, reference, rtol=1e-9)
