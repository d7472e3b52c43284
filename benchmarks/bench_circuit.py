"""Benchmark: IR-drop transfer matrix of square crossbars, reram_emu vs scipy sparse LU.

For each size N (an N x N crossbar, conductances uniform in [1e-6, 1e-4] S,
1 ohm wires, ideal driver and sense: wire-to-cell conductance ratio >= 1e4),
the same transfer matrix T (I = V @ T) is computed by

* ``jax f64``: :func:`reram_emu.circuit.transfer_matrix` in float64, jitted, after warm-up;
* ``jax f32``: the same in float32 (the default: no refinement);
* ``jax f32+ref``: float32 with one step of iterative refinement;
* ``scipy splu``: nodal equations (2NM - N - M unknowns, the driven and
  virtual-ground nodes eliminated) assembled with scipy.sparse, one sparse LU
  factorization (``splu``, MMD_AT_PLUS_A ordering) and N right-hand sides
  solved in chunks (SuperLU's multi-column solve slows down with wide blocks;
  ``--scipy-chunk`` sets the width).  Assembly is included in its time.

The methods run interleaved, repetition by repetition, in the same process, so
background load affects them alike.  Each method is repeated up to
``--repeats`` times while its accumulated time stays under ``--budget-s``
(at least twice unless one run exceeds the budget).  Printed: median, min and
max wall time (seconds), the speed-up (scipy median / method median) and the
relative error max |T - T_scipy| / max |T_scipy|.

Usage:  python benchmarks/bench_circuit.py [--sizes 64,128,256,512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sparse  # noqa: E402
import scipy.sparse.linalg as sparse_linalg  # noqa: E402

from machine import describe  # noqa: E402 (benchmarks/machine.py, beside this script)
from reram_emu.circuit import transfer_matrix  # noqa: E402


def scipy_transfer_matrix(conductance, r_wire, chunk):
    """Reference T by sparse LU of the nodal equations (ideal driver and sense, 1 LU)."""
    n_rows, n_cols = conductance.shape
    nodes = n_rows * n_cols
    word = np.arange(nodes).reshape(n_rows, n_cols)
    bit = word + nodes
    wire = 1.0 / r_wire
    first = [word.ravel(), word[:, :-1].ravel(), bit[:-1].ravel()]
    second = [bit.ravel(), word[:, 1:].ravel(), bit[1:].ravel()]
    value = [conductance.ravel(), np.full(n_rows * (n_cols - 1), wire),
             np.full((n_rows - 1) * n_cols, wire)]
    a, b, g = np.concatenate(first), np.concatenate(second), np.concatenate(value)
    rows = np.concatenate([a, b, a, b])
    cols = np.concatenate([a, b, b, a])
    vals = np.concatenate([g, g, -g, -g])
    laplacian = sparse.csr_matrix((vals, (rows, cols)), shape=(2 * nodes, 2 * nodes))
    driven = word[:, 0]            # held at V[i] by the ideal drivers
    sensed = bit[-1]               # held at 0 V by the virtual grounds
    fixed = np.zeros(2 * nodes, bool)
    fixed[driven] = True
    fixed[sensed] = True
    free = np.flatnonzero(~fixed)
    system = laplacian[free][:, free].tocsc()
    coupling = laplacian[free][:, driven]          # (free, N)
    factor = sparse_linalg.splu(system, permc_spec="MMD_AT_PLUS_A")
    right_hand_sides = -coupling.toarray()         # one per driven word line (V = e_k)
    solution = np.empty_like(right_hand_sides)
    for start in range(0, n_rows, chunk):
        solution[:, start:start + chunk] = factor.solve(right_hand_sides[:, start:start + chunk])
    # current into each virtual ground = -(row of the Laplacian) . (node voltages)
    sense_rows = laplacian[sensed]
    full = np.zeros((2 * nodes, n_rows))
    full[free] = solution
    full[driven, np.arange(n_rows)] = 1.0
    return np.asarray(-(sense_rows @ full)).T


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def keep_going(samples, repeats, budget_s):
    """Repeat while under the budget; at least twice unless one run exceeds it."""
    if not samples:
        return True
    if len(samples) >= repeats:
        return False
    if len(samples) < 2:
        return samples[-1] < budget_s
    return sum(samples) < budget_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,256,512",
                        help="comma-separated crossbar sizes N (N x N)")
    parser.add_argument("--repeats", type=int, default=5, help="most repetitions per method")
    parser.add_argument("--budget-s", type=float, default=10.0,
                        help="stop repeating a method at a size after this much time")
    parser.add_argument("--scipy-chunk", type=int, default=4,
                        help="right-hand sides per SuperLU solve call")
    parser.add_argument("--r-wire", type=float, default=1.0, help="wire resistance (ohms)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size]

    methods = {"jax f64": (jnp.float64, 0), "jax f32": (jnp.float32, 0),
               "jax f32+ref": (jnp.float32, 1)}
    print(describe())
    print(f"# load average {os.getloadavg()[0]:.1f}; conductance U[1e-6, 1e-4] S, "
          f"r_wire = {args.r_wire} ohm, ideal driver/sense")
    print(f"{'N':>5} {'method':<12} {'median_s':>9} {'min_s':>9} {'max_s':>9} "
          f"{'runs':>4} {'speedup':>8} {'rel_err':>9}")
    for size in sizes:
        rng = np.random.default_rng(size)
        conductance = rng.uniform(1e-6, 1e-4, (size, size))
        runners = {}
        for name, (dtype, steps) in methods.items():
            function = jax.jit(lambda g, steps=steps: transfer_matrix(
                g, args.r_wire, args.r_wire, 0.0, 0.0, refinement_steps=steps))
            argument = jnp.asarray(conductance, dtype)
            function(argument).block_until_ready()      # compile and warm up
            runners[name] = lambda function=function, argument=argument: (
                function(argument).block_until_ready())
        runners["scipy splu"] = lambda: scipy_transfer_matrix(conductance, args.r_wire,
                                                              args.scipy_chunk)
        times = {name: [] for name in runners}
        results = {}
        while any(keep_going(times[name], args.repeats, args.budget_s) for name in runners):
            for name, runner in runners.items():
                if keep_going(times[name], args.repeats, args.budget_s):
                    elapsed, result = timed(runner)
                    times[name].append(elapsed)
                    results[name] = np.asarray(result, np.float64)
        reference = results["scipy splu"]
        scipy_median = statistics.median(times["scipy splu"])
        for name, samples in times.items():
            median = statistics.median(samples)
            error = np.abs(results[name] - reference).max() / np.abs(reference).max()
            speedup = "" if name == "scipy splu" else f"{scipy_median / median:8.1f}x"
            print(f"{size:>5} {name:<12} {median:9.4f} {min(samples):9.4f} {max(samples):9.4f} "
                  f"{len(samples):>4} {speedup:>9} {error:9.1e}", flush=True)


if __name__ == "__main__":
    main()
