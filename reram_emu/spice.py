"""ngspice export of a crossbar with IR drop, and a batch runner that reads back its currents.

The netlist follows the same circuit convention as :mod:`reram_emu.circuit`
(FIELD.md section 3): one voltage source per word line (through ``r_driver``),
a resistor of ``1/G`` ohms per cell, ``r_wire_row`` / ``r_wire_col`` ohms per
wire segment, and a 0 V source in series with ``r_sense`` at the sense end of
every bit line, whose current ``i(vsense<j>)`` is the current flowing into that
virtual ground.  Zero resistances are not written as resistors: the nodes they
would join are merged (a word line with ideal wires is a single node, a driver
with zero resistance drives the word-line node directly).  Cells of zero
conductance are left out.

ngspice is used only as an independent ground truth; it is called as
``ngspice -b`` and its currents are read back from ``wrdata`` output with
16 significant digits.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile

import numpy as np

from reram_emu.circuit import WireConfig

__all__ = ["NgspiceError", "ngspice_available", "write_netlist", "run_ngspice"]

NGSPICE = "ngspice"


class NgspiceError(RuntimeError):
    """ngspice is missing, failed, or printed output that could not be parsed."""


def ngspice_available() -> bool:
    """True when the ``ngspice`` binary is on the PATH."""
    return shutil.which(NGSPICE) is not None


def _validated(conductance, voltages, wires: WireConfig):
    if not isinstance(wires, WireConfig):
        raise ValueError(f"wires must be a WireConfig, got {type(wires).__name__}")
    conductance = np.asarray(conductance, dtype=np.float64)
    if conductance.ndim != 2 or conductance.shape[0] < 1 or conductance.shape[1] < 1:
        raise ValueError(f"conductance must have shape (N, M) with N, M >= 1, got "
                         f"{conductance.shape}")
    if not np.all(np.isfinite(conductance)) or np.any(conductance < 0):
        raise ValueError("conductance must be finite and >= 0 siemens")
    voltages = np.asarray(voltages, dtype=np.float64)
    single = voltages.ndim == 1
    voltages = np.atleast_2d(voltages)
    if voltages.ndim != 2 or voltages.shape[1] != conductance.shape[0] or voltages.shape[0] < 1:
        raise ValueError(f"voltages must have shape (N,) or (B, N) with N = "
                         f"{conductance.shape[0]}, got {np.shape(voltages)}")
    if not np.all(np.isfinite(voltages)):
        raise ValueError("voltages must be finite")
    return conductance, voltages, single


def _number(value: float) -> str:
    """A SPICE number with full double precision."""
    return repr(float(value))


def _netlist_lines(conductance, voltages, wires: WireConfig):
    n_rows, n_cols = conductance.shape
    driver_column = n_cols - 1 if "driver_lastcol" in wires.layout else 0
    sense_row = 0 if "sense_row0" in wires.layout else n_rows - 1
    r_row, r_col, r_driver, r_sense = wires.resistances

    def word_node(i, j):
        return f"r{i}" if r_row == 0 else f"r{i}_{j}"

    def bit_node(i, j):
        return f"c{j}" if r_col == 0 else f"c{i}_{j}"

    lines = [
        f"* reram_emu crossbar {n_rows} x {n_cols}, layout {wires.layout}",
        f"* r_wire_row={r_row} r_wire_col={r_col} r_driver={r_driver} r_sense={r_sense} ohms",
    ]
    for i in range(n_rows):
        if r_driver == 0:
            lines.append(f"Vdrive{i} {word_node(i, driver_column)} 0 DC {_number(voltages[0, i])}")
        else:
            lines.append(f"Vdrive{i} s{i} 0 DC {_number(voltages[0, i])}")
            lines.append(f"Rdrive{i} s{i} {word_node(i, driver_column)} {_number(r_driver)}")
    for i in range(n_rows):
        for j in range(n_cols):
            if conductance[i, j] > 0:
                lines.append(f"Rcell{i}_{j} {word_node(i, j)} {bit_node(i, j)} "
                             f"{_number(1.0 / conductance[i, j])}")
    if r_row > 0:
        for i in range(n_rows):
            for j in range(n_cols - 1):
                lines.append(f"Rrow{i}_{j} {word_node(i, j)} {word_node(i, j + 1)} "
                             f"{_number(r_row)}")
    if r_col > 0:
        for i in range(n_rows - 1):
            for j in range(n_cols):
                lines.append(f"Rcol{i}_{j} {bit_node(i, j)} {bit_node(i + 1, j)} {_number(r_col)}")
    for j in range(n_cols):
        if r_sense == 0:
            lines.append(f"Vsense{j} {bit_node(sense_row, j)} 0 DC 0")
        else:
            lines.append(f"Vsense{j} {bit_node(sense_row, j)} x{j} DC 0")
            lines.append(f"Rsense{j} x{j} 0 {_number(r_sense)}")
    lines += [".op", ".control", "set filetype=ascii", "set wr_vecnames", "set wr_singlescale",
              "option numdgt=16"]
    vectors = " ".join(f"i(vsense{j})" for j in range(n_cols))
    for read in range(voltages.shape[0]):
        if read > 0:
            for i in range(n_rows):
                if voltages[read, i] != voltages[read - 1, i]:
                    lines.append(f"alter vdrive{i} dc = {_number(voltages[read, i])}")
        lines.append("op")
        lines.append(f"wrdata currents{read}.txt {vectors}")
    lines += ["quit", ".endc", ".end"]
    return lines


def write_netlist(path_or_file, conductance, voltages, wires: WireConfig) -> None:
    """Write an ngspice netlist of one crossbar read (or several) with IR drop.

    Args:
        path_or_file: a path, or a text file object open for writing.
        conductance: (N, M) cell conductances (siemens).
        voltages: (N,) word-line voltages (volts), or (B, N) for B successive
            reads (``alter`` + ``op`` in the ``.control`` block).
        wires: wire, driver and sense resistances and layout.

    The netlist holds a ``.op`` card; its ``.control`` block (run by
    ``ngspice -b``) performs one operating-point analysis per read and writes
    the bit-line currents ``i(vsense<j>)`` (amperes, into each virtual ground)
    with ``wrdata`` to ``currents<read>.txt`` in the working directory, then quits.
    """
    conductance, voltages, _ = _validated(conductance, voltages, wires)
    text = "\n".join(_netlist_lines(conductance, voltages, wires)) + "\n"
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "w") as handle:
            handle.write(text)
    else:
        path_or_file.write(text)


def _read_wrdata(path, n_cols):
    """Currents from one ``wrdata`` file written with ``wr_vecnames``."""
    with open(path) as handle:
        header = handle.readline().split()
        values = handle.readline().split()
    columns = [header.index(f"i(vsense{j})") for j in range(n_cols)]
    return np.array([float(values[column]) for column in columns])


def run_ngspice(conductance, voltages, wires: WireConfig, *, timeout_s: float = 300.0):
    """Solve the crossbar with ``ngspice -b`` and return the bit-line currents.

    Args:
        conductance: (N, M) siemens.
        voltages: (N,) or (B, N) volts.
        wires: resistances and layout.
        timeout_s: wall-clock limit for ngspice (seconds).

    Returns:
        (M,) or (B, M) currents (amperes) into the virtual grounds, float64.

    Raises:
        NgspiceError: ngspice is not installed, failed, or its output is unreadable.
    """
    conductance, voltages, single = _validated(conductance, voltages, wires)
    if not ngspice_available():
        raise NgspiceError("the ngspice binary is not on the PATH (apt-get install ngspice)")
    n_cols = conductance.shape[1]
    with tempfile.TemporaryDirectory(prefix="reram_emu_ngspice_") as directory:
        netlist = os.path.join(directory, "crossbar.cir")
        buffer = io.StringIO()
        write_netlist(buffer, conductance, voltages, wires)
        with open(netlist, "w") as handle:
            handle.write(buffer.getvalue())
        try:
            completed = subprocess.run([NGSPICE, "-b", netlist], cwd=directory,
                                       capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as error:
            raise NgspiceError(f"ngspice did not finish within {timeout_s} s") from error
        outputs = [os.path.join(directory, f"currents{read}.txt")
                   for read in range(voltages.shape[0])]
        if completed.returncode != 0 or not all(os.path.exists(path) for path in outputs):
            raise NgspiceError(f"ngspice failed (exit status {completed.returncode}):\n"
                               f"{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}")
        try:
            currents = np.stack([_read_wrdata(path, n_cols) for path in outputs])
        except (ValueError, IndexError) as error:
            raise NgspiceError(f"could not parse ngspice output: {error}") from error
    return currents[0] if single else currents
