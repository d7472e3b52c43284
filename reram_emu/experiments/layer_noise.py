"""How far each non-ideality moves one crossbar layer's output, per design.

A random 256 x 128 layer (polarized per fragment for FORMS) reads scikit-learn's digits images
(tiled to 256 inputs) through FORMS at fragment 4, 8 and 16, ISAAC and PRIME, with every
non-ideality off, then each one alone, then all together. Reported: the relative error of the
outputs against the float product, ADC conversions, and the input cycles FORMS's zero-skipping
saves on these real inputs. FORMS's ADC (log2(m)+1 bits) cannot code a fragment's worst-case
sum: the preset widens the LSB (no clipping, less resolution); the clipping variant keeps one
level per code and clips. PRIME's 6-bit ADC is shown at its worst-case range and calibrated to
the data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import reram_emu as rx
from reram_emu.config import ADCConfig, DeviceConfig, InputConfig, MappingConfig
from reram_emu.crossbar import calibrate_adc
from reram_emu.datasets import load_dataset
from reram_emu.quantization import input_scale, quantize_inputs

NAME = "layer_noise"
DESCRIPTION = "relative output error of one layer per design and non-ideality"

NON_IDEALITIES = {
    "none": {},
    "variation 0.1 (lognormal)": {"variation_sigma": 0.1},
    "read noise 0.02": {"read_noise_sigma": 0.02},
    "stuck-at 0.5 % on / 0.5 % off": {"stuck_on_rate": 0.005, "stuck_off_rate": 0.005},
    "all of the above + ADC noise 0.5 LSB": {"variation_sigma": 0.1, "read_noise_sigma": 0.02,
                                             "stuck_on_rate": 0.005, "stuck_off_rate": 0.005,
                                             "adc_noise": 0.5},
}

DESIGNS = ["FORMS m=4", "FORMS m=8", "FORMS m=16", "FORMS m=8, clipping ADC", "ISAAC", "PRIME",
           "PRIME, calibrated ADC"]


def design_config(name: str) -> rx.CrossbarConfig:
    if name.startswith("FORMS"):
        m = int(name.split("m=")[1].split(",")[0])
        config = rx.preset("forms", fragment_rows=m)
        config = config.replace(adc=ADCConfig(bits=config.adc.bits, range="fixed" if "clipping"
                                              in name else "worst_case"))
        return config.replace(inputs=InputConfig(bits=8))
    if name == "ISAAC":
        return rx.preset("isaac").replace(inputs=InputConfig(bits=8))
    config = rx.preset("prime")
    config = config.replace(adc=ADCConfig(bits=6, range="calibrated" if "calibrated" in name
                                          else "worst_case"))
    return config


def points(quick: bool) -> list[dict]:
    designs = DESIGNS[:2] + DESIGNS[4:6] if quick else DESIGNS
    return [{"design": d, "non_ideality": n} for d in designs for n in NON_IDEALITIES]


def configuration(quick: bool) -> dict:
    return {"layer": "random normal 256 x 128 (/16), polarized by projection for FORMS",
            "inputs": "digits test images (128), 8-bit (PRIME: 6-bit, 3-bit DAC), tiled to 256",
            "designs": {d: repr(design_config(d)) for d in DESIGNS}}


def prepare(quick: bool, seed: int, work_dir):
    rng = np.random.default_rng(seed)
    data = load_dataset("digits", seed=seed, flatten=True)
    x = np.tile(data.x_test[:128], (1, 4)).astype(np.float32)
    weights = (rng.normal(size=(256, 128)) / 16).astype(np.float32)
    return {"x": x, "weights": weights}


def evaluate(context, batch, seed):
    x, weights = context["x"], context["weights"]
    rows = []
    for point in batch:
        base = design_config(point["design"])
        change = NON_IDEALITIES[point["non_ideality"]]
        device = DeviceConfig(**{k: v for k, v in change.items() if k != "adc_noise"})
        adc = ADCConfig(**{**base.adc.__dict__, "noise_lsb": change.get("adc_noise", 0.0)})
        mapping = MappingConfig(**{**base.mapping.__dict__, "on_violation": "project"})
        config = base.replace(device=device, adc=adc, mapping=mapping)
        m = config.geometry.fragment_rows
        w = np.asarray(rx.project_polarized(weights, m)) if config.mapping.scheme == "polarized" \
            else weights
        layer = rx.program(rx.map_weights(w, config), jax.random.key(seed))
        if config.adc.range == "calibrated":
            scale = input_scale(jnp.asarray(x), config.inputs)
            layer = calibrate_adc(layer, quantize_inputs(jnp.asarray(x), scale, config.inputs))
        result = rx.read(layer, x, jax.random.key(seed + 1))
        exact = x @ w
        rows.append({
            "relative_error": float(np.linalg.norm(np.asarray(result.outputs) - exact)
                                    / np.linalg.norm(exact)),
            "adc_conversions": int(result.counts.adc_conversions),
            "cycles_saved_by_zero_skip": float(result.counts.cycles_saved_fraction)})
    return rows


def report(rows, out_dir, quick) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    designs = list(dict.fromkeys(r["design"] for r in rows))
    labels = list(NON_IDEALITIES)
    figure, axis = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        values = [next((r["relative_error"] for r in rows if r["design"] == d
                        and r["non_ideality"] == label), np.nan) for d in designs]
        axis.bar(np.arange(len(designs)) + j * width, values, width, label=label)
    axis.set_xticks(np.arange(len(designs)) + 0.4 - width / 2, designs, rotation=20, ha="right")
    axis.set_yscale("log")
    axis.set_ylabel("relative output error")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_dir / "layer_noise.png", dpi=120)
    plt.close(figure)
    lines = ["| design | non-ideality | relative error | ADC conversions | cycles saved by "
             "zero-skip |", "|---|---|---|---|---|"]
    lines += [f"| {r['design']} | {r['non_ideality']} | {r['relative_error']:.4f} | "
              f"{r['adc_conversions']} | {100 * r['cycles_saved_by_zero_skip']:.1f} % |"
              for r in rows]
    return ("A random 256 x 128 layer read with digits images (8-bit inputs) through each "
            "design; error relative to the float product.\n\n![errors](layer_noise.png)\n\n"
            + "\n".join(lines))
