"""Accuracy of the trained digits MLP vs device variation and vs read noise, per mapping.

The 64-128-64-10 MLP trained on scikit-learn's digits (:func:`~reram_emu.experiments.trained.
digits_mlp`) is read through the emulator with one non-ideality swept at a time:

* log-normal device-to-device variation (``variation_sigma``, drawn once per programming), and
* relative read noise per cell and read (``read_noise_sigma``, drawn anew per conversion),

for each signed-weight mapping: FORMS at fragment m = 4, 8, 16 (polarized fragments; the
model polarized by ADMM at that m), ISAAC (offset encoding with a unit column) and PRIME
(differential crossbars), the last two reading the float (unpolarized) model. Every design
stores 8-bit signed weights and reads 8-bit unsigned inputs bit-serially (1-bit DAC) with a
fixed per-layer input step calibrated on 500 training images; the designs differ in what the
mapping implies: FORMS 2-bit cells, m rows per conversion and a log2(m)+1-bit ADC whose LSB is
one conductance level (sums above full scale clip, as :func:`~reram_emu.experiments.trained.
forms_config`); ISAAC 2-bit cells, 128 rows per conversion, its 8-bit worst-case ADC (with the
flip encoding it codes every sum exactly); PRIME 4-bit cells, all rows per conversion and its
6-bit ADC with an LSB of one level (signed, clipping). Measured without noise on the quick
model: PRIME's 6-bit ADC at its worst-case range (LSB covering all rows at full level) reads
9.6 % (chance), at an LSB of one level 97.8 %; its 3-bit DAC with that ADC clips more sums
(91.1 %), so PRIME is read bit-serially like the others.

Each key programs every layer once (variation) and draws the read noise; the same keys serve
every sigma and mapping (common random numbers, so curves differ by the noise level, not by
the draw). The points of one group (:func:`group`) are one :func:`reram_emu.sweeps.sweep`: a
single jit of ``vmap`` over the sigma values and the keys, so the sigmas are traced numbers
and never recompile. For FORMS the two axes compile separately because they differ in
structure, not in numbers: a traced read-noise sigma makes every read draw one Gaussian per
ADC conversion even at sigma 0, which made FORMS m = 8 about 5x slower than the noise-free
read (measured: 1.17 vs 0.21 s per key and setting, 450 images, loaded 2-core machine), so
its variation sweep programs with the traced sigma and reads without noise, and its
read-noise sweep programs ideally and reads with the traced sigma (:func:`correct_counter`).
ISAAC and PRIME convert once per 128 or more rows, so their draws cost little (ISAAC: 0.28
vs 0.25 s) and each is one sweep over both axes (one compilation instead of two). Reported
per point: mean accuracy over keys with its 95 % Student-t interval.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import training
from ..config import ADCConfig, CrossbarConfig, InputConfig, WeightConfig, preset
from ..nn import analog
from ..sweeps import noise_points, sweep
from .trained import INPUT_BITS, digits_mlp, forms_config

NAME = "noise_sensitivity"
DESCRIPTION = ("digits MLP accuracy vs device variation and read noise, FORMS m=4/8/16 vs "
               "ISAAC vs PRIME, 95 % bands over noise keys")

MAPPINGS = ("FORMS m=4", "FORMS m=8", "FORMS m=16", "ISAAC", "PRIME")
QUICK_MAPPINGS = ("FORMS m=8", "ISAAC", "PRIME")

#: noise axis name -> the NoiseParameters field it sweeps
AXES = {"variation": "variation_sigma", "read noise": "read_noise_sigma"}

SETTINGS = {
    True: {"mappings": QUICK_MAPPINGS, "keys": 4, "images": 450,
           "sigmas": {"variation": (0.0, 0.1, 0.2, 0.4),
                      "read noise": (0.0, 0.05, 0.1, 0.2)}},
    False: {"mappings": MAPPINGS, "keys": 20, "images": 450,
            "sigmas": {"variation": (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5),
                       "read noise": (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)}},
}

#: points evaluated together per device in a sweep (memory bound: keys x images x chunk)
SWEEP_CHUNK = 2
#: training images that set the fixed per-layer input steps
CALIBRATION_IMAGES = 500


def fragment_rows(mapping: str) -> int | None:
    """FORMS's fragment size m of a mapping name, None for ISAAC and PRIME."""
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown mapping {mapping!r}; known: {MAPPINGS}")
    return int(mapping.split("m=")[1]) if mapping.startswith("FORMS") else None


def mapping_config(mapping: str) -> CrossbarConfig:
    """The crossbar configuration a mapping is read with (see the module docstring)."""
    m = fragment_rows(mapping)
    if m is not None:
        return forms_config(m)
    inputs = InputConfig(bits=INPUT_BITS)
    if mapping == "ISAAC":
        return preset("isaac").replace(weights=WeightConfig(bits=8), inputs=inputs)
    return preset("prime").replace(weights=WeightConfig(bits=8), inputs=inputs,
                                   adc=ADCConfig(bits=6, range="fixed"))


def points(quick: bool) -> list[dict]:
    """One point per mapping, noise axis and sigma (sigma 0 appears on both axes)."""
    setting = SETTINGS[bool(quick)]
    return [{"mapping": mapping, "noise": axis, "sigma": float(sigma)}
            for mapping in setting["mappings"] for axis in AXES
            for sigma in setting["sigmas"][axis]]


#: mappings whose two noise axes are swept (and compiled) separately: many conversions per
#: product, so drawing read noise at every variation point would cost most of the sweep
SPLIT_AXES = ("FORMS m=4", "FORMS m=8", "FORMS m=16")


def group(point: dict):
    """The points evaluated by one compiled sweep: a FORMS mapping's points of one noise axis,
    or all points of ISAAC or PRIME (see the module docstring)."""
    if point["mapping"] in SPLIT_AXES:
        return point["mapping"], point["noise"]
    return point["mapping"], "both"


def configuration(quick: bool) -> dict:
    setting = SETTINGS[bool(quick)]
    return {"model": "MLP 64-128-64-10 on scikit-learn digits (trained.digits_mlp)",
            "models read": "FORMS: polarized at its m (ADMM, 8-bit weights); ISAAC, PRIME: the "
                           "float baseline (8-bit weights by the mapping)",
            "inputs": f"{INPUT_BITS}-bit unsigned, 1-bit DAC, fixed per-layer step from "
                      f"{CALIBRATION_IMAGES} training images (99.99th percentile)",
            "keys": setting["keys"], "test_images": setting["images"],
            "sigmas": {axis: list(values) for axis, values in setting["sigmas"].items()},
            "variation": "log-normal, relative, drawn once per programming (key)",
            "read_noise": "relative Gaussian per cell and read",
            "interval": "95 % Student-t over keys",
            "mappings": {m: repr(mapping_config(m)) for m in setting["mappings"]}}


def prepare(quick: bool, seed: int, work_dir, *, images: int | None = None,
            keys: int | None = None, mappings=None):
    """Train or load the digits MLP and its polarized copies, then :func:`build_context`.

    Args:
      images, keys, mappings: override the setting's test-image count, key count and mappings
        (small values for tests).
    """
    setting = SETTINGS[bool(quick)]
    mappings = tuple(setting["mappings"] if mappings is None else mappings)
    for mapping in mappings:
        fragment_rows(mapping)
    n_images = setting["images"] if images is None else int(images)
    ms = tuple(sorted({m for m in map(fragment_rows, mappings) if m is not None}))
    trained = digits_mlp(Path(work_dir), fragment_rows=ms, seed=seed, quick=quick)
    params = {mapping: trained.polarized[fragment_rows(mapping)] if fragment_rows(mapping)
              else trained.float_params for mapping in mappings}
    return build_context(trained.model, params, trained.data.x_test[:n_images],
                         trained.data.y_test[:n_images], trained.calibration_x,
                         setting["keys"] if keys is None else keys)


def build_context(model, params: dict, x, y, calibration_x, keys: int) -> dict:
    """Everything :func:`evaluate` needs, for any model.

    Args:
      model: a :class:`~reram_emu.models.Network` (its ``apply`` is put on crossbars).
      params: mapping name -> the parameters it reads (FORMS: polarized at its m; weights that
        break a fragment's sign are projected by the mapping).
      x, y: test images (flat) and labels.
      calibration_x: images whose ideal forward sets each layer's fixed input step.
      keys: noise keys per point (>= 1).
    """
    if not isinstance(keys, (int, np.integer)) or isinstance(keys, bool) or keys < 1:
        raise ValueError(f"keys must be an integer >= 1, got {keys!r}")
    x, y = np.asarray(x, np.float32), np.asarray(y)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need x (N, features) and y (N,) with N >= 1, got {x.shape}, {y.shape}")
    if not params:
        raise ValueError("params must name at least one mapping")
    reads = {}
    for mapping, mapping_params in params.items():
        m = fragment_rows(mapping)
        config = mapping_config(mapping)
        scales = training.calibrate_input_scales(
            model.apply, mapping_params, np.asarray(calibration_x)[:CALIBRATION_IMAGES], config)
        reads[mapping] = {
            "config": config, "params": mapping_params,
            "analog": analog(model.apply, config, nonnegative_inputs=True),
            "scales": {k: jnp.asarray(v, jnp.float32) for k, v in scales.items()},
            "float_accuracy": training.accuracy(model.apply, mapping_params, x, y),
            "model": f"polarized m={m}" if m is not None else "float baseline"}
    return {"model": model, "x": x, "y": y, "keys": int(keys), "reads": reads,
            "functions": {}, "traces": {}}


def correct_counter(context: dict, mapping: str, axis: str):
    """``f(noise, key) -> number of correct test images`` for one mapping.

    ``axis``: ``"variation"`` (programs with the traced numbers, reads without noise),
    ``"read noise"`` (programs ideally, reads with them) or ``"both"``. Built once per
    context, mapping and axis (so repeated sweeps reuse its compilation); each trace is
    counted in ``context["traces"][(mapping, axis)]``.
    """
    if mapping not in context["reads"]:
        raise ValueError(f"mapping {mapping!r} was not prepared; prepared: "
                         f"{tuple(context['reads'])}")
    if axis not in (*AXES, "both"):
        raise ValueError(f"noise axis must be one of {(*AXES, 'both')}, got {axis!r}")
    name = (mapping, axis)
    if name not in context["functions"]:
        read_ = context["reads"][mapping]
        f, params, scales = read_["analog"], read_["params"], read_["scales"]
        x, y = jnp.asarray(context["x"]), jnp.asarray(context["y"])
        context["traces"][name] = 0
        noisy_program, noisy_read = axis != "read noise", axis != "variation"

        def count_correct(noise, key):
            context["traces"][name] += 1
            program_key, read_key = jax.random.split(key)
            if noisy_program:
                state = f.program(params, x, key=program_key, noise=noise)
            else:
                state = f.program(params, x)
            state = state._replace(scales=scales)
            logits = (f.apply(state, params, x, read_key=read_key, noise=noise) if noisy_read
                      else f.apply(state, params, x))
            return jnp.sum(jnp.argmax(logits, -1) == y)

        context["functions"][name] = count_correct
    return context["functions"][name]


def noise_of(points_: list[dict], config: CrossbarConfig):
    """The NoiseParameters batch of a list of points (one field varied per point)."""
    for point in points_:
        if point.get("noise") not in AXES:
            raise ValueError(f"point noise must be one of {tuple(AXES)}, got {point!r}")
        sigma = point.get("sigma")
        if not isinstance(sigma, (int, float)) or not np.isfinite(sigma) or sigma < 0:
            raise ValueError(f"point sigma must be a finite number >= 0, got {point!r}")
    return noise_points(config, [{AXES[p["noise"]]: float(p["sigma"])} for p in points_])


def evaluate(context, batch, seed):
    """Accuracy of every point of one mapping, from one vmapped sweep over the points' sigmas
    and the keys. A batch of one noise axis compiles only that non-ideality's path
    (:func:`correct_counter`); a batch of both axes compiles both (the other adds exactly 0)."""
    if not batch:
        return []
    mappings = {point.get("mapping") for point in batch}
    if len(mappings) != 1:
        raise ValueError(f"a batch must hold one mapping, got {sorted(map(str, mappings))}")
    mapping = mappings.pop()
    read_ = context["reads"].get(mapping)
    if read_ is None:
        raise ValueError(f"mapping {mapping!r} was not prepared")
    keys = jax.random.split(jax.random.key(seed), context["keys"])
    noise = noise_of(batch, read_["config"])
    axes = {point["noise"] for point in batch}
    counter = correct_counter(context, mapping, axes.pop() if len(axes) == 1 else "both")
    start = time.perf_counter()
    correct = np.asarray(sweep(counter, noise, keys, chunk_size=SWEEP_CHUNK))
    seconds = time.perf_counter() - start
    accuracies = correct / len(context["y"])
    rows = []
    for per_key in accuracies:
        mean, low, high = training.mean_ci(per_key)
        rows.append({"model": read_["model"], "accuracy": mean, "ci_low": low, "ci_high": high,
                     "std": float(np.std(per_key, ddof=1)) if len(per_key) > 1 else 0.0,
                     "accuracies": [float(a) for a in per_key], "keys": len(per_key),
                     "images": len(context["y"]), "float_accuracy": read_["float_accuracy"],
                     "group_seconds": seconds})
    return rows


# --------------------------------------------------------------------------- report


def _series(rows, mapping, axis):
    chosen = sorted((r for r in rows if r["mapping"] == mapping and r["noise"] == axis),
                    key=lambda r: r["sigma"])
    return (np.array([r["sigma"] for r in chosen]), np.array([r["accuracy"] for r in chosen]),
            np.array([r["ci_low"] for r in chosen]), np.array([r["ci_high"] for r in chosen]))


def tolerated_sigma(sigmas, means, reference, loss: float = 0.01) -> float:
    """The largest swept sigma up to which every mean accuracy stays within ``loss`` of
    ``reference`` (the first sigma that loses more ends the run)."""
    tolerated = float(sigmas[0])
    for sigma, mean in zip(sigmas, means):
        if reference - mean > loss:
            break
        tolerated = float(sigma)
    return tolerated


def _at(sigmas, values, sigma):
    index = np.flatnonzero(np.isclose(sigmas, sigma))
    return float(values[index[0]]) if index.size else float("nan")


def report(rows, out_dir, quick) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    mappings = [m for m in MAPPINGS if any(r["mapping"] == m for r in rows)]
    no_noise = [r["accuracy"] for r in rows if r["sigma"] == 0.0]
    top = 100 * max(no_noise, default=1.0)
    # bottom row: the top 8 points of accuracy, where the robust mappings separate
    figure, panels = plt.subplots(2, 2, figsize=(11, 7.5), sharex="col")
    for column, axis in enumerate(AXES):
        for row in range(2):
            panel = panels[row, column]
            for mapping in mappings:
                sigmas, mean, low, high = _series(rows, mapping, axis)
                if sigmas.size == 0:
                    continue
                line, = panel.plot(sigmas, 100 * mean, marker="o", ms=3, label=mapping)
                panel.fill_between(sigmas, 100 * low, 100 * high, color=line.get_color(),
                                   alpha=0.2)
            panel.grid(alpha=0.3)
            if row == 1:
                panel.set_ylim(top - 8, top + 0.5)
                panel.set_xlabel("log-normal device variation sigma" if axis == "variation"
                                 else "read noise sigma (relative, per cell and read)")
        panels[0, column].set_title(f"{axis} only")
    panels[0, 0].set_ylabel("test accuracy (%)")
    panels[1, 0].set_ylabel("test accuracy (%), zoomed")
    panels[0, 0].legend(fontsize=8)
    figure.suptitle("digits MLP accuracy: mean and 95 % band over noise keys", fontsize=11)
    figure.tight_layout()
    figure.savefig(out_dir / "noise_sensitivity.png", dpi=110)
    plt.close(figure)

    keys = rows[0]["keys"] if rows else 0
    images = rows[0]["images"] if rows else 0
    table = ["| mapping | model read | no noise | variation 0.1 | variation 0.2 | "
             "read noise 0.05 | read noise 0.1 | variation tolerated (loss <= 1 pt) | "
             "read noise tolerated |", "|---|---|---|---|---|---|---|---|---|"]
    tolerated = {}
    for mapping in mappings:
        cells = []
        model = next(r["model"] for r in rows if r["mapping"] == mapping)
        s_var, m_var, lo_var, hi_var = _series(rows, mapping, "variation")
        s_read, m_read, lo_read, hi_read = _series(rows, mapping, "read noise")
        base = _at(s_var, m_var, 0.0) if s_var.size else _at(s_read, m_read, 0.0)
        for sigmas, means, lows, highs, sigma in [
                (s_var, m_var, lo_var, hi_var, 0.1), (s_var, m_var, lo_var, hi_var, 0.2),
                (s_read, m_read, lo_read, hi_read, 0.05), (s_read, m_read, lo_read, hi_read, 0.1)]:
            mean = _at(sigmas, means, sigma)
            cells.append("-" if np.isnan(mean) else
                         f"{100 * mean:.2f} [{100 * _at(sigmas, lows, sigma):.2f}, "
                         f"{100 * _at(sigmas, highs, sigma):.2f}]")
        tolerated[mapping] = (tolerated_sigma(s_var, m_var, base) if s_var.size else np.nan,
                              tolerated_sigma(s_read, m_read, base) if s_read.size else np.nan)
        table.append(f"| {mapping} | {model} | {100 * base:.2f} | " + " | ".join(cells)
                     + f" | {tolerated[mapping][0]:g} | {tolerated[mapping][1]:g} |")

    findings = _findings(rows, mappings)
    return (f"The digits MLP (test images: {images}) read through each mapping with one "
            f"non-ideality at a time; accuracy in %, mean over {keys} noise keys with its 95 % "
            f"Student-t interval (each key programs the arrays once and draws the read noise; "
            f"the same keys at every sigma; the interval covers the noise keys, not the choice "
            f"of test images). FORMS reads the model polarized at its m, ISAAC "
            f"and PRIME the float baseline; all store 8-bit weights and read 8-bit inputs "
            f"bit-serially (ADC per design: see results.json, configuration)."
            f"{' Quick setting: fewer mappings, sigmas and keys.' if quick else ''}\n\n"
            f"![accuracy vs noise](noise_sensitivity.png)\n\n" + "\n".join(table)
            + "\n\nTolerated: the largest swept sigma up to which the mean accuracy stays within "
              "1 point of the mapping's own no-noise accuracy.\n\n" + findings)


def _per_key(rows, mapping, axis, sigma) -> np.ndarray | None:
    for row in rows:
        if row["mapping"] == mapping and row["noise"] == axis and np.isclose(row["sigma"], sigma):
            return np.asarray(row["accuracies"], np.float64)
    return None


def _findings(rows, mappings) -> str:
    """Sentences computed from the rows: the accuracy each mapping loses at the largest sigma
    swept for all of them (paired over the common keys, with a 95 % t interval), whether the
    extremes' intervals overlap, and the FORMS fragment-size ordering."""
    lines = []
    for axis in AXES:
        series = {m: _series(rows, m, axis) for m in mappings}
        series = {m: s for m, s in series.items() if s[0].size > 1}
        if not series:
            continue
        top = max(set.intersection(*(set(np.round(s[0], 6)) for s in series.values())))
        losses = {}
        for mapping in series:
            base, noisy = _per_key(rows, mapping, axis, 0.0), _per_key(rows, mapping, axis, top)
            if base is None or noisy is None or len(base) != len(noisy):
                continue
            losses[mapping] = training.mean_ci(base - noisy)
        if not losses:
            continue
        order = sorted(losses, key=lambda m: losses[m][0])
        text = "; ".join(f"{m} {100 * losses[m][0]:.1f} [{100 * losses[m][1]:.1f}, "
                         f"{100 * losses[m][2]:.1f}]" for m in order)
        lines.append(f"* {axis}, sigma {top:g}: accuracy lost (points below the mapping's own "
                     f"no-noise accuracy, paired over keys, 95 % interval), least to most: "
                     f"{text}.")
        if len(order) > 1:
            best, worst = order[0], order[-1]
            separated = losses[best][2] < losses[worst][1]
            lines.append(f"  The loss intervals of the least and most affected mapping ({best}, "
                         f"{worst}) {'do not overlap' if separated else 'overlap'}.")
        forms = [m for m in ("FORMS m=4", "FORMS m=8", "FORMS m=16") if m in losses]
        if len(forms) > 1:
            by_size = [losses[m][0] for m in forms]
            if all(a < b for a, b in zip(by_size, by_size[1:])):
                trend = "smaller fragments lose less"
            elif all(a > b for a, b in zip(by_size, by_size[1:])):
                trend = "smaller fragments lose more"
            else:
                trend = "no monotonic order in fragment size"
            overlapping = any(losses[a][2] >= losses[b][1] and losses[b][2] >= losses[a][1]
                              for i, a in enumerate(forms) for b in forms[i + 1:])
            lines.append(f"  FORMS by fragment size ({', '.join(forms)}): {trend} "
                         f"({', '.join(f'{100 * v:.1f}' for v in by_size)} points)"
                         f"{'; some of these intervals overlap' if overlapping else ''}.")
    return "What the data shows:\n\n" + "\n".join(lines) if lines else ""
