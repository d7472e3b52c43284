"""Zero-skipping on real activations: input cycles per fragment vs fragment size m.

FORMS feeds inputs bit-serially (1 bit per cycle, LSB first); a fragment of m rows stops after
the highest nonzero bit among its m inputs (:func:`reram_emu.quantization.effective_cycles`, the
rule :func:`reram_emu.read` counts in :class:`~reram_emu.crossbar.ReadCounts`). The paper
reports on ResNet-50 with 16-bit inputs an average of 10.7 of 16 cycles at m = 4 and 15 at
m = 128 (FIELD.md section 1).

Here: every crossbar layer's real input vectors (:func:`reram_emu.experiments.cost_study.
crossbar_inputs`) on the digits test images, for the trained digits MLP (64-128-64-10, from
:func:`reram_emu.experiments.trained.digits_mlp`; full setting: also its copy polarized at
m = 8, and the digits CNN of :mod:`reram_emu.experiments.cost_study`), quantized to 8 or 16
unsigned bits with

* ``static``: one fixed step per layer, calibrated on 500 training images
  (:func:`reram_emu.training.calibrate_input_scales`: the 99.99th percentile of the layer's
  inputs maps to the top code, larger inputs clip), as a fixed-point accelerator would;
* ``per_vector``: each vector's largest input maps to the top code (the emulator's default
  read scale, ``InputConfig.scale="per_vector"``).

A layer with K inputs is cut into ``ceil(K / m)`` fragments (rows beyond K are unused cells at
0 V, as on the crossbar). Reported: the mean cycles per (input vector, fragment) pair, per layer,
for the first layer (image pixels), for the hidden layers (ReLU outputs) and overall (every
pair of every layer counted once: a CNN's convolutions feed many vectors per image), and the
fraction of cycles saved, ``1 - cycles / bits``.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..config import CrossbarConfig, InputConfig
from ..datasets import load_dataset
from ..quantization import effective_cycles, input_scale, quantize_inputs
from ..training import calibrate_input_scales
from . import cost_study
from .trained import digits_mlp

NAME = "zero_skip"
DESCRIPTION = "input cycles per fragment with zero-skipping vs fragment size on real activations"

FRAGMENT_ROWS = (2, 4, 8, 16, 32, 64, 128)
INPUT_BITS = (8, 16)
SCALES = ("static", "per_vector")
PAPER_RESNET50_16BIT = {4: 10.7, 128: 15.0}
"""FORMS (ISCA 2021), ResNet-50, 16-bit inputs: mean input cycles per fragment (of 16)."""
CALIBRATION_IMAGES = 500
CNN_EPOCHS = 30
MLP_POLARIZED_M = 8


def _models(quick: bool) -> tuple[str, ...]:
    if quick:
        return ("digits MLP",)
    return ("digits MLP", f"digits MLP, polarized m={MLP_POLARIZED_M}", "digits CNN")


def points(quick: bool) -> list[dict]:
    return [{"model": model, "input_bits": bits, "scale": scale, "m": m}
            for model in _models(quick) for bits in INPUT_BITS for scale in SCALES
            for m in FRAGMENT_ROWS]


def group(point: dict):
    return (point["model"], point["input_bits"], point["scale"])


def configuration(quick: bool) -> dict:
    return {
        "models": {
            "digits MLP": "64-128-64-10 ReLU MLP, float baseline of "
                          "reram_emu.experiments.trained.digits_mlp",
            f"digits MLP, polarized m={MLP_POLARIZED_M}":
                "the same MLP polarized by ADMM at fragment 8 (full setting only)",
            "digits CNN": f"cost_study.digits_cnn, {CNN_EPOCHS} epochs Adam (full setting only)"},
        "data": "scikit-learn digits, the test split of load_dataset('digits', seed)",
        "fragment_rows": list(FRAGMENT_ROWS), "input_bits": list(INPUT_BITS),
        "scales": {"static": f"per layer, 99.99th percentile on {CALIBRATION_IMAGES} training "
                             "images -> top code, clipping",
                   "per_vector": "each vector's max -> top code"},
        "paper": {"ResNet-50, 16-bit": PAPER_RESNET50_16BIT},
    }


# --------------------------------------------------------------------------- counting


def fragment_cycles(x_int, bits: int, m: int) -> jax.Array:
    """Input cycles each fragment needs with zero-skipping.

    Args:
      x_int: (V, K) unsigned integer inputs, each in ``[0, 2**bits - 1]``.
      bits: input bits (1 bit per cycle).
      m: fragment rows; K is zero-padded to a multiple of m (unused rows).

    Returns:
      (V, ceil(K / m)) int32: the bit length of the largest input of each fragment.

    Raises:
      TypeError: non-integer inputs. ValueError: bad shape, m or bits, inputs out of range.
    """
    return fragment_cycles_by_size(x_int, bits, (m,))[m]


def fragment_cycles_by_size(x_int, bits: int, fragment_rows) -> dict:
    """:func:`fragment_cycles` for several fragment sizes at once (one compiled function):
    ``{m: (V, ceil(K / m)) int32}`` for every m in ``fragment_rows``."""
    fragment_rows = tuple(fragment_rows)
    for name, value in (("bits", bits),) + tuple(("m", m) for m in fragment_rows):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not fragment_rows:
        raise ValueError("fragment_rows is empty")
    if bits > 24:
        raise ValueError(f"bits must be <= 24, got {bits}")
    if np.ndim(x_int) != 2:
        raise ValueError(f"x_int must be (vectors, inputs), got shape {np.shape(x_int)}")
    if not jnp.issubdtype(jnp.result_type(x_int), jnp.integer):
        raise TypeError(f"x_int must hold integers, got dtype {jnp.result_type(x_int)}")
    if not isinstance(x_int, jax.core.Tracer):
        low, high = int(jnp.min(x_int)), int(jnp.max(x_int))
        if low < 0 or high > 2 ** bits - 1:
            raise ValueError(f"inputs must lie in [0, {2 ** bits - 1}] for {bits} bits, got "
                             f"[{low}, {high}]")
    sizes = tuple(int(m) for m in fragment_rows)
    return dict(zip(sizes, _fragment_cycles(jnp.asarray(x_int, jnp.int32), int(bits), sizes)))


@partial(jax.jit, static_argnums=(1, 2))
def _fragment_cycles(x_int: jax.Array, bits: int, sizes: tuple) -> tuple:
    config = InputConfig(bits=bits)
    k = x_int.shape[-1]
    return tuple(effective_cycles(jnp.pad(x_int, ((0, 0), (0, -k % m))), config, m)
                 for m in sizes)


def quantized_layer_inputs(activations: dict, bits: int, scale: str, steps: dict | None = None
                           ) -> dict:
    """Integer inputs (V, K) int32 of every layer.

    Args:
      activations: layer name -> (V, K) non-negative float inputs.
      bits: input bits.
      scale: ``"static"`` (the fixed step ``steps[name]``, input units per code) or
        ``"per_vector"`` (each vector's largest input maps to the top code).
      steps: layer name -> step, for ``"static"``.
    """
    inputs = InputConfig(bits=bits)
    out = {}
    for name, x in activations.items():
        x = jnp.asarray(x, jnp.float32)
        if scale == "static":
            if steps is None or name not in steps:
                raise ValueError(f"the static scale needs a calibrated step for layer {name!r}")
            step = jnp.asarray(steps[name], jnp.float32)
        elif scale == "per_vector":
            step = input_scale(x, inputs)
        else:
            raise ValueError(f"scale must be 'static' or 'per_vector', got {scale!r}")
        out[name] = quantize_inputs(x, step, inputs)
    return out


def cycle_statistics(x_int: dict, bits: int, fragment_rows, first: str, images: int) -> dict:
    """Mean cycles per (vector, fragment) pair: per layer, first layer, hidden layers, overall.

    Args:
      x_int: layer name -> (V, K) integer inputs, in forward order.
      bits: input bits.
      fragment_rows: the fragment sizes m.
      first: the first layer's name.
      images: how many images gave the vectors.

    Returns ``{m: metrics}``, each a flat dict: cycles (overall, per layer, first layer, hidden
    layers), the fraction saved, fragments per vector, fragment reads per image, and the
    fraction of inputs that are 0 after quantization (per layer, first, hidden; the same for
    every m).
    """
    cycles = {name: fragment_cycles_by_size(x, bits, fragment_rows) for name, x in x_int.items()}
    hidden = [name for name in x_int if name != first]
    zeros = {name: (int(jnp.sum(x == 0)), int(x.size)) for name, x in x_int.items()}
    zero_metrics = {f"zero inputs {name}": z / n for name, (z, n) in zeros.items()}
    zero_metrics["zero inputs first layer"] = zeros[first][0] / zeros[first][1]
    zero_metrics["zero inputs hidden layers"] = (
        sum(zeros[n][0] for n in hidden) / sum(zeros[n][1] for n in hidden)
        if hidden else float("nan"))
    out = {}
    for m in fragment_rows:
        totals = {name: float(jnp.sum(c[m])) for name, c in cycles.items()}
        counts = {name: int(c[m].size) for name, c in cycles.items()}
        metrics = {}
        for name in x_int:
            metrics[f"cycles {name}"] = totals[name] / counts[name]
            metrics[f"fragments per vector {name}"] = int(cycles[name][m].shape[1])
        overall = sum(totals.values()) / sum(counts.values())
        metrics.update({
            "cycles": overall, "saved": 1.0 - overall / bits,
            "cycles first layer": totals[first] / counts[first],
            "cycles hidden layers": (sum(totals[n] for n in hidden)
                                     / sum(counts[n] for n in hidden)
                                     if hidden else float("nan")),
            "fragment reads per image": sum(counts.values()) / images,
        })
        metrics["saved first layer"] = 1.0 - metrics["cycles first layer"] / bits
        metrics["saved hidden layers"] = 1.0 - metrics["cycles hidden layers"] / bits
        out[int(m)] = {**metrics, **zero_metrics}
    return out


# --------------------------------------------------------------------------- experiment


def _record(model, params, data, calibration_x) -> dict:
    """Each layer's activations and fixed input steps, by the model's layer name (the crossbar
    layer of ``name`` is the product with the parameter ``name/w``)."""
    records = cost_study.crossbar_inputs(model, params, jnp.asarray(data.x_test))
    names = model.layer_names
    activations = {name: records[f"{name}/w"][0] for name in names}
    steps = {}
    for bits in INPUT_BITS:
        calibrated = calibrate_input_scales(model.apply, params, calibration_x,
                                            CrossbarConfig(inputs=InputConfig(bits=bits)))
        steps[bits] = {name: calibrated[f"{name}/w"] for name in names}
    return {"activations": activations,
            "vectors_per_image": {n: records[f"{n}/w"][1] for n in names},
            "steps": steps, "first": names[0], "images": int(len(data.x_test))}


def prepare(quick: bool, seed: int, work_dir):
    start = time.perf_counter()
    models = _models(quick)
    polarized = (MLP_POLARIZED_M,) if any("polarized" in name for name in models) else ()
    trained = digits_mlp(work_dir, fragment_rows=polarized, seed=seed, quick=quick)
    context = {"digits MLP": _record(trained.model, trained.float_params, trained.data,
                                     trained.calibration_x)}
    context["digits MLP"]["accuracy"] = trained.float_accuracy
    if polarized:
        name = f"digits MLP, polarized m={MLP_POLARIZED_M}"
        context[name] = _record(trained.model, trained.polarized[MLP_POLARIZED_M], trained.data,
                                trained.calibration_x)
        context[name]["accuracy"] = trained.polarized_accuracy[MLP_POLARIZED_M]
    if "digits CNN" in models:
        data = load_dataset("digits", seed=seed)
        model = cost_study.digits_cnn()
        params = cost_study.train(model, model.init(jax.random.key(seed)), data, CNN_EPOCHS,
                                  seed)
        context["digits CNN"] = _record(model, params, data, data.x_train[:CALIBRATION_IMAGES])
        context["digits CNN"]["accuracy"] = cost_study.accuracy(model, params, data.x_test,
                                                                data.y_test)
    context["prepare_seconds"] = time.perf_counter() - start
    return context


def evaluate(context, batch, seed):
    model, bits, scale = batch[0]["model"], batch[0]["input_bits"], batch[0]["scale"]
    record = context[model]
    x_int = quantized_layer_inputs(record["activations"], bits, scale,
                                   record["steps"][bits] if scale == "static" else None)
    stats = cycle_statistics(x_int, bits, [p["m"] for p in batch], record["first"],
                             record["images"])
    return [{**stats[point["m"]], "model_accuracy": record["accuracy"]} for point in batch]


# --------------------------------------------------------------------------- report


def _rows(rows, **where):
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _series(rows, key, **where):
    found = sorted(_rows(rows, **where), key=lambda r: r["m"])
    return [r["m"] for r in found], [r.get(key, np.nan) for r in found]


def report(rows, out_dir, quick) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    models = list(dict.fromkeys(r["model"] for r in rows))
    colors = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    figure, axes = plt.subplots(2, 2, figsize=(12, 8.4), sharex=True)
    for column, bits in enumerate(INPUT_BITS):
        top, bottom = axes[0, column], axes[1, column]
        for model in models:
            ms, values = _series(rows, "cycles", model=model, input_bits=bits, scale="static")
            top.plot(ms, values, "o-", color=colors[model], label=f"{model}, static scale")
            ms, values = _series(rows, "cycles", model=model, input_bits=bits,
                                 scale="per_vector")
            top.plot(ms, values, "x--", color=colors[model], alpha=0.6, lw=0.9,
                     label=f"{model}, per-vector scale")
            for key, style, label in (("cycles first layer", "v:", "first layer (pixels)"),
                                      ("cycles hidden layers", "s-", "hidden layers (ReLU)")):
                ms, values = _series(rows, key, model=model, input_bits=bits, scale="static")
                bottom.plot(ms, values, style, color=colors[model], ms=4,
                            label=f"{model}: {label}")
        top.set_title(f"{bits}-bit inputs: every layer", fontsize=10)
        bottom.set_title(f"{bits}-bit inputs, static scale: first layer vs hidden layers",
                         fontsize=10)
        for axis in (top, bottom):
            if bits == 16:
                axis.plot(list(PAPER_RESNET50_16BIT), list(PAPER_RESNET50_16BIT.values()), "k*",
                          ms=14, label="FORMS paper, ResNet-50 (every layer)")
            axis.axhline(bits, color="gray", lw=0.8)
            axis.set_xscale("log", base=2)
            axis.set_xticks(FRAGMENT_ROWS, [str(m) for m in FRAGMENT_ROWS])
            axis.set_ylim(0, bits + 0.5)
            axis.set_ylabel(f"mean input cycles per fragment (of {bits})")
            axis.grid(True, alpha=0.3)
        bottom.set_xlabel("fragment rows m")
    axes[0, 1].legend(fontsize=7, loc="lower right")
    axes[1, 1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out_dir / "zero_skip_cycles.png", dpi=110)
    plt.close(figure)

    def table(bits, scale):
        lines = ["| model | inputs | " + " | ".join(f"m={m}" for m in FRAGMENT_ROWS) + " |",
                 "|---|---|" + "---|" * len(FRAGMENT_ROWS)]
        for model in models:
            found = _rows(rows, model=model, input_bits=bits, scale=scale)
            if not found:
                continue
            layers = [k[len("cycles "):] for k in found[0] if k.startswith("cycles ")
                      and k not in ("cycles first layer", "cycles hidden layers")]
            for key, label in ([("cycles", "all layers"), ("cycles first layer", "first layer"),
                                ("cycles hidden layers", "hidden layers")]
                               + [(f"cycles {n}", n) for n in layers]):
                ms, values = _series(rows, key, model=model, input_bits=bits, scale=scale)
                by_m = dict(zip(ms, values))
                lines.append(f"| {model} | {label} | " + " | ".join(
                    f"{by_m[m]:.2f} ({100 * (1 - by_m[m] / bits):.0f} %)" if m in by_m else ""
                    for m in FRAGMENT_ROWS) + " |")
        if bits == 16:
            lines.append("| FORMS paper, ResNet-50 | all layers | " + " | ".join(
                f"{PAPER_RESNET50_16BIT[m]:.1f} ({100 * (1 - PAPER_RESNET50_16BIT[m] / 16):.0f} %)"
                if m in PAPER_RESNET50_16BIT else "" for m in FRAGMENT_ROWS) + " |")
        return "\n".join(lines)

    def value(key, **where):
        found = _rows(rows, **where)
        return found[0][key] if found else np.nan

    main = models[0]
    c = {m: value("cycles", model=main, input_bits=16, scale="static", m=m)
         for m in FRAGMENT_ROWS}
    first = {m: value("cycles first layer", model=main, input_bits=16, scale="static", m=m)
             for m in FRAGMENT_ROWS}
    hidden = {m: value("cycles hidden layers", model=main, input_bits=16, scale="static", m=m)
              for m in FRAGMENT_ROWS}
    zero_first = value("zero inputs first layer", model=main, input_bits=16, scale="static",
                       m=FRAGMENT_ROWS[0])
    zero_hidden = value("zero inputs hidden layers", model=main, input_bits=16,
                        scale="static", m=FRAGMENT_ROWS[0])
    c8 = {m: value("cycles", model=main, input_bits=8, scale="static", m=m)
          for m in FRAGMENT_ROWS}
    pv = {m: value("cycles", model=main, input_bits=16, scale="per_vector", m=m)
          for m in FRAGMENT_ROWS}
    # where the mean cycles fall as m grows: (model, layer, m_low, m_high) -> settings
    decreases: dict = {}
    for model in models:
        for bits in INPUT_BITS:
            for scale in SCALES:
                found = sorted(_rows(rows, model=model, input_bits=bits, scale=scale),
                               key=lambda r: r["m"])
                keys = ["cycles"] + [k for k in (found[0] if found else {})
                                     if k.startswith("cycles ") and "layer" not in k]
                for key in keys:
                    for low, high in zip(found, found[1:]):
                        if high[key] < low[key] - 1e-9:
                            name = "all layers" if key == "cycles" else key[len("cycles "):]
                            decreases.setdefault((model, name, low["m"], high["m"]), []).append(
                                (bits, scale, low[key], high[key],
                                 low.get(f"fragments per vector {name}"),
                                 high.get(f"fragments per vector {name}")))
    decrease_text = []
    for (model, name, m_low, m_high), cases in decreases.items():
        bits, scale, v_low, v_high, f_low, f_high = cases[0]
        fragments = f", {f_low} -> {f_high} fragments per vector" if f_low else ""
        decrease_text.append(f"{model}, {name}, m = {m_low} -> {m_high} in {len(cases)} of "
                             f"{len(INPUT_BITS) * len(SCALES)} settings (e.g. {bits} b, {scale}: "
                             f"{v_low:.2f} -> {v_high:.2f}{fragments})")

    accuracies = {model: value("model_accuracy", model=model) for model in models}
    lines = [
        f"Mean input cycles per fragment with zero-skipping on the digits test images, "
        f"{', '.join(f'{m} (test accuracy {100 * a:.1f} %)' for m, a in accuracies.items())}. "
        "Every (input vector, fragment) pair of every crossbar layer counts once. Static "
        "scale: one calibrated fixed-point step per layer; per-vector: each vector's max at "
        "the top code.",
        "",
        "What the data shows:",
        "",
        f"- {main}, 16-bit inputs, static scale: {c[4]:.2f} cycles at m = 4 "
        f"({100 * (1 - c[4] / 16):.0f} % saved; paper, ResNet-50: 10.7, 33 %) and "
        f"{c[128]:.2f} at m = 128 ({100 * (1 - c[128] / 16):.0f} % saved; paper: 15, 6 %); "
        f"from m = 2 to 128: {', '.join(f'{c[m]:.2f}' for m in FRAGMENT_ROWS)}.",
        f"- First layer (image pixels) vs hidden layers (ReLU outputs), same setting: "
        f"{', '.join(f'{first[m]:.2f}' for m in FRAGMENT_ROWS)} vs "
        f"{', '.join(f'{hidden[m]:.2f}' for m in FRAGMENT_ROWS)} (m = 2 .. 128). "
        f"{100 * zero_first:.0f} % of the first layer's inputs and {100 * zero_hidden:.0f} % "
        "of the hidden layers' inputs are 0 after quantization; a fragment skips cycles only "
        "when all of its m inputs are small, so the benefit falls quickly with m.",
    ]
    for model in models[1:]:
        get = {key: {m: value(key, model=model, input_bits=16, scale="static", m=m)
                     for m in FRAGMENT_ROWS}
               for key in ("cycles", "cycles first layer", "cycles hidden layers",
                           "zero inputs first layer", "zero inputs hidden layers")}
        lines.append(
            f"- {model}, 16-bit, static scale: {get['cycles'][4]:.2f} cycles at m = 4 "
            f"({100 * (1 - get['cycles'][4] / 16):.0f} % saved) and {get['cycles'][128]:.2f} at "
            f"m = 128 ({100 * (1 - get['cycles'][128] / 16):.0f} %); first layer "
            f"{get['cycles first layer'][4]:.2f} / {get['cycles first layer'][128]:.2f}, hidden "
            f"layers {get['cycles hidden layers'][4]:.2f} / "
            f"{get['cycles hidden layers'][128]:.2f} (m = 4 / 128); zero inputs "
            f"{100 * get['zero inputs first layer'][4]:.0f} % (first layer), "
            f"{100 * get['zero inputs hidden layers'][4]:.0f} % (hidden layers).")
    lines += [
        f"- 8-bit inputs: {', '.join(f'{c8[m]:.2f}' for m in FRAGMENT_ROWS)} cycles of 8 "
        f"({100 * (1 - c8[4] / 8):.0f} % saved at m = 4, {100 * (1 - c8[128] / 8):.0f} % at "
        f"m = 128).",
        f"- Per-vector scale (16 bits): {', '.join(f'{pv[m]:.2f}' for m in FRAGMENT_ROWS)}: "
        "each vector's largest input uses every bit, so its fragment runs all cycles.",
        "- Mean cycles never fall as m grows, in any series or layer."
        if not decreases else
        "- Mean cycles fall as m grows in " + "; ".join(decrease_text) + ". A layer whose K is "
        "not a multiple of m ends in a tail fragment of fewer real rows (the rest unused), "
        "and averages over fragments weight such tails differently at each m.",
    ]
    return ("\n".join(lines) + "\n\n![cycles vs m](zero_skip_cycles.png)\n\n"
            + "\n\n".join(f"### {bits}-bit inputs, {scale} scale\n\nmean cycles per fragment "
                          f"(saved)\n\n{table(bits, scale)}"
                          for bits in INPUT_BITS for scale in SCALES))
