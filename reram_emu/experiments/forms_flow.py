"""The ``forms_flow`` experiment: FORMS's full flow, prune -> polarize -> quantize, read through
the emulator, with the paper's crossbar accounting, robustness row and cost comparison.

FORMS (Yuan et al., ISCA 2021) Table I: LeNet-5 on MNIST pruned 23.18x, crossbar reduction
185.44x (pruning x 4 for 32 -> 8 bits x 2 for polarization), drops -0.02 / -0.01 / 0.14 % at
m = 4 / 8 / 16. Table VI: log-normal variation sigma 0.1. Table V: FORMS (m = 16) 1.50x
GOPs/(s mm^2) and 1.93x GOPs/W over pruned and quantized ISAAC. Stages (points):

* ``baseline``: the float LeNet-5 (the ``polarize`` study's training settings).
* ``pruned``: crossbar-aware structured pruning by ADMM (:mod:`reram_emu.pruning`: whole GEMM
  rows, i.e. filter shapes, and columns, i.e. filters; per-layer ratios in :data:`MNIST`),
  hard projection, masked fine-tuning. Float accuracy, per-layer rows/columns kept, crossbars.
* ``flow`` (per m): from the pruned model, ADMM polarization keeping the pruned weights zero,
  masked fine-tuning, 8-bit quantization (:func:`reram_emu.training.prune_polarize_quantize`),
  then the model read through the emulator without noise on every test image: the drop against
  the float baseline (paired 95 % interval over images), the prune ratio and both crossbar
  reductions: the paper's product and the crossbars counted by the mapping.
* ``robustness`` (m = 8): log-normal variation sigma 0.1 over >= 20 programming keys for the
  original, polarized-only, pruned and full models (unpolarized models on a PRIME-style
  differential mapping, polarized ones on FORMS), each loss against its own noise-free read.
* ``cost`` (m = 16): :func:`reram_emu.cost.compare_designs` on the pruned models, compacted
  (pruned columns and rows removed; the polarized model drops only whole fragment rows, so
  its fragments keep their trained signs: :func:`reram_emu.pruning.compact`): FORMS m = 16 (full flow) against ISAAC with 8-bit weights
  on the pruned model; conversions per image with zero-skipping, GOPs/(s mm^2) and GOPs/W.

Every training stage checkpoints under the work folder; ``--resume`` skips finished points and
unfinished stages resume at their last epoch. ``--quick`` runs the digits MLP in about a minute.
CIFAR-10 (ResNet-20 and up, :mod:`reram_emu.cifar_models`) needs far more compute than a 2-core
CPU has: see the committed summary for its state.

    python -m reram_emu.experiments run forms_flow --out experiments/forms_flow
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path

import numpy as np

from .. import admm as admm_lib
from .. import cost
from .. import training as T
from ..config import WeightConfig, preset
from ..nn import analog
from ..pruning import PruneConfig, compact, crossbar_usage, paper_crossbar_reduction
from . import polarize as P
from . import trained

NAME = "forms_flow"
DESCRIPTION = ("FORMS's full flow prune -> polarize -> quantize at m = 4, 8, 16 through the "
               "emulator: drops, crossbar reduction, variation robustness, cost vs ISAAC")

PAPER = {"prune_ratio": 23.18, "reduction": 185.44, "drop_points": {4: -0.02, 8: -0.01, 16: 0.14},
         "variation_loss_points": {"original": 0.35, "polarized-only": 0.37, "pruned": 1.82},
         "gops_per_s_mm2": 1.50, "gops_per_w": 1.93}
TARGETS = {"prune_ratio": 20.0, "drop_points_m8": 0.2}
COST_M = 16
ROBUST_M = 8
MODELS = ("original", "polarized-only", "pruned", "full")

#: LeNet-5 on MNIST: ~22x fewer weights. conv1 (150 weights) is kept whole; conv2 keeps half
#: its rows (filter shapes); fc1 (400 x 120, 78 % of the weights), fc2 and fc3 keep half their
#: rows and columns (fc3 all 10 outputs), then 1/48, 1/16 and 1/4 of their fragments of 8 rows
#: (finer structures: an all-zero fragment is neither stored nor converted). Measured on this
#: study's 2-core CPU, harsher row/column-only settings (fc1 keeping 40 rows x 30 columns, 20.6x)
#: lost 4.6 points in float after pruning, fragment-only 0.8. The pruning stage: 20 ADMM epochs
#: of 470 steps (the ``polarize`` study's lr 5e-4, rho 1e-3 growing 1.25x at each of 2 Z/U updates per epoch), then 60 of
#: masked fine-tuning (lr 1e-3); the polarization stage is the ``polarize`` study's (2 + 5).
MNIST_PRUNE = PruneConfig(layers={
    "conv2/w": {"rows": 2},
    "fc1/w": {"rows": 2, "columns": 2, "fragments": 48},
    "fc2/w": {"rows": 2, "columns": 2, "fragments": 16},
    "fc3/w": {"rows": 2, "fragments": 4}})
MNIST = dataclasses.replace(P.MNIST, variation_m=(ROBUST_M,))
MNIST_PRUNE_ADMM = dataclasses.replace(P.MNIST.admm, epochs=20, finetune_epochs=60,
                                       rho_growth=1.25, updates_per_epoch=2,
                                       finetune_learning_rate=1e-3, weight_bits=None,
                                       prune=MNIST_PRUNE)
#: The digits MLP (64-128-64-10), quick: fc1 and fc2 keep half their rows and columns.
DIGITS = dataclasses.replace(P.DIGITS_QUICK, variation_m=(ROBUST_M,), variation_keys=10)
DIGITS_PRUNE_ADMM = dataclasses.replace(
    trained.ADMM_QUICK, weight_bits=None,
    prune=PruneConfig(rows=2, columns=2, layers={"fc3/w": {"columns": 1}}))

SETTINGS = {False: {"mnist": (MNIST, MNIST_PRUNE_ADMM)},
            True: {"digits": (DIGITS, DIGITS_PRUNE_ADMM)}}
STAGES = ("baseline", "pruned", "flow", "robustness", "cost")


def points(quick: bool) -> list[dict]:
    out = []
    for name in SETTINGS[bool(quick)]:
        out += [{"dataset": name, "stage": "baseline", "m": None},
                {"dataset": name, "stage": "pruned", "m": None}]
        out += [{"dataset": name, "stage": "flow", "m": m} for m in P.FRAGMENTS]
        out += [{"dataset": name, "stage": "robustness", "m": ROBUST_M},
                {"dataset": name, "stage": "cost", "m": COST_M}]
    return out


def group(point) -> tuple:
    return (point["dataset"], point["stage"], point["m"])


def configuration(quick: bool) -> dict:
    out = {}
    for name, (s, prune) in SETTINGS[bool(quick)].items():
        out[name] = {"settings": P._settings_record(s), "prune_admm": repr(prune)}
    return {"datasets": out, "read": repr(P.forms(8)), "differential": repr(P.differential(8)),
            "variation_sigma": P.VARIATION_SIGMA, "paper": PAPER, "targets": TARGETS,
            "machine": P.configuration(quick)["machine"]}


def prepare(quick: bool, seed: int, work_dir) -> "Context":
    settings = SETTINGS[bool(quick)]
    return Context({k: s for k, (s, _) in settings.items()}, {k: a for k, (_, a) in
                                                             settings.items()},
                   seed, Path(work_dir), quick)


def evaluate(context: "Context", batch: list[dict], seed: int) -> list[dict]:
    return P.evaluate(context, batch, seed, STAGES)


class Context(P.Context):
    """The ``polarize`` study's data, baseline, polarized-only models and emulated reads, plus
    the pruned model and the full flow at every m."""

    def __init__(self, settings, prune_admm, seed, work_dir, quick, log=None):
        super().__init__(settings, seed, work_dir, quick, log)
        self.prune_admm = prune_admm

    def pruned(self, name: str) -> T.PolarizeResult:
        def build():
            data, model, _ = self.data(name)
            return T.polarize(model.apply, self.baseline(name), data, self.prune_admm[name],
                              self.train_config(self.settings[name].polarize),
                              checkpoint_dir=str(self.folder(name) / "prune"), log=self.log,
                              eval_data=self.monitor(name))
        return self._memo(("pruned", name), build)

    def flowed(self, name: str, m: int) -> T.PolarizeResult:
        def build():
            data, model, _ = self.data(name)
            pruned = self.pruned(name)
            return T.polarize(model.apply, pruned.params, data, self.admm_config(name, m),
                              self.train_config(self.settings[name].polarize),
                              checkpoint_dir=str(self.folder(name) / f"flow_m{m}"),
                              log=self.log, eval_data=self.monitor(name),
                              check_config=P.forms(m), masks=pruned.masks)
        return self._memo(("flow", name, m), build)

    def weights(self, name: str, params) -> dict:
        data, model, _ = self.data(name)
        return {k: np.asarray(v) for k, v in
                T.crossbar_view(model.apply, params, data.x_test[:1]).get(params).items()}

    def accounting(self, name: str, params, config) -> tuple[list[dict], dict]:
        """Per layer: rows/columns kept, crossbars (pruned, and dense on the same design and
        on the differential one), live fragments; and the network totals."""
        base = self.weights(name, self.baseline(name))
        rows, totals = [], dict.fromkeys(("weights", "nonzero", "crossbars",
                                          "crossbars_dense", "crossbars_dense_differential"), 0)
        for layer, w in self.weights(name, params).items():
            usage = crossbar_usage(w, config)
            dense_dif = crossbar_usage(base[layer], P.differential(config.geometry.fragment_rows))
            row = {"layer": layer, **usage._asdict(),
                   "crossbars_dense_differential": dense_dif.crossbars_dense}
            rows.append(row)
            for key in totals:
                totals[key] += row[key]
        return rows, totals

    # ---- the stages

    def stage_pruned(self, name: str, m=None) -> dict:
        data, model, _ = self.data(name)
        trained_before = (self.folder(name) / "prune" / "finetune.npz").exists()
        result = self.pruned(name)
        layers, totals = self.accounting(name, result.params, P.forms(8))
        return {"float_acc": T.accuracy(model.apply, result.params, data.x_test, data.y_test),
                "prune_ratio": totals["weights"] / totals["nonzero"], **totals,
                "layers": layers, "ratios": {k: self.prune_admm[name].prune.ratios(k)
                                             for k in (r["layer"] for r in layers)},
                "monitor_acc_per_epoch": [round(h["test_acc"], 4) for h in result.history],
                "loaded_checkpoint": trained_before}

    def stage_flow(self, name: str, m: int) -> dict:
        data, model, _ = self.data(name)
        s = self.settings[name]
        trained_before = (self.folder(name) / f"flow_m{m}" / "finetune.npz").exists()
        result = self.flowed(name, m)
        clean = self.emulate(name, result.params, P.forms(m), s.eval_images)
        base_ok = self.float_correct(name, self.baseline(name), s.eval_images)
        drop = T.crossed_ci(base_ok.astype(float) - clean.correct[0])
        layers, totals = self.accounting(name, result.params, P.forms(m))
        pruned = self.stage_pruned_totals(name)
        prune_ratio = pruned["weights"] / pruned["nonzero"]
        return {
            "float_acc": T.accuracy(model.apply, result.params, data.x_test, data.y_test),
            "emulated_acc": clean.mean, "eval_images": clean.images,
            "baseline_float_acc_eval_images": float(np.mean(base_ok)),
            "drop_points": 100 * drop[0], "drop_ci_points": [100 * drop[1], 100 * drop[2]],
            "paper_drop_points": PAPER["drop_points"][m],
            "prune_ratio": prune_ratio,
            "nonzero_ratio_after_polarization": totals["weights"] / totals["nonzero"],
            "paper_reduction": paper_crossbar_reduction(prune_ratio),
            "counted_reduction_vs_dense_differential_8bit":
                totals["crossbars_dense_differential"] / totals["crossbars"],
            "counted_reduction_vs_dense_same_design": totals["crossbars_dense"] / totals["crossbars"],
            **totals, "layers": layers,
            "polarized": bool(admm_lib.check_polarized(self.weights(name, result.params), m,
                                                       P.forms(m))),
            "monitor_acc_per_epoch": [round(h["test_acc"], 4) for h in result.history],
            "loaded_checkpoint": trained_before,
        }

    def stage_pruned_totals(self, name: str) -> dict:
        return self.accounting(name, self.pruned(name).params, P.forms(8))[1]

    def stage_robustness(self, name: str, m: int) -> dict:
        s = self.settings[name]
        n, keys = s.variation_images, s.variation_keys
        models = {"original": (self.baseline(name), P.differential),
                  "polarized-only": (self.polarized(name, m).params, P.forms),
                  "pruned": (self.pruned(name).params, P.differential),
                  "full": (self.flowed(name, m).params, P.forms)}
        out = {"keys": keys, "images": None, "sigma": P.VARIATION_SIGMA}
        for label, (params, design) in models.items():
            clean = self.emulate(name, params, design(m), n).correct[0].astype(float)
            noisy = self.emulate(name, params, design(m, P.VARIATION), n, keys, seed=1)
            loss = T.crossed_ci(clean[None] - noisy.correct)
            out["images"] = noisy.images
            out[label] = {"mapping": "FORMS" if design is P.forms else "differential",
                          "clean_acc": float(np.mean(clean)), "variation_acc": noisy.mean,
                          "loss_points": 100 * loss[0],
                          "loss_ci_points": [100 * loss[1], 100 * loss[2]],
                          "paper_loss_points": PAPER["variation_loss_points"].get(label)}
        return out

    def workloads(self, name: str, params, x, fragment_rows: int | None = None
                  ) -> list[cost.LayerWorkload]:
        """The compacted layers (pruned rows and columns removed; with ``fragment_rows``,
        polarized, only whole fragment rows) with their real inputs."""
        _, model, _ = self.data(name)
        f = analog(model.apply, preset("forms"), mode="float", signed_inputs=False)
        inputs = f.layer_inputs(params, np.asarray(x))
        out = []
        for layer, w in self.weights(name, params).items():
            compacted, kept_rows, _ = compact(w, fragment_rows)
            v = np.asarray(inputs[layer])
            out.append(cost.LayerWorkload(layer, compacted, v[:, kept_rows],
                                          v.shape[0] // len(x)))
        return out

    def stage_cost(self, name: str, m: int) -> dict:
        x, _ = self.subset(name, 16)
        forms_m = cost.cost_preset("forms", m)
        isaac = cost.cost_preset("isaac")
        isaac_8b = isaac.replace(name="ISAAC, 8-bit weights",
                                 config=preset("isaac").replace(weights=WeightConfig(bits=8)))
        loads = {forms_m.name: self.workloads(name, self.flowed(name, m).params, x, m),
                 isaac_8b.name: self.workloads(name, self.pruned(name).params, x)}
        chip_area = isaac.tiles_per_chip * isaac.tile_area_mm2
        results = cost.compare_designs(loads, {forms_m.name: forms_m, isaac_8b.name: isaac_8b},
                                       chip_area_mm2=chip_area)
        f, i = results[forms_m.name], results[isaac_8b.name]
        return {
            "designs": {k: {"gops_per_s_mm2": r.gops_per_s_mm2, "gops_per_w": r.gops_per_w,
                            "adc_conversions_per_image": r.adc_conversions,
                            "adc_conversions_without_skip": r.adc_conversions_without_skip,
                            "crossbars": r.crossbars,
                            "layers": {layer.name: layer.adc_conversions for layer in r.layers}}
                        for k, r in results.items()},
            "forms_over_isaac_gops_per_s_mm2": f.gops_per_s_mm2 / i.gops_per_s_mm2,
            "forms_over_isaac_gops_per_w": f.gops_per_w / i.gops_per_w,
            "paper_gops_per_s_mm2": PAPER["gops_per_s_mm2"], "paper_gops_per_w": PAPER["gops_per_w"],
            "images_for_activations": len(x),
        }


# --------------------------------------------------------------------------- report


def _row(rows, name, stage, m=None):
    for r in rows:
        if r["dataset"] == name and r["stage"] == stage and (m is None or r["m"] == m):
            return r
    return None


def _ci(value, ci) -> str:
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def report(rows, out_dir, quick) -> str:
    lines = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        base, pruned = _row(rows, name, "baseline"), _row(rows, name, "pruned")
        lines += [f"## {name}", ""]
        if base:
            lines += [f"Float baseline: {100 * base['float_acc']:.2f} % "
                      f"({base['test_images']} test images).", ""]
        if pruned:
            lines += [f"Pruning stage: {pruned['prune_ratio']:.2f}x fewer weights "
                      f"({pruned['nonzero']} of {pruned['weights']}), float accuracy "
                      f"{100 * pruned['float_acc']:.2f} %.", "",
                      "| layer | rows kept | columns kept | non-zero / weights | crossbars "
                      "(FORMS m=8) | dense crossbars (FORMS / differential) |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {r['layer']} | {r['rows_kept']} / {r['rows']} | {r['columns_kept']} / "
                      f"{r['columns']} | {r['nonzero']} / {r['weights']} | {r['crossbars']} | "
                      f"{r['crossbars_dense']} / {r['crossbars_dense_differential']} |"
                      for r in pruned["layers"]]
            lines.append("")
        lines += ["Table I, this run beside the paper (LeNet-5 MNIST; drop = float baseline "
                  "minus the full flow read through the emulator, no noise, paired 95 % "
                  "interval over the test images):", "",
                  "| m | emulated acc | drop (points) | paper drop | prune ratio (paper 23.18) | "
                  "reduction, paper's definition (paper 185.44) | crossbars counted: "
                  "reduction vs dense 8-bit differential | polarized |",
                  "|---|---|---|---|---|---|---|---|"]
        for m in P.FRAGMENTS:
            r = _row(rows, name, "flow", m)
            if r:
                lines.append(
                    f"| {m} | {100 * r['emulated_acc']:.2f} % | "
                    f"{_ci(r['drop_points'], r['drop_ci_points'])} | {r['paper_drop_points']} | "
                    f"{r['prune_ratio']:.2f}x | {r['paper_reduction']:.1f}x | "
                    f"{r['counted_reduction_vs_dense_differential_8bit']:.1f}x "
                    f"({r['crossbars']} vs {r['crossbars_dense_differential']}) | "
                    f"{r['polarized']} |")
        r8 = _row(rows, name, "flow", 8)
        if r8:
            met_ratio = r8["prune_ratio"] >= TARGETS["prune_ratio"]
            met_drop = r8["drop_points"] <= TARGETS["drop_points_m8"]
            lines += ["", f"Targets at m = 8: pruning >= {TARGETS['prune_ratio']:.0f}x: "
                      f"{'met' if met_ratio else 'not met'} ({r8['prune_ratio']:.2f}x); drop "
                      f"<= {TARGETS['drop_points_m8']} points: {'met' if met_drop else 'not met'}"
                      f" ({r8['drop_points']:.2f})."]
        rob = _row(rows, name, "robustness")
        if rob:
            lines += ["", f"Table VI row: log-normal variation sigma {rob['sigma']}, "
                      f"{rob['keys']} keys x {rob['images']} images, accuracy loss against each "
                      f"model's own noise-free read (95 % interval over keys and images):", "",
                      "| model | mapping | clean acc | loss (points) | paper loss (ResNet-18 "
                      "CIFAR-10) |", "|---|---|---|---|---|"]
            for label in MODELS:
                e = rob[label]
                lines.append(f"| {label} | {e['mapping']} | {100 * e['clean_acc']:.2f} % | "
                             f"{_ci(e['loss_points'], e['loss_ci_points'])} | "
                             f"{e['paper_loss_points'] if e['paper_loss_points'] is not None else '-'} |")
        c = _row(rows, name, "cost")
        if c:
            lines += ["", f"Table V: cost model on the pruned models (compacted), activations "
                      f"from {c['images_for_activations']} test images:", "",
                      "| design | GOPs/(s mm^2) | GOPs/W | ADC conversions per image "
                      "(zero-skip) | without skip | crossbars |", "|---|---|---|---|---|---|"]
            for k, d in c["designs"].items():
                lines.append(f"| {k} | {d['gops_per_s_mm2']:.1f} | {d['gops_per_w']:.1f} | "
                             f"{d['adc_conversions_per_image']:.0f} | "
                             f"{d['adc_conversions_without_skip']:.0f} | {d['crossbars']} |")
            lines += ["", f"FORMS m = {COST_M} over pruned 8-bit ISAAC: "
                      f"{c['forms_over_isaac_gops_per_s_mm2']:.2f}x GOPs/(s mm^2) (paper "
                      f"{c['paper_gops_per_s_mm2']}x), {c['forms_over_isaac_gops_per_w']:.2f}x "
                      f"GOPs/W (paper {c['paper_gops_per_w']}x)."]
        seconds = sum(r.get("seconds") or 0 for r in rows if r["dataset"] == name)
        lines += ["", f"Stages' wall time: {seconds:.0f} s in total on a {os.cpu_count()}-core "
                  f"CPU ({platform.machine()}), every stage's own in results.csv (with CPU "
                  f"time and load average).", ""]
    lines += NOTES
    return "\n".join(lines)


NOTES = [
    "Reading this table:",
    "",
    "* Prune ratio = weights / non-zero weights after the pruning stage; the paper's "
    "reduction multiplies it by 32/8 (bits) and 2 (no negative crossbars). The counted "
    "reduction is what the mapping occupies: crossbar tiles of the full-flow model (FORMS, "
    "128x128, a polarized layer drops only whole fragment rows) against the dense model on "
    "8-bit differential (PRIME-style pairs) crossbars of the same size. Small layers fill "
    "whole tiles, so the counted reduction is far below the product of the ratios.",
    "* Cost: the cost model's presets (`cost_preset`: its ADCs, tiles and components; ISAAC "
    "with 8-bit weights, on the pruned model compacted), activations of 16 MNIST test "
    "images, a chip of ISAAC's area for both. The paper's 1.50x / 1.93x are for its own, "
    "larger networks, whose layers fill many tiles; LeNet-5's pruned layers fill a few "
    "tiles partly, so the ratios here are not the same measurement.",
    "* CIFAR-10 (ResNet-20 on the JPEG q75 copy, `reram_emu.cifar10` and "
    "`reram_emu.cifar_models`) is not in this run: one ResNet-20 training step at batch 128 "
    "takes about 1 s on this 2-core CPU (about 6.5 min per epoch), so a >= 90 % float "
    "baseline (100+ epochs) needs a GPU session.",
]
