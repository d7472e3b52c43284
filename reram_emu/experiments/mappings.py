"""FORMS vs ISAAC vs PRIME on the same digits MLP: accuracy under the same combined noise, next
to each design's ADC conversions per image.

Every design reads the same 8-bit weights (per-layer scale, integers in [-127, 127]) and the same
8-bit unsigned inputs (fixed per-layer scales calibrated on 500 training images), so the
digital result of a lossless read is the same for all; what differs is how each design puts
signed weights on conductances and how it converts:

* FORMS (polarized): the digits MLP polarized by ADMM at fragment m (8 and 16 in the full
  setting), 2-bit cells, m rows per conversion, the sign of each fragment applied digitally, a
  ``log2(m) + 1``-bit ADC whose LSB is one level (sums above its top code clip: the range the
  ``adc_resolution`` experiment finds far better than widening the LSB), zero-skipping.
* ISAAC (offset): the unpolarized float model, ``w + 128`` stored in 2-bit cells with the
  flip encoding and the unit column, 128 rows per conversion, its 8-bit ADC with an LSB of one
  level (the worst-case sum, 192 levels with the flip encoding, fits: lossless).
* PRIME (differential): the unpolarized float model on a positive and a negative 256 x 256
  crossbar subtracted in analog, 4-bit cells, a 3-bit input DAC (8-bit inputs in 3 cycles),
  all rows per conversion, its 6-bit signed ADC. Its worst-case sum (256 x 15 x 7 levels) would
  need an LSB of 1024 levels, so the full scale is calibrated per layer on the calibration
  images (99.99th percentile of the noise-free ADC inputs) and fixed.
* PRIME with a 16-bit ADC (full setting): the same array with an ADC that covers the
  worst-case sum at one level per code: the differential mapping without PRIME's ADC loss.

Noise (the same values for every design): log-normal device variation sigma 0.1, read noise
0.05 (relative, per cell and read), stuck-at faults 0.1 % at G_on and 0.1 % at G_off, ADC noise
0.25 LSB per conversion (each design's own LSB). Accuracy on all 450 digits test images, mean
and 95 % Student-t interval over noise keys (each key programs every layer once and draws the
read and ADC noise), keys vmapped, one compilation per design. The full setting also runs
each non-ideality alone at its combined value (the noise values are traced, so these reuse the
design's compilation and keys) to show where each design's loss comes from. Noise-free reads are
deterministic and also give the hardware counts (ADC conversions, input cycles).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from .. import training
from ..config import (ADCConfig, CrossbarConfig, InputConfig, NoiseParameters, WeightConfig,
                      preset)
from ..converters import adc_lsb_levels
from ..nn import evaluate_accuracy
from . import emulated_eval
from .trained import INPUT_BITS, digits_mlp, forms_config

NAME = "mappings"
DESCRIPTION = "FORMS vs ISAAC vs PRIME mapping: accuracy under combined noise vs ADC conversions"

WEIGHT_BITS = 8
DESIGNS_FULL = ("FORMS m=8", "FORMS m=16", "ISAAC", "PRIME", "PRIME, 16-bit ADC")
DESIGNS_QUICK = ("FORMS m=8", "ISAAC", "PRIME")
COMBINED = {"variation_sigma": 0.1, "read_noise_sigma": 0.05, "stuck_on_rate": 0.001,
            "stuck_off_rate": 0.001, "adc_noise_lsb": 0.25, "adc_offset_lsb": 0.0}
# each non-ideality of COMBINED alone (the full setting runs them to explain the ranking)
ALONE = {"variation": ("variation_sigma",), "read noise": ("read_noise_sigma",),
         "stuck-at": ("stuck_on_rate", "stuck_off_rate"), "ADC noise": ("adc_noise_lsb",)}
NOISE_LEVELS = ("none", "combined", *ALONE)
NOISE_LEVELS_QUICK = ("none", "combined")
KEYS_FULL, KEYS_QUICK = 20, 5
CALIBRATION_PERCENTILE = 99.99


def noise_parameters(level: str) -> NoiseParameters:
    """The noise of ``level`` as traced scalars (the same for every design): ``"combined"``
    (every value of :data:`COMBINED`) or one entry of :data:`ALONE` (that non-ideality at its
    combined value, the others zero). Every level has the same pytree structure, so one
    compiled evaluation per design serves them all."""
    if level == "combined":
        kept = set(COMBINED)
    elif level in ALONE:
        kept = set(ALONE[level])
    else:
        raise ValueError(f"noise level must be 'combined' or one of {tuple(ALONE)}, "
                         f"got {level!r}")
    return NoiseParameters(**{k: jnp.float32(v if k in kept else 0.0)
                              for k, v in COMBINED.items()})


def fragment_rows(design: str) -> int | None:
    """FORMS's fragment size m from a design name (``"FORMS m=8"``), None for ISAAC and
    PRIME."""
    if not design.startswith("FORMS m="):
        return None
    value = design[len("FORMS m="):]
    if not value.isdigit():
        raise ValueError(f"FORMS designs are named 'FORMS m=<rows>', got {design!r}")
    return int(value)


def design_config(design: str) -> CrossbarConfig:
    """The configuration of ``design`` before any per-layer ADC calibration.

    8-bit weights and 8-bit inputs for every design; the rest is the design's preset
    (cells, rows per conversion, DAC, ADC bits; see the module docstring).
    """
    if not isinstance(design, str):
        raise TypeError(f"design must be a string, got {type(design).__name__}")
    m = fragment_rows(design)
    if m is not None:
        return forms_config(m)
    weights = WeightConfig(bits=WEIGHT_BITS)
    if design == "ISAAC":
        return preset("isaac").replace(weights=weights, inputs=InputConfig(bits=INPUT_BITS))
    if design in ("PRIME", "PRIME, 16-bit ADC"):
        config = preset("prime").replace(weights=weights,
                                         inputs=InputConfig(bits=INPUT_BITS, dac_bits=3))
        if design == "PRIME, 16-bit ADC":
            config = config.replace(adc=ADCConfig(bits=16, range="worst_case"))
        return config
    raise ValueError(f"unknown design {design!r}; known: {DESIGNS_FULL} or 'FORMS m=<m>'")


def points(quick: bool) -> list[dict]:
    designs = DESIGNS_QUICK if quick else DESIGNS_FULL
    levels = NOISE_LEVELS_QUICK if quick else NOISE_LEVELS
    return [{"design": d, "noise": n} for d in designs for n in levels]


def group(point: dict):
    """Both noise levels of a design share its model, configuration and calibration."""
    return point["design"]


def configuration(quick: bool) -> dict:
    designs = DESIGNS_QUICK if quick else DESIGNS_FULL
    return {"model": "digits MLP 64-128-64-10: FORMS reads the ADMM-polarized copy at its m, "
                     "ISAAC and PRIME the unpolarized float model; 8-bit weights for all",
            "inputs": f"{INPUT_BITS}-bit unsigned, fixed per-layer scales (99.99th percentile "
                      "over 500 training images)",
            "combined_noise": COMBINED, "variation": "lognormal",
            "noise_levels": NOISE_LEVELS_QUICK if quick else NOISE_LEVELS,
            "keys": KEYS_QUICK if quick else KEYS_FULL, "test_images": 450,
            "prime_adc_calibration": f"{CALIBRATION_PERCENTILE}th percentile of |ADC inputs| "
                                     "on the calibration images, per layer",
            "designs": {d: repr(design_config(d)) for d in designs}}


def make_context(model, float_params: dict, polarized: dict, x_test, y_test, x_calibration,
                 designs=DESIGNS_FULL, keys: int = KEYS_FULL) -> dict:
    """Per design: its parameters (polarized at m for FORMS, float otherwise), per-layer
    configurations (PRIME's 6-bit ADC calibrated), fixed input scales, and the quantized
    ideal's predictions and accuracy for those parameters."""
    features = model.layers[0][1].in_features
    x_test, y_test = emulated_eval.check_images(x_test, y_test, features)
    if isinstance(keys, bool) or not isinstance(keys, int) or keys < 1:
        raise ValueError(f"keys must be a positive int, got {keys!r}")
    context = {"model": model, "x": x_test, "y": y_test, "keys": keys, "designs": {}}
    for design in designs:
        m = fragment_rows(design)
        if m is not None and m not in polarized:
            raise ValueError(f"{design} needs parameters polarized at m={m}; have "
                             f"{sorted(polarized)}")
        params = polarized[m] if m is not None else float_params
        base = design_config(design)
        scales = training.calibrate_input_scales(model.apply, params, x_calibration, base)
        configs = emulated_eval.per_layer_configs(model.apply, params, x_test[:1], base)
        full_scales = None
        if design == "PRIME":
            calibrating = {n: c.replace(adc=ADCConfig(bits=c.adc.bits, range="calibrated"))
                           for n, c in configs.items()}
            full_scales = emulated_eval.calibrated_full_scales(
                model.apply, params, x_calibration, calibrating, scales, CALIBRATION_PERCENTILE)
            configs = emulated_eval.with_adc(configs, base.adc.bits, full_scales)
        predictions = np.argmax(emulated_eval.reference_logits(model.apply, params, x_test, configs,
                                                               scales), -1)
        context["designs"][design] = {
            "params": params, "configs": configs, "scales": scales,
            "reference_predictions": predictions,
            "reference_accuracy": float(np.mean(predictions == y_test)),
            "float_accuracy": training.accuracy(model.apply, params, x_test, y_test),
            "lsb_levels": {n: adc_lsb_levels(c) for n, c in configs.items()}}
    return context


def prepare(quick: bool, seed: int, work_dir):
    designs = DESIGNS_QUICK if quick else DESIGNS_FULL
    ms = tuple(sorted({fragment_rows(d) for d in designs if fragment_rows(d) is not None}))
    trained = digits_mlp(Path(work_dir), fragment_rows=ms, seed=seed, quick=quick)
    return make_context(trained.model, trained.float_params, trained.polarized,
                        trained.data.x_test, trained.data.y_test, trained.calibration_x,
                        designs, KEYS_QUICK if quick else KEYS_FULL)


def evaluate(context, batch, seed):
    """Metrics of each point of one design: noise-free (one read, with the hardware counts)
    or a noise level (``context["keys"]`` keys from ``seed``; every level draws from the same
    keys, so levels differ only in their noise values)."""
    model, x, y = context["model"], context["x"], context["y"]
    rows = []
    for point in batch:
        design, noise = point["design"], point["noise"]
        if design not in context["designs"]:
            raise ValueError(f"design {design!r} is not in the context (has "
                             f"{sorted(context['designs'])})")
        if noise not in NOISE_LEVELS:
            raise ValueError(f"noise must be one of {NOISE_LEVELS}, got {noise!r}")
        d = context["designs"][design]
        t0 = time.perf_counter()
        if noise == "none":
            logits, counts = emulated_eval.clean_read(model.apply, d["params"], x, d["configs"],
                                                      d["scales"])
            predictions = np.argmax(logits, -1)
            accuracy = float(np.mean(predictions == y))
            conversions = sum(int(c.adc_conversions) for c in counts.values())
            unskipped = sum(int(c.adc_conversions_without_skip) for c in counts.values())
            metrics = {"accuracy": accuracy, "ci_low": accuracy, "ci_high": accuracy,
                       "std": 0.0, "keys": 1,
                       "agreement_with_reference": float(
                           np.mean(predictions == d["reference_predictions"])),
                       "adc_conversions_per_image": conversions / len(x),
                       "adc_conversions_per_image_without_skip": unskipped / len(x)}
        else:
            ev = evaluate_accuracy(
                emulated_eval.on_crossbars(model.apply, d["configs"]), d["params"], x, y,
                keys=context["keys"], seed=seed, noise=noise_parameters(noise),
                scales=d["scales"], batch_size=len(x))
            metrics = {"accuracy": ev.mean, "ci_low": ev.ci_low, "ci_high": ev.ci_high,
                       "std": ev.std, "keys": len(ev.accuracies),
                       "per_key": [float(a) for a in ev.accuracies],
                       "agreement_with_reference": None}
        config = next(iter(d["configs"].values()))
        rows.append({**metrics, "reference_accuracy": d["reference_accuracy"],
                     "float_accuracy": d["float_accuracy"],
                     "scheme": config.mapping.scheme,
                     "rows_per_conversion": config.geometry.fragment_rows,
                     "cell_bits": config.cell.bits_per_cell,
                     "dac_bits": config.inputs.dac_bits, "adc_bits": config.adc.bits,
                     "adc_range": config.adc.range,
                     "adc_lsb_levels": {n: round(v, 4) for n, v in d["lsb_levels"].items()},
                     "seconds": round(time.perf_counter() - t0, 2)})
    return rows


# --------------------------------------------------------------------------- report


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:.1f}"


def _row(rows, design, noise):
    return next((r for r in rows if r["design"] == design and r["noise"] == noise), None)


def _findings(rows, designs) -> list[str]:
    """Sentences read off the rows (nothing here is assumed)."""
    lines = []
    clean = {d: _row(rows, d, "none") for d in designs}
    noisy = {d: _row(rows, d, "combined") for d in designs}
    lossless = [d for d in designs if clean[d] and clean[d]["agreement_with_reference"] == 1.0]
    lossy = [f"{d} ({100 * clean[d]['agreement_with_reference']:.1f} % of predictions)"
             for d in designs if clean[d] and clean[d]["agreement_with_reference"] != 1.0]
    if lossless:
        lines.append("- Noise-free, every prediction equals the 8-bit digital reference of "
                     "the same parameters for: " + ", ".join(lossless) + ".")
    if lossy:
        lines.append("- Noise-free, the ADC changes predictions for: " + ", ".join(lossy) + ".")
    ranked = sorted((d for d in designs if noisy[d]), key=lambda d: -noisy[d]["accuracy"])
    if ranked:
        lines.append("- Under the combined noise, best to worst: " + ", ".join(
            f"{d} {_pct(noisy[d]['accuracy'])} % [{_pct(noisy[d]['ci_low'])}, "
            f"{_pct(noisy[d]['ci_high'])}]"
            + (f" (loss {100 * (clean[d]['accuracy'] - noisy[d]['accuracy']):.1f} points)"
               if clean[d] else "") for d in ranked) + ".")
        overlaps = [f"{a} / {b}" for a, b in zip(ranked, ranked[1:])
                    if noisy[a]["ci_low"] <= noisy[b]["ci_high"]]
        if overlaps:
            lines.append("- Neighbours whose 95 % intervals overlap (not separated by these "
                         "keys): " + ", ".join(overlaps) + ".")
        spread = [(d, min(noisy[d]["per_key"]), max(noisy[d]["per_key"])) for d in ranked
                  if noisy[d].get("per_key")]
        if spread:
            lines.append("- Worst and best key under the combined noise: " + ", ".join(
                f"{d} {_pct(lo)}-{_pct(hi)} %" for d, lo, hi in spread) + ".")
    for d in designs:
        alone = [(level, _row(rows, d, level)) for level in ALONE if _row(rows, d, level)]
        if alone and clean[d]:
            losses = sorted(((level, clean[d]["accuracy"] - r["accuracy"]) for level, r in alone),
                            key=lambda t: -t[1])
            lines.append(f"- {d}, loss from each non-ideality alone (points): " + ", ".join(
                f"{level} {100 * loss:.1f}" for level, loss in losses) + ".")
    cost = [(d, clean[d]["adc_conversions_per_image"]) for d in designs if clean[d]]
    if cost:
        lines.append("- ADC conversions per image: " + ", ".join(
            f"{d} {c:,.0f} ({clean[d]['adc_bits']}-bit)" for d, c in
            sorted(cost, key=lambda t: t[1])) + ".")
    return lines


def _noise_text() -> str:
    return (f"variation {COMBINED['variation_sigma']} (log-normal), read noise "
            f"{COMBINED['read_noise_sigma']}, stuck-at {100 * COMBINED['stuck_on_rate']:g} % on "
            f"+ {100 * COMBINED['stuck_off_rate']:g} % off, ADC noise "
            f"{COMBINED['adc_noise_lsb']} LSB")


def _bars(axis, rows, designs, levels, colors, relative_to_clean=False):
    """Grouped bars of accuracy (or loss vs noise-free) per design and level, 95 % CIs."""
    positions = np.arange(len(designs))
    width = 0.8 / len(levels)
    for j, (level, color) in enumerate(zip(levels, colors)):
        means, low, high = [], [], []
        for d in designs:
            r, c = _row(rows, d, level), _row(rows, d, "none")
            if r is None or (relative_to_clean and c is None):
                means.append(np.nan)
                low.append(0.0)
                high.append(0.0)
                continue
            base = 100 * c["accuracy"] if relative_to_clean else 0.0
            sign = -1 if relative_to_clean else 1
            mean = sign * (100 * r["accuracy"] - base)
            lo, hi = sorted(sign * (100 * r[k] - base) for k in ("ci_low", "ci_high"))
            means.append(mean)
            low.append(mean - lo)
            high.append(hi - mean)
        label = {"none": "no noise", "combined": "combined noise"}.get(level, level + " alone")
        bars = axis.bar(positions + (j - (len(levels) - 1) / 2) * width, means, width,
                        yerr=[low, high], capsize=3, color=color, label=label)
        if not relative_to_clean:
            for bar, mean in zip(bars, means):
                if not np.isnan(mean):
                    axis.text(bar.get_x() + bar.get_width() / 2, 2, f"{mean:.1f}",
                              ha="center", va="bottom", fontsize=8, color="white",
                              rotation=90)
    axis.set_xticks(positions, designs, rotation=15, ha="right")
    axis.grid(axis="y", alpha=0.3)


def report(rows, out_dir, quick) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    designs = list(dict.fromkeys(r["design"] for r in rows))
    alone = [level for level in ALONE if any(r["noise"] == level for r in rows)]
    figure = plt.figure(figsize=(13, 9.6 if alone else 4.8))
    grid = figure.add_gridspec(2 if alone else 1, 2, width_ratios=[3, 2])
    left, right = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1])
    _bars(left, rows, designs, ("none", "combined"), ("#4c72b0", "#dd8452"))
    positions = np.arange(len(designs))
    refs = [100 * (_row(rows, d, "none") or _row(rows, d, "combined"))["reference_accuracy"]
            for d in designs]
    left.scatter(positions, refs, marker="_", s=900, color="black", zorder=3,
                 label="8-bit digital reference")
    left.set_ylabel("test accuracy (%)")
    left.set_ylim(0, 118)
    left.set_yticks(range(0, 101, 20))
    left.legend(fontsize=8, loc="upper center", ncol=3)
    left.set_title("accuracy (95 % CI over noise keys); combined noise:\n" + _noise_text(),
                   fontsize=9)
    conversions = [(_row(rows, d, "none") or {}).get("adc_conversions_per_image", np.nan)
                   for d in designs]
    bars = right.bar(positions, conversions, 0.6, color="#55a868")
    for bar, d in zip(bars, designs):
        r = _row(rows, d, "none") or _row(rows, d, "combined")
        if not np.isnan(bar.get_height()):
            right.text(bar.get_x() + bar.get_width() / 2, bar.get_height() * 1.05,
                       f"{bar.get_height():,.0f}\n{r['adc_bits']}-bit ADC", ha="center",
                       va="bottom", fontsize=7)
    right.set_yscale("log")
    right.set_ylim(top=max([c for c in conversions if not np.isnan(c)] + [1]) * 8)
    right.set_xticks(positions, designs, rotation=15, ha="right")
    right.set_ylabel("ADC conversions per image")
    right.set_title("cost: ADC conversions per image\n(noise-free read, FORMS with "
                    "zero-skipping)", fontsize=9)
    right.grid(axis="y", alpha=0.3)
    if alone:
        bottom = figure.add_subplot(grid[1, :])
        _bars(bottom, rows, designs, ["combined", *alone],
              ["#dd8452", "#8172b3", "#64b5cd", "#c44e52", "#937860"][:1 + len(alone)],
              relative_to_clean=True)
        bottom.set_ylabel("accuracy loss vs noise-free (points)")
        bottom.set_title("where the loss comes from: each non-ideality alone at its combined "
                         "value (same keys; 95 % CI)", fontsize=9)
        bottom.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_dir / "mappings.png", dpi=120)
    plt.close(figure)

    lines = ["| design | mapping | rows / conversion | cells | DAC | ADC | LSB (levels) per layer "
             "| conversions / image | reference | no noise | agreement with reference | "
             "combined noise [95 % CI] | keys |", "|---" * 13 + "|"]
    for d in designs:
        c, n = _row(rows, d, "none"), _row(rows, d, "combined")
        r = c or n
        lsb = ", ".join(f"{v:.3g}" for v in r["adc_lsb_levels"].values())
        lines.append(
            f"| {d} | {r['scheme']} | {r['rows_per_conversion']} | {r['cell_bits']} b | "
            f"{r['dac_bits']} b | {r['adc_bits']} b {r['adc_range']} | {lsb} | "
            f"{'-' if c is None else format(c['adc_conversions_per_image'], ',.0f')} | "
            f"{_pct(r['reference_accuracy'])} | {_pct(c['accuracy']) if c else '-'} | "
            f"{_pct(c['agreement_with_reference']) if c else '-'} | "
            + (f"{_pct(n['accuracy'])} [{_pct(n['ci_low'])}, {_pct(n['ci_high'])}] | {n['keys']}"
               if n else "- | -") + " |")
    breakdown = []
    if alone:
        breakdown = ["## Each non-ideality alone (accuracy %, 95 % CI)", "",
                     "| design | " + " | ".join(alone) + " |", "|---" * (1 + len(alone)) + "|"]
        for d in designs:
            cells = []
            for level in alone:
                r = _row(rows, d, level)
                cells.append("-" if r is None else
                             f"{_pct(r['accuracy'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]")
            breakdown.append(f"| {d} | " + " | ".join(cells) + " |")
        breakdown.append("")
    return "\n".join([
        "The digits MLP (64-128-64-10) on all 450 test images: FORMS reads the copy polarized "
        "at its fragment size, ISAAC and PRIME the unpolarized float model; 8-bit weights and "
        "8-bit inputs for every design. Each design keeps its own array and converters "
        "(cells, rows per conversion, DAC, ADC bits); ADC ranges: FORMS LSB one level "
        "(clipping above), ISAAC worst case (lossless), PRIME 6-bit calibrated per layer on "
        "training images, PRIME 16-bit lossless. Reference: the same parameters with exact "
        "8-bit integer products. Combined noise: " + _noise_text() + " (ADC noise in each "
        "design's own LSB).", "",
        "![accuracy and conversions](mappings.png)", "",
        "## What the data shows", "", *_findings(rows, designs), "",
        "## Results (accuracy in %)", "", *lines, "",
        "LSB per layer in conductance levels (fc1, fc2, fc3); conversions per image summed "
        "over the three layers from the noise-free read (FORMS with zero-skipping).", "",
        *breakdown])
