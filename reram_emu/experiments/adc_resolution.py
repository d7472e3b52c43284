"""Accuracy vs ADC resolution per fragment size, for the two ADC range policies.

FORMS (ISCA 2021) gives each fragment of m rows a ``log2(m) + 1``-bit ADC (3, 4, 5 bits at
m = 4, 8, 16). With 2-bit cells a fragment's worst-case column sum is ``3 m`` levels (24 at
m = 8), more than such an ADC codes, and the paper does not say how it copes. Two policies:

* ``"fixed"``: the LSB is one conductance level, so every sum up to ``2**bits - 1`` is exact and
  larger sums clip at the top code;
* ``"worst_case"``: the LSB is widened to the smallest power of two whose full scale covers
  ``3 m`` (2 levels at m = 8 with 4 bits): nothing clips, every sum is rounded to the coarser
  grid.

The digits MLP (64-128-64-10, :func:`reram_emu.experiments.trained.digits_mlp`) polarized at
each m (ADMM, 8-bit weights) is read through the emulated FORMS crossbar (2-bit cells, 8-bit
bit-serial inputs with fixed per-layer scales, zero-skipping) with 1 ADC bit up to the
resolution that makes the ADC exact (:func:`lossless_bits`: 4, 5, 6, 7 bits at m = 4, 8, 16,
32), on all 450 test images. Each noise-free point is one deterministic read; its predictions
are compared with the quantized ideal (8-bit weights and inputs, exact integer products: what a
lossless ADC must give). Points with ADC noise (Gaussian, 0.25 LSB per conversion, m = 8 at
its 4 bits, both ranges) are averaged over noise keys (vmapped) with a 95 % t interval: in
LSB units, so the worst-case range's wider LSB also means more noise in level units.

Points of one (m, range, bits) share one compiled read (the ADC bits and range are static);
noise values are traced, so every noisy point of a structure reuses one compilation. A noisy
read compiles for about a minute on 2 shared cores, which is why only m = 8 gets ADC noise.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from .. import training
from ..config import ADCConfig, CrossbarConfig, InputConfig, NoiseParameters, preset
from ..converters import adc_lsb_levels, code_range, worst_case_input
from ..nn import evaluate_accuracy
from . import emulated_eval
from .trained import INPUT_BITS, digits_mlp

NAME = "adc_resolution"
DESCRIPTION = "accuracy vs ADC bits per fragment size, fixed (clipping) vs worst-case ADC range"

RANGES = ("fixed", "worst_case")
FRAGMENTS_FULL = (4, 8, 16, 32)
FRAGMENTS_QUICK = (4, 8, 16)
ADC_NOISE_LSB = 0.25
KEYS_FULL, KEYS_QUICK = 10, 4
NOISY_FRAGMENTS = (8,)  # ADC-noise points (a noisy read compiles for about a minute)


def rule_bits(m: int) -> int:
    """FORMS's ADC resolution for fragment ``m``: ``log2(m) + 1`` bits."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1 or m & (m - 1):
        raise ValueError(f"fragment rows m must be a power of two >= 1, got {m!r}")
    return int(math.log2(m)) + 1


def adc_config(m: int, adc_range: str, bits: int) -> CrossbarConfig:
    """FORMS at fragment ``m`` (preset: 2-bit cells, 8-bit weights, zero-skipping) with 8-bit
    inputs and a ``bits``-bit ADC of range policy ``adc_range`` (``"fixed"``: LSB one level,
    clips above; ``"worst_case"``: LSB covers the worst-case sum, no clipping)."""
    if adc_range not in RANGES:
        raise ValueError(f"adc_range must be one of {RANGES}, got {adc_range!r}")
    rule_bits(m)
    return preset("forms", fragment_rows=m).replace(
        adc=ADCConfig(bits=bits, range=adc_range), inputs=InputConfig(bits=INPUT_BITS))


def lossless_bits(m: int) -> int:
    """The fewest ADC bits whose top code, at one level per LSB, covers fragment ``m``'s
    worst-case column sum (``3 m`` levels with 2-bit cells): from there on both range policies
    give an LSB of one level and nothing clips, so the read is exact (lossless)."""
    worst = worst_case_input(adc_config(m, "fixed", 1))
    return int(math.ceil(math.log2(worst + 1)))


def points(quick: bool) -> list[dict]:
    """Noise-free: every m, both ranges, 1 .. :func:`lossless_bits` (m) ADC bits (more bits
    change nothing: the ADC is already exact). With ADC noise 0.25 LSB: m = 8 at its
    log2(m) + 1 bits, both ranges. Quick: m = 4, 8, 16 noise-free at log2(m) + 1 bits, both
    ranges, and m = 8 at log2(m) bits, fixed range."""
    out = []
    if quick:
        for m in FRAGMENTS_QUICK:
            rule = rule_bits(m)
            pairs = [("fixed", rule), ("worst_case", rule)] + ([("fixed", rule - 1)]
                                                                 if m == 8 else [])
            for adc_range, bits in pairs:
                out.append({"m": m, "adc_range": adc_range, "adc_bits": bits,
                            "adc_noise_lsb": 0.0})
        return out
    for m in FRAGMENTS_FULL:
        for adc_range in RANGES:
            for b in range(1, lossless_bits(m) + 1):
                out.append({"m": m, "adc_range": adc_range, "adc_bits": b, "adc_noise_lsb": 0.0})
            if m in NOISY_FRAGMENTS:
                out.append({"m": m, "adc_range": adc_range, "adc_bits": rule_bits(m),
                            "adc_noise_lsb": ADC_NOISE_LSB})
    return out


def group(point: dict):
    """Points sharing the ADC structure are evaluated together (one compiled read)."""
    return (point["m"], point["adc_range"], point["adc_bits"])


def configuration(quick: bool) -> dict:
    return {"model": "digits MLP 64-128-64-10, ADMM-polarized per m, 8-bit weights",
            "fragments": FRAGMENTS_QUICK if quick else FRAGMENTS_FULL,
            "adc_bits": ("log2(m)+1 (both ranges); m = 8 also log2(m) (fixed range)"
                         if quick else {m: list(range(1, lossless_bits(m) + 1))
                                        for m in FRAGMENTS_FULL}),
            "ranges": RANGES,
            "adc_noise": (None if quick else {"lsb": ADC_NOISE_LSB, "fragments": NOISY_FRAGMENTS,
                                              "bits": "log2(m)+1", "keys": KEYS_FULL}),
            "inputs": f"{INPUT_BITS}-bit bit-serial, fixed per-layer scale (99.99th percentile "
                      "of the layer inputs over 500 training images)",
            "test_images": "all 450 digits test images",
            "example_config": repr(adc_config(8, "fixed", 4))}


def make_context(model, polarized: dict, x_test, y_test, x_calibration,
                 float_accuracy: dict | None = None, keys: int = KEYS_FULL) -> dict:
    """Everything :func:`evaluate` needs, from a model and its polarized parameters per m.

    Per m: the fixed input scales (calibrated on ``x_calibration``) and the quantized ideal's
    predictions and accuracy on the test set.
    """
    if not polarized:
        raise ValueError("polarized must map at least one fragment size m to parameters")
    features = model.layers[0][1].in_features
    x_test, y_test = emulated_eval.check_images(x_test, y_test, features)
    context = {"model": model, "x": x_test, "y": y_test, "params": {}, "scales": {},
               "reference_predictions": {}, "reference_accuracy": {},
               "float_accuracy": dict(float_accuracy or {}), "keys": int(keys)}
    for m, params in polarized.items():
        m = int(m)
        config = adc_config(m, "fixed", rule_bits(m))
        scales = training.calibrate_input_scales(model.apply, params, x_calibration, config)
        logits = emulated_eval.reference_logits(model.apply, params, x_test, config, scales)
        predictions = np.argmax(logits, -1)
        context["params"][m], context["scales"][m] = params, scales
        context["reference_predictions"][m] = predictions
        context["reference_accuracy"][m] = float(np.mean(predictions == y_test))
        context["float_accuracy"].setdefault(
            m, training.accuracy(model.apply, params, x_test, y_test))
    return context


def prepare(quick: bool, seed: int, work_dir):
    """Train (or load) the digits MLP polarized at every m of the setting."""
    fragments = FRAGMENTS_QUICK if quick else FRAGMENTS_FULL
    trained = digits_mlp(Path(work_dir), fragment_rows=fragments, seed=seed, quick=quick)
    return make_context(trained.model, trained.polarized, trained.data.x_test,
                        trained.data.y_test, trained.calibration_x,
                        trained.polarized_accuracy, KEYS_QUICK if quick else KEYS_FULL)


def _adc_noise(value: float) -> NoiseParameters:
    zero = jnp.float32(0.0)
    return NoiseParameters(zero, zero, zero, zero, jnp.float32(value), zero)


def evaluate(context, batch, seed):
    """Metrics of each point (all points of ``batch`` share m, range and bits)."""
    model, x, y = context["model"], context["x"], context["y"]
    rows = []
    for point in batch:
        m, adc_range, bits = point["m"], point["adc_range"], point["adc_bits"]
        noise = float(point["adc_noise_lsb"])
        if m not in context["params"]:
            raise ValueError(f"the context has no model polarized at m={m} "
                             f"(has {sorted(context['params'])})")
        if noise < 0:
            raise ValueError(f"adc_noise_lsb must be >= 0, got {noise}")
        config = adc_config(m, adc_range, bits)
        params, scales = context["params"][m], context["scales"][m]
        t0 = time.perf_counter()
        if noise == 0.0:
            logits, _ = emulated_eval.clean_read(model.apply, params, x, config, scales)
            predictions = np.argmax(logits, -1)
            accuracy = float(np.mean(predictions == y))
            agreement = float(np.mean(predictions == context["reference_predictions"][m]))
            metrics = {"accuracy": accuracy, "ci_low": accuracy, "ci_high": accuracy,
                       "std": 0.0, "keys": 1, "agreement_with_reference": agreement}
        else:
            ev = evaluate_accuracy(
                emulated_eval.on_crossbars(model.apply, config), params, x, y,
                keys=context["keys"], seed=seed, noise=_adc_noise(noise), scales=scales,
                batch_size=len(x))
            metrics = {"accuracy": ev.mean, "ci_low": ev.ci_low, "ci_high": ev.ci_high,
                       "std": ev.std, "keys": len(ev.accuracies),
                       "agreement_with_reference": None}
        lsb = adc_lsb_levels(config)
        rows.append({**metrics,
                     "reference_accuracy": context["reference_accuracy"][m],
                     "float_accuracy": context["float_accuracy"][m],
                     "rule_bits": rule_bits(m), "lsb_levels": lsb,
                     "full_scale_levels": lsb * code_range(config)[1],
                     "worst_case_sum_levels": worst_case_input(config),
                     "seconds": round(time.perf_counter() - t0, 2)})
    return rows


# --------------------------------------------------------------------------- report


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:.1f}"


def _findings(rows) -> list[str]:
    """Sentences read off the rows (nothing here is assumed)."""
    clean = [r for r in rows if r["adc_noise_lsb"] == 0]
    lines = []
    for m in sorted({r["m"] for r in clean}):
        rule = rule_bits(m)
        at = {(r["adc_range"], r["adc_bits"]): r for r in clean if r["m"] == m}
        ref = next(r["reference_accuracy"] for r in clean if r["m"] == m)
        parts = []
        for adc_range in RANGES:
            lossless = [b for (rg, b), r in sorted(at.items())
                        if rg == adc_range and r["agreement_with_reference"] == 1.0]
            first = min(lossless) if lossless else None
            rule_row = at.get((adc_range, rule))
            exact = (f"all predictions equal the reference's at {first} bits (the fewest "
                     f"measured)" if first is not None
                     else "no measured resolution reproduces every prediction of the reference")
            parts.append(f"{adc_range} range: {_pct(rule_row['accuracy']) if rule_row else '-'} "
                         f"% at the rule's {rule} bits, {exact}")
        lines.append(f"- m = {m} (reference {_pct(ref)} %): " + "; ".join(parts) + ".")
    gaps = []
    for m in sorted({r["m"] for r in clean}):
        rule = rule_bits(m)
        pair = {r["adc_range"]: r["accuracy"] for r in clean
                if r["m"] == m and r["adc_bits"] == rule}
        if len(pair) == 2:
            gaps.append(f"m = {m}: {100 * (pair['fixed'] - pair['worst_case']):+.1f}")
    if gaps:
        lines.append("- At log2(m)+1 bits, fixed minus worst-case range (points): "
                     + ", ".join(gaps) + ".")
    noisy = [r for r in rows if r["adc_noise_lsb"] > 0]
    for r in sorted(noisy, key=lambda r: (r["m"], r["adc_range"])):
        base = next((c for c in clean if c["m"] == r["m"] and c["adc_range"] == r["adc_range"]
                     and c["adc_bits"] == r["adc_bits"]), None)
        lines.append(f"- ADC noise {r['adc_noise_lsb']} LSB, m = {r['m']}, {r['adc_range']}, "
                     f"{r['adc_bits']} bits: {_pct(r['accuracy'])} % [{_pct(r['ci_low'])}, "
                     f"{_pct(r['ci_high'])}] over {r['keys']} keys"
                     + (f" (noise-free {_pct(base['accuracy'])} %)" if base else "") + ".")
    return lines


def report(rows, out_dir, quick) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    fragments = sorted({int(r["m"]) for r in rows})
    colors = dict(zip(fragments, plt.cm.viridis(np.linspace(0, 0.85, max(len(fragments), 1)))))
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for axis, adc_range in zip(axes, RANGES):
        for m in fragments:
            clean = sorted((r for r in rows if r["m"] == m and r["adc_range"] == adc_range
                            and r["adc_noise_lsb"] == 0), key=lambda r: r["adc_bits"])
            if not clean:
                continue
            bits = [r["adc_bits"] for r in clean]
            acc = [100 * r["accuracy"] for r in clean]
            axis.plot(bits, acc, "-o", color=colors[m], ms=4, label=f"m = {m}")
            axis.axhline(100 * clean[0]["reference_accuracy"], color=colors[m], lw=0.8, ls=":")
            rule = rule_bits(m)
            if rule in bits:
                axis.plot([rule], [acc[bits.index(rule)]], marker="*", ms=16, color=colors[m],
                          markeredgecolor="black", ls="none")
            noisy = [r for r in rows if r["m"] == m and r["adc_range"] == adc_range
                     and r["adc_noise_lsb"] > 0]
            for r in noisy:
                mean = 100 * r["accuracy"]
                axis.errorbar([r["adc_bits"] + 0.15], [mean],
                              yerr=[[mean - 100 * r["ci_low"]], [100 * r["ci_high"] - mean]],
                              fmt="s", mfc="white", color=colors[m], ms=5, capsize=3)
        axis.set_title({"fixed": "fixed range: LSB = 1 level, clips above 2^bits - 1",
                        "worst_case": "worst-case range: LSB widened, no clipping"}[adc_range],
                       fontsize=10)
        axis.set_xlabel("ADC bits")
        axis.set_xticks(range(1, 1 + max(r['adc_bits'] for r in rows)))
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    handles += [plt.Line2D([], [], marker="*", ms=12, color="grey", markeredgecolor="black",
                           ls="none"),
                plt.Line2D([], [], color="grey", lw=0.8, ls=":"),
                plt.Line2D([], [], marker="s", mfc="white", color="grey", ls="none")]
    labels += ["log2(m)+1 bits (FORMS)", "8-bit digital reference",
               f"ADC noise {ADC_NOISE_LSB} LSB (95 % CI)"]
    axes[1].legend(handles, labels, fontsize=8, loc="lower right")
    figure.suptitle("Digits MLP polarized per fragment m, read through FORMS: accuracy vs ADC "
                    "resolution", fontsize=11)
    figure.tight_layout()
    figure.savefig(out_dir / "adc_resolution.png", dpi=120)
    plt.close(figure)

    clean = [r for r in rows if r["adc_noise_lsb"] == 0]
    bits_seen = sorted({r["adc_bits"] for r in clean})
    header = "| m | range | " + " | ".join(f"{b} b" for b in bits_seen) + " | reference |"
    lines = [header, "|---|---|" + "---|" * (len(bits_seen) + 1)]
    for m in fragments:
        for adc_range in RANGES:
            cells = []
            for b in bits_seen:
                r = next((r for r in clean if r["m"] == m and r["adc_range"] == adc_range
                          and r["adc_bits"] == b), None)
                text = "-" if r is None else _pct(r["accuracy"])
                cells.append(f"**{text}**" if b == rule_bits(m) else text)
            ref = next((r["reference_accuracy"] for r in clean if r["m"] == m), None)
            lines.append(f"| {m} | {adc_range} | " + " | ".join(cells) + f" | {_pct(ref)} |")
    lsb_lines = ["| m | worst-case sum (levels) | " + " | ".join(f"{b} b" for b in bits_seen)
                 + " |", "|---|---|" + "---|" * len(bits_seen)]
    for m in fragments:
        cells = []
        for b in bits_seen:
            r = next((r for r in clean if r["m"] == m and r["adc_range"] == "worst_case"
                      and r["adc_bits"] == b), None)
            cells.append("-" if r is None else f"{r['lsb_levels']:g}")
        worst = next(r["worst_case_sum_levels"] for r in clean if r["m"] == m)
        lsb_lines.append(f"| {m} | {worst:g} | " + " | ".join(cells) + " |")
    return "\n".join([
        "The digits MLP polarized at each fragment size m (ADMM, 8-bit weights) read through "
        "the emulated FORMS crossbar (2-bit cells, 8-bit bit-serial inputs, zero-skipping) on "
        "all 450 test images, ADC resolution from 1 bit to the fewest bits that code the "
        "worst-case sum 3m at one level per code (from there on the ADC is exact under both "
        "policies, so more bits change nothing and are not run), two range policies. "
        "Stars: FORMS's "
        "log2(m)+1 bits. Dotted: the quantized ideal (8-bit weights and inputs, exact integer "
        "products), which a lossless ADC reproduces. Noise-free points are one deterministic "
        "read.", "", "![accuracy vs ADC bits](adc_resolution.png)", "",
        "## What the data shows", "", *_findings(rows), "",
        "## Accuracy (%), noise-free (bold: log2(m)+1 bits)", "", *lines, "",
        "## LSB of the worst-case range (levels)", "",
        "The fixed range always has an LSB of one level (full scale 2^bits - 1 levels).", "",
        *lsb_lines])
