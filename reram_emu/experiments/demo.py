"""The embedded default: how far each non-ideality moves a crossbar layer's output.

A random 256 x 128 layer (polarized per fragment for FORMS) reads scikit-learn's digits images
(tiled to 256 inputs) through FORMS at fragment 4, 8 and 16, ISAAC and PRIME, with every
non-ideality off, then each one alone, then all together. Reported: the relative error of the
outputs against the float product, ADC conversions, and the input cycles FORMS's zero-skipping
saves on these real inputs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import reram_emu as rx
from reram_emu.config import ADCConfig, DeviceConfig, MappingConfig
from reram_emu.crossbar import calibrate_adc
from reram_emu.quantization import input_scale, quantize_inputs
from reram_emu.datasets import load_dataset

NON_IDEALITIES = {
    "none": {},
    "variation 0.1 (lognormal)": {"device": DeviceConfig(variation_sigma=0.1)},
    "read noise 0.02": {"device": DeviceConfig(read_noise_sigma=0.02)},
    "stuck-at 0.5 % on / 0.5 % off": {"device": DeviceConfig(stuck_on_rate=0.005,
                                                              stuck_off_rate=0.005)},
    "all of the above + ADC noise 0.5 LSB": {"device": DeviceConfig(
        variation_sigma=0.1, read_noise_sigma=0.02, stuck_on_rate=0.005, stuck_off_rate=0.005),
        "adc_noise": 0.5},
}


def designs():
    yield "FORMS m=4", rx.preset("forms", fragment_rows=4)
    yield "FORMS m=8", rx.preset("forms", fragment_rows=8)
    yield "FORMS m=16", rx.preset("forms", fragment_rows=16)
    yield "FORMS m=8, clipping ADC", rx.preset("forms").replace(adc=ADCConfig(bits=4,
                                                                               range="fixed"))
    yield "ISAAC", rx.preset("isaac")
    yield "PRIME", rx.preset("prime")
    yield "PRIME, calibrated ADC", rx.preset("prime").replace(adc=ADCConfig(bits=6,
                                                                             range="calibrated"))


def run(out: Path, seed: int = 0) -> dict:
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    data = load_dataset("digits", seed=seed, flatten=True)
    x = np.tile(data.x_test[:128], (1, 4)).astype(np.float32)  # (128, 256), real activations
    weights = (rng.normal(size=(256, 128)) / 16).astype(np.float32)
    rows = []
    for name, base in designs():
        m = base.geometry.fragment_rows
        w = np.asarray(rx.project_polarized(weights, m)) if base.mapping.scheme == "polarized" \
            else weights
        exact = x @ w
        for label, change in NON_IDEALITIES.items():
            config = base.replace(inputs=base.inputs.__class__(
                bits=6 if name.startswith("PRIME") else 8, dac_bits=base.inputs.dac_bits))
            if "device" in change:
                config = config.replace(device=change["device"])
            if "adc_noise" in change:
                config = config.replace(adc=ADCConfig(**{**config.adc.__dict__,
                                                         "noise_lsb": change["adc_noise"]}))
            mapped = rx.map_weights(w, config.replace(mapping=MappingConfig(
                **{**config.mapping.__dict__, "on_violation": "project"})))
            layer = rx.program(mapped, jax.random.key(seed))
            if config.adc.range == "calibrated":
                scale = input_scale(jnp.asarray(x), config.inputs)
                layer = calibrate_adc(layer, quantize_inputs(jnp.asarray(x), scale, config.inputs))
            result = rx.read(layer, x, jax.random.key(seed + 1))
            error = float(np.linalg.norm(np.asarray(result.outputs) - exact)
                          / np.linalg.norm(exact))
            counts = result.counts
            rows.append({
                "design": name, "non_ideality": label, "relative_error": error,
                "adc_conversions": int(counts.adc_conversions),
                "cycles_saved_by_zero_skip": float(counts.cycles_saved_fraction),
            })
            print(f"{name:24s} {label:38s} error {error:8.4f}  conversions "
                  f"{int(counts.adc_conversions):>10d}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    report = {"experiment": "demo", "version": rx.__version__, "seed": seed,
              "inputs": "digits test images (128), 8-bit (PRIME: 6-bit), tiled to 256",
              "layer": "random normal 256 x 128, polarized by projection for FORMS",
              "rows": rows, "wall_time_s": time.perf_counter() - start}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    lines = ["# reram_emu demo: relative output error per design and non-ideality", "",
             f"{report['layer']}; inputs: {report['inputs']}.", "",
             "| design | non-ideality | relative error | ADC conversions | cycles saved by "
             "zero-skip |", "|---|---|---|---|---|"]
    lines += [f"| {r['design']} | {r['non_ideality']} | {r['relative_error']:.4f} | "
              f"{r['adc_conversions']} | {100 * r['cycles_saved_by_zero_skip']:.1f} % |"
              for r in rows]
    lines += ["", f"Wall time {report['wall_time_s']:.1f} s."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return report
