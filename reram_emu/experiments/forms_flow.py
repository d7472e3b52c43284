"""The ``forms_flow`` experiment: FORMS's full flow, prune -> polarize -> quantize, read through
the emulator, with the paper's crossbar accounting, robustness row and cost comparison.

FORMS (Yuan et al., ISCA 2021) Table I: LeNet-5 on MNIST pruned 23.18x, crossbar reduction
185.44x (pruning x 4 for 32 -> 8 bits x 2 for polarization), drops -0.02 / -0.01 / 0.14 % at
m = 4 / 8 / 16. Table VI: log-normal variation sigma 0.1. Table V: FORMS (m = 16) 1.50x
GOPs/(s mm^2) and 1.93x GOPs/W over pruned and quantized ISAAC. Stages (points):

* ``baseline``: the float LeNet-5 (Caffe's, :func:`reram_emu.models.lenet5_caffe`; the
  ``polarize`` study's training settings).
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

Networks: without ``--model``, MNIST on Caffe's LeNet-5, then CIFAR-10 on ResNet-20 (ResNet-18
when JAX runs on an accelerator); ``--model`` names one (:data:`MODEL_OPTIONS`). CIFAR-10 comes
from ``$RERAM_EMU_DATA`` (:func:`reram_emu.cifar10.load_cifar10`: the canonical pickles or the
JPEG q75 copy, whose results are labelled so); the batch-norm network is trained in float with
augmentation, folded (:mod:`reram_emu.cifar_models`), and the folded weights go through the same
stages (:func:`cifar_settings`). Every training stage checkpoints under the work folder;
``--resume`` skips finished points and unfinished stages resume at their last epoch.
``--quick`` runs the digits MLP in about a minute; ``--quick --model resnet20`` the short
CIFAR-10 setting.

    python -m reram_emu.experiments run forms_flow --model lenet5 --out experiments/forms_flow
    RERAM_EMU_DATA=../shared/data python -m reram_emu.experiments run forms_flow --quick \
        --model resnet20 --out experiments/forms_flow_resnet20_quick
"""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from .. import admm as admm_lib
from .. import cost
from .. import training as T
from ..config import WeightConfig, preset
from ..nn import analog
from ..pruning import PruneConfig, compact, crossbar_usage, paper_crossbar_reduction
from . import polarize as P
from . import trained
from .runner import UserError

NAME = "forms_flow"
DESCRIPTION = ("FORMS's full flow prune -> polarize -> quantize at m = 4, 8, 16 through the "
               "emulator: drops, crossbar reduction, variation robustness, cost vs ISAAC")

PAPER = {"variation_loss_points": {"original": 0.35, "polarized-only": 0.37, "pruned": 1.82},
         "gops_per_s_mm2": 1.50, "gops_per_w": 1.93}
#: FORMS's Table I rows (float accuracy %, prune ratio, crossbar reduction, drops in points at
#: m = 4 / 8 / 16) by this study's network; ResNet-20 has none and is shown beside ResNet-18's.
TABLE_I = {
    "lenet5_caffe": {"network": "LeNet-5, MNIST", "float_acc": None, "prune_ratio": 23.18,
                     "reduction": 185.44, "drop_points": {4: -0.02, 8: -0.01, 16: 0.14}},
    "resnet18": {"network": "ResNet-18, CIFAR-10", "float_acc": 94.14, "prune_ratio": 50.85,
                 "reduction": 406.8, "drop_points": {4: 0.35, 8: 0.47, 16: 0.92}},
    "vgg16": {"network": "VGG-16, CIFAR-10", "float_acc": 93.70, "prune_ratio": 41.2,
              "reduction": 329.6, "drop_points": {4: 0.61, 8: 0.64, 16: 0.77}},
}
TABLE_I["resnet20"] = TABLE_I["resnet18"]


def table_i(model: str) -> dict:
    """The paper's Table I row beside this study's ``model`` (MNIST's LeNet-5 row for the
    MNIST and digits networks)."""
    return TABLE_I.get(model, TABLE_I["lenet5_caffe"])


TARGETS = {"prune_ratio": 20.0, "drop_points_m8": 0.2}  # MNIST's
CIFAR_TARGET_FLOAT = 0.90  # ResNet-20's float baseline (fraction)
COST_M = 16
ROBUST_M = 8
MODELS = ("original", "polarized-only", "pruned", "full")

#: MNIST on Caffe's LeNet-5 (:func:`reram_emu.models.lenet5_caffe`, 430,500 weights), the network
#: of the ADMM pruning papers FORMS builds on and the one its 23.18x row prunes; LeCun's smaller
#: LeNet-5 (61,470 weights) pruned 22.5x lost 3 points at m = 8 on this study's 2-core CPU
#: (most of it in polarizing so few weights), so it is not the default. Pruning ~25x: conv1 (500
#: weights) kept whole; conv2 keeps half its rows (filter shapes), then half its fragments of 8
#: rows; fc1 (800 x 500, 93 % of the weights) a quarter of its rows and columns, then 1/20 of
#: its fragments; fc2 a quarter of its rows. Fragment ratios count all fragments of the layer
#: (:class:`reram_emu.pruning.PruneConfig`). Measured: harsher ratios (conv2 fragments 4, fc1
#: fragments 40) pruned 43.8x but lost 0.48 points at m = 8. The pruning stage: 15 ADMM epochs
#: of 470 steps (lr 5e-4, rho 1e-3 growing 1.25x at each of 2 Z/U updates per epoch), then 40
#: of masked fine-tuning (lr 1e-3); the polarization stage 5 ADMM + 40 fine-tuning epochs.
#: Every training phase, the float baseline's included, sees randomly shifted digits (up to 2
#: pixels, :func:`reram_emu.experiments.polarize.shift_augment`). Measured at m = 8 on a 2-core
#: CPU (drop against each run's own float baseline, all 10,000 test images): without
#: augmentation, polarization 3 + 10, 26.8x: 0.34 points (the fine-tuning reached 100 % training
#: accuracy: it overfits); augmented, 3 + 10: 0.26; 5 + 25: 0.20; 5 + 40: 0.15.
MNIST_PRUNE = PruneConfig(layers={
    "conv2/w": {"rows": 2, "fragments": 2},
    "fc1/w": {"rows": 4, "columns": 4, "fragments": 20},
    "fc2/w": {"rows": 4}})
MNIST = dataclasses.replace(P.MNIST, model="lenet5_caffe", variation_m=(ROBUST_M,),
                            augment=True, augment_flow=True,
                            admm=dataclasses.replace(P.MNIST.admm, epochs=5,
                                                     finetune_epochs=40))
MNIST_PRUNE_ADMM = dataclasses.replace(P.MNIST.admm, epochs=15, finetune_epochs=40,
                                       rho_growth=1.25, updates_per_epoch=2,
                                       finetune_learning_rate=1e-3, weight_bits=None,
                                       prune=MNIST_PRUNE)
#: The digits MLP (64-128-64-10), quick: fc1 and fc2 keep half their rows and columns.
DIGITS = dataclasses.replace(P.DIGITS_QUICK, variation_m=(ROBUST_M,), variation_keys=10)
DIGITS_PRUNE_ADMM = dataclasses.replace(
    trained.ADMM_QUICK, weight_bits=None,
    prune=PruneConfig(rows=2, columns=2, layers={"fc3/w": {"columns": 1}}))


# --------------------------------------------------------------------------- CIFAR-10

#: The CIFAR-10 networks ``--model`` may name (:mod:`reram_emu.cifar_models`).
CIFAR_NETWORKS = ("resnet20", "resnet18", "vgg16")
MODEL_OPTIONS = {
    "lenet5": "MNIST, Caffe's LeNet-5, only (the committed run)",
    "resnet20": "CIFAR-10 ResNet-20 only (the CPU default's CIFAR-10 network)",
    "resnet18": "CIFAR-10 ResNet-18 only (the GPU default's), the paper's Table I network",
    "vgg16": "CIFAR-10 VGG-16 only, the paper's other Table I CIFAR-10 network",
}


@dataclass(frozen=True)
class CifarSettings(P.Settings):
    """A CIFAR-10 network's settings: :class:`reram_emu.experiments.polarize.Settings` with
    a network of :data:`CIFAR_NETWORKS` and the float training of the batch-norm model.

    ``baseline`` is read by :func:`reram_emu.cifar_models.train_batch_norm` (SGD: its
    ``learning_rate`` is SGD's, ``max_steps_per_epoch`` its ``steps_per_epoch``), with
    ``momentum``, ``weight_decay`` and, with ``augment``, :func:`reram_emu.cifar10.augment`
    (random crop with 4-pixel padding, horizontal flip). The batch norm is then folded and the
    flow (pruning, polarization, fine-tuning: Adam, ``polarize``) trains the folded weights,
    with the same augmentation when ``augment_flow``. ``data_dir``, ``source`` and ``strict``
    go to :func:`reram_emu.cifar10.load_cifar10` (None: ``$RERAM_EMU_DATA``).
    """

    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    data_dir: str | None = None
    source: str = "auto"
    strict: bool = True

    def _check_model(self):
        if self.model not in CIFAR_NETWORKS:
            raise ValueError(f"model must be one of {', '.join(CIFAR_NETWORKS)}, got "
                             f"{self.model!r}")


#: Crossbar-aware pruning of the CIFAR-10 networks: the stem (27 rows) and the classifier
#: kept whole; every other layer keeps half its filter shapes (rows) and, for ResNet-18 and
#: VGG-16 (the paper prunes them 50.85x and 41.2x), a quarter of its filters and a quarter of
#: its fragments too. ResNet-20 (270k weights) is already small: rows only, about 2x.
CIFAR_PRUNE = {
    "resnet20": PruneConfig(rows=2, layers={"stem/*": {"rows": 1}, "fc/*": {"rows": 1}}),
    "resnet18": PruneConfig(rows=2, columns=4, fragments=4,
                            layers={"stem/*": {"rows": 1, "columns": 1, "fragments": 1},
                                    "fc/*": {"rows": 1, "columns": 1, "fragments": 1}}),
    "vgg16": PruneConfig(rows=2, columns=4, fragments=4,
                         layers={"conv1/*": {"rows": 1, "columns": 1, "fragments": 1},
                                 "fc/*": {"rows": 1, "columns": 1, "fragments": 1}}),
}


def cifar_settings(network: str, short: bool = False) -> tuple[CifarSettings,
                                                                admm_lib.ADMMConfig]:
    """``(settings, pruning ADMMConfig)`` of a CIFAR-10 network.

    The full setting (a GPU's): 160 float epochs (SGD, lr 0.1, batch 128, cosine), pruning by
    30 ADMM + 30 fine-tuning epochs, polarization by 10 + 20 (Adam, lr 1e-4), all of them on
    augmented batches (random crop and flip; the short setting augments the float epochs
    only, as its committed run did), every test
    image read, the robustness row on 1000 images x 20 keys. Not yet run: no session so far
    had a GPU. ``short`` (``--quick``): what a 2-core CPU runs in about an hour (ResNet-20: 3
    float epochs, each ADMM and fine-tuning phase one epoch of 100 steps, 500 test images,
    robustness on 50 images x 20 keys: an emulated ResNet-20 read took about 0.25 s per image
    and key there); its accuracies are far below the paper's and say only that the flow runs end to
    end on the real data.
    """
    if network not in CIFAR_NETWORKS:
        raise ValueError(f"network must be one of {', '.join(CIFAR_NETWORKS)}, got {network!r}")
    steps = 100 if short else None
    polarize = T.TrainConfig(batch_size=128, learning_rate=1e-4, max_steps_per_epoch=steps)
    admm = admm_lib.ADMMConfig(rho=1e-3, rho_growth=1.25, updates_per_epoch=2,
                               epochs=1 if short else 10, finetune_epochs=1 if short else 20,
                               finetune_learning_rate=1e-4)
    settings = CifarSettings(
        model=network, augment_flow=not short,
        baseline=T.TrainConfig(epochs=3 if short else 160, batch_size=128, learning_rate=0.1),
        polarize=polarize, admm=admm, variation_m=(ROBUST_M,),
        eval_images=500 if short else None, forced_images=100 if short else 1000,
        variation_images=50 if short else 1000, combined_images=100 if short else 1000,
        variation_keys=20, batch_size=100 if short else 500,
        calibration_images=200 if short else 500, monitor_images=500 if short else 2000)
    prune = dataclasses.replace(admm, epochs=1 if short else 30,
                                finetune_epochs=1 if short else 30, weight_bits=None,
                                prune=CIFAR_PRUNE[network])
    return settings, prune


def _default_cifar_network() -> str:
    """ResNet-20 on a CPU, ResNet-18 when JAX runs on an accelerator."""
    return "resnet20" if jax.default_backend() == "cpu" else "resnet18"


def _settings(quick: bool, model: str | None) -> dict:
    """data set -> (Settings, pruning ADMMConfig) of one run."""
    if model is None:
        out = dict(SETTINGS[bool(quick)])
        if not quick:
            out["cifar10"] = cifar_settings(_default_cifar_network())
        return out
    if model == "lenet5":
        if quick:
            raise UserError("--model lenet5 has no --quick setting (the quick run is the "
                            "digits MLP: drop --model)")
        return {"mnist": SETTINGS[False]["mnist"]}
    if model not in CIFAR_NETWORKS:
        raise UserError(f"unknown --model {model!r}; known: {', '.join(MODEL_OPTIONS)}")
    return {"cifar10": cifar_settings(model, short=bool(quick))}


#: ``quick`` -> data set -> (Settings, pruning ADMMConfig) of the runs without ``--model``;
#: the full one adds CIFAR-10 (:func:`_settings`). Tests replace entries.
SETTINGS = {False: {"mnist": (MNIST, MNIST_PRUNE_ADMM)},
            True: {"digits": (DIGITS, DIGITS_PRUNE_ADMM)}}
STAGES = ("baseline", "pruned", "flow", "robustness", "cost")


def points(quick: bool, model: str | None = None) -> list[dict]:
    out = []
    for name in _settings(quick, model):
        out += [{"dataset": name, "stage": "baseline", "m": None},
                {"dataset": name, "stage": "pruned", "m": None}]
        out += [{"dataset": name, "stage": "flow", "m": m} for m in P.FRAGMENTS]
        out += [{"dataset": name, "stage": "robustness", "m": ROBUST_M},
                {"dataset": name, "stage": "cost", "m": COST_M}]
    return out


def group(point) -> tuple:
    return (point["dataset"], point["stage"], point["m"])


def configuration(quick: bool, model: str | None = None) -> dict:
    out = {}
    for name, (s, prune) in _settings(quick, model).items():
        out[name] = {"settings": P._settings_record(s), "prune_admm": repr(prune)}
    return {"datasets": out, "read": repr(P.forms(8)), "differential": repr(P.differential(8)),
            "variation_sigma": P.VARIATION_SIGMA, "paper": PAPER, "table_i": TABLE_I,
            "targets": TARGETS, "machine": P.configuration(quick)["machine"]}


def prepare(quick: bool, seed: int, work_dir, model: str | None = None) -> "Context":
    settings = _settings(quick, model)
    return Context({k: s for k, (s, _) in settings.items()},
                   {k: a for k, (_, a) in settings.items()}, seed, Path(work_dir), quick)


def evaluate(context: "Context", batch: list[dict], seed: int) -> list[dict]:
    return P.evaluate(context, batch, seed, STAGES)


class CifarNetwork(NamedTuple):
    """A CIFAR-10 network: ``apply(params, x)`` of the folded model (what the crossbars hold
    and the flow trains) and the Flax model with batch norm (its float training)."""

    apply: Callable
    batch_norm: Any


class Context(P.Context):
    """The ``polarize`` study's data, baseline, polarized-only models and emulated reads, plus
    the pruned model and the full flow at every m."""

    def __init__(self, settings, prune_admm, seed, work_dir, quick, log=None):
        super().__init__(settings, seed, work_dir, quick, log)
        self.prune_admm = prune_admm

    # ---- CIFAR-10: its loader, the batch-norm model trained then folded

    def _cifar(self, name: str) -> bool:
        return isinstance(self.settings[name], CifarSettings)

    def folder(self, name: str) -> Path:
        """A CIFAR-10 network's work folder also names the network."""
        return super().folder(f"{name}_{self.settings[name].model}" if self._cifar(name)
                              else name)

    def data(self, name: str):
        if not self._cifar(name):
            return super().data(name)

        def build():
            from .. import cifar_models
            from ..cifar10 import load_cifar10
            from ..datasets import DatasetNotFoundError
            s = self.settings[name]
            try:
                data = load_cifar10(s.data_dir, source=s.source, strict=s.strict,
                                    seed=self.seed)
            except DatasetNotFoundError as error:
                raise UserError(f"{error} (for this study: set $RERAM_EMU_DATA to that "
                                "folder)") from None
            bn = cifar_models.cifar_model(s.model)
            model = CifarNetwork(cifar_models.folded_apply(bn.clone(batch_norm=False)), bn)
            order = np.random.default_rng(self.seed).permutation(len(data.x_test))
            return data, model, order
        return self._memo(("data", name), build)

    def baseline(self, name: str) -> dict:
        if not self._cifar(name):
            return super().baseline(name)

        def build():
            from .. import cifar_models
            data, model, _ = self.data(name)
            s, b = self.settings[name], self.settings[name].baseline
            variables = model.batch_norm.init(jax.random.key(self.seed), data.x_train[:1])
            variables, history = cifar_models.train_batch_norm(
                model.batch_norm, variables, data.x_train, data.y_train, epochs=b.epochs,
                batch_size=b.batch_size, learning_rate=b.learning_rate, momentum=s.momentum,
                weight_decay=s.weight_decay, seed=self.seed,
                augment_fn=self.augmentation(name),
                checkpoint=str(self.folder(name) / "baseline.npz"),
                eval_data=tuple(self.monitor(name)), steps_per_epoch=b.max_steps_per_epoch,
                log=self.log)
            self._cache[("baseline_history", name)] = history
            return cifar_models.fold_batch_norm(model.batch_norm, variables)[1]
        return self._memo(("baseline", name), build)

    def augmentation(self, name: str, flow: bool = False):
        """CIFAR-10 trains with random crop and flip (:func:`reram_emu.cifar10.augment`)."""
        chosen = super().augmentation(name, flow)
        if chosen is None or not self._cifar(name):
            return chosen
        from ..cifar10 import augment
        return augment

    def stage_baseline(self, name: str, m=None) -> dict:
        row = super().stage_baseline(name, m)
        row["data"] = getattr(self.data(name)[0], "name", name)
        if self._cifar(name):
            b = self.settings[name].baseline
            row.update(target_float_acc=CIFAR_TARGET_FLOAT,
                       met=bool(row["float_acc"] >= CIFAR_TARGET_FLOAT), epochs=b.epochs,
                       steps_per_epoch=b.max_steps_per_epoch,
                       monitor_acc_per_epoch=[round(h["test_acc"], 4) for h in
                                              self._cache.get(("baseline_history", name), [])])
        return row

    def pruned(self, name: str) -> T.PolarizeResult:
        def build():
            data, model, _ = self.data(name)
            return T.polarize(model.apply, self.baseline(name), data, self.prune_admm[name],
                              self.train_config(self.settings[name].polarize),
                              checkpoint_dir=str(self.folder(name) / "prune"), log=self.log,
                              eval_data=self.monitor(name),
                              augment=self.augmentation(name, flow=True))
        return self._memo(("pruned", name), build)

    def flowed(self, name: str, m: int) -> T.PolarizeResult:
        def build():
            data, model, _ = self.data(name)
            pruned = self.pruned(name)
            return T.polarize(model.apply, pruned.params, data, self.admm_config(name, m),
                              self.train_config(self.settings[name].polarize),
                              checkpoint_dir=str(self.folder(name) / f"flow_m{m}"),
                              log=self.log, eval_data=self.monitor(name),
                              check_config=P.forms(m), masks=pruned.masks,
                              augment=self.augmentation(name, flow=True))
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
            "paper_drop_points": table_i(s.model)["drop_points"][m],
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
        paper = table_i(base["model"] if base else "lenet5_caffe")
        label = base.get("data", name) if base else name
        lines += [f"## {name}" + (f": {base['model']} on {label}" if base else ""), ""]
        if base:
            lines += [f"Float baseline: {100 * base['float_acc']:.2f} % "
                      f"({base['test_images']} test images)"
                      + (f"; target >= {100 * base['target_float_acc']:.0f} %: "
                         f"{'met' if base['met'] else 'not met'}"
                         if base.get("target_float_acc") is not None else "")
                      + (f"; paper {paper['float_acc']} % ({paper['network']})"
                         if paper["float_acc"] is not None else "") + "."
                      + (" Trained by an earlier run of this folder and loaded from its "
                         "checkpoint (its training time is not in this run's wall time)."
                         if base.get("loaded_checkpoint") else ""), ""]
        if base and quick and name == "cifar10":
            lines += ["The short setting (`--quick`, `forms_flow.cifar_settings`): 3 float epochs, "
                      "each ADMM and fine-tuning phase one epoch of 100 steps, what a 2-core CPU "
                      "runs in under an hour. Its accuracies show the flow running end to end on "
                      "the real data and the emulated read following the float model (compare "
                      "the flow rows' float_acc in results.csv); they are no measurement of "
                      "what the flow costs a trained network: that needs the full setting, on a "
                      "GPU.", ""]
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
        lines += [f"Table I, this run beside the paper ({paper['network']}; drop = float "
                  "baseline minus the full flow read through the emulator, no noise, paired "
                  "95 % interval over the test images):", "",
                  f"| m | emulated acc | drop (points) | paper drop | prune ratio (paper "
                  f"{paper['prune_ratio']}) | reduction, paper's definition (paper "
                  f"{paper['reduction']}) | crossbars counted: reduction vs dense 8-bit "
                  "differential | polarized |",
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
        if r8 and base and pruned and r8["eval_images"] == base["test_images"]:
            lines += ["", "Where the m = 8 drop arises (float accuracies on the same test "
                      f"images): pruning {100 * (base['float_acc'] - pruned['float_acc']):.2f}, "
                      f"polarization {100 * (pruned['float_acc'] - r8['float_acc']):.2f}, "
                      "8-bit quantization and the emulated read "
                      f"{100 * (r8['float_acc'] - r8['emulated_acc']):.2f} points."]
        if r8 and name != "cifar10":
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
                  f"{platform.machine()} machine (JAX on {jax.default_backend()}), every "
                  "stage's own in results.csv (with CPU time and load average).", ""]
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
    "* Training (MNIST): every phase, the float baseline's included, sees randomly shifted "
    "digits (up to 2 pixels, no flip: `polarize.shift_augment`); pruning runs 15 ADMM + 40 "
    "masked fine-tuning epochs, polarization 5 + 40 (epochs of 470 steps of 64 images). "
    "Without augmentation (and polarization 3 + 10) the fine-tuning reached 100 % training "
    "accuracy and the m = 8 drop was 0.34 points (the run committed before this one).",
    "* Cost: the cost model's presets (`cost_preset`: its ADCs, tiles and components; ISAAC "
    "with 8-bit weights, on the pruned model compacted), activations of 16 test images, a "
    "chip of ISAAC's area for both. The paper's 1.50x / 1.93x are for its own, larger "
    "networks, whose layers fill many tiles; LeNet-5's pruned layers fill a few tiles "
    "partly, so the ratios here are not the same measurement.",
    "* CIFAR-10: `--model resnet20`, `resnet18` or `vgg16` runs one CIFAR-10 network "
    "(`reram_emu.cifar10` from `$RERAM_EMU_DATA`, `reram_emu.cifar_models`, batch norm "
    "folded); a run without `--model` does MNIST then ResNet-20 (ResNet-18 on a GPU). One "
    "float ResNet-20 epoch (390 steps of 128) took about 4 min on a 2-core CPU (measured in "
    "the committed short run), so its full setting (160 float epochs, then 60 epochs of "
    "pruning and 30 of polarization per m) needs a GPU session; `--quick --model resnet20` is "
    "the short setting a CPU runs in under an hour.",
]
