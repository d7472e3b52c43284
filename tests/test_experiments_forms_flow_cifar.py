"""The ``forms_flow`` experiment's CIFAR-10 path (``--model resnet20``) on tiny fixture files in
the canonical ``cifar-10-batches-py`` format: the loader, the batch-norm training and folding,
pruning and the flow at m = 8 read through the emulator, and the errors a user meets."""

import dataclasses
import pickle

import numpy as np
import pytest

pytest.importorskip("flax")

from reram_emu import cifar10 as C  # noqa: E402
from reram_emu import training as T  # noqa: E402
from reram_emu.experiments import forms_flow as F  # noqa: E402
from reram_emu.experiments.runner import UserError, run_experiment  # noqa: E402


def _write_fixture(folder, n=8):
    """``n`` random images per batch (labels cycling through the classes), 5 train + test."""
    folder.mkdir(parents=True)
    for i, name in enumerate(C.TRAIN_BATCHES + (C.TEST_BATCH,)):
        rng = np.random.default_rng(i)
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        (folder / name).write_bytes(pickle.dumps(
            {b"batch_label": b"fixture", b"labels": labels, b"data": rows,
             b"filenames": [b"x.png"] * n}, protocol=2))


REAL_SETTINGS = F.cifar_settings


def _tiny(network, short=False):
    """The real settings, shrunk to the fixture: one step per phase, 8-image reads."""
    settings, prune = REAL_SETTINGS(network, short)
    one = dict(batch_size=8, max_steps_per_epoch=1)
    settings = dataclasses.replace(
        settings, strict=False, baseline=dataclasses.replace(settings.baseline, epochs=1, **one),
        polarize=dataclasses.replace(settings.polarize, **one),
        admm=dataclasses.replace(settings.admm, epochs=1, finetune_epochs=1),
        eval_images=8, forced_images=8, variation_images=8, combined_images=8,
        variation_keys=2, batch_size=8, calibration_images=8, monitor_images=8)
    return settings, dataclasses.replace(prune, epochs=1, finetune_epochs=1)


def test_cifar_settings_and_options():
    full, prune = F.cifar_settings("resnet20")
    assert full.baseline.epochs == 160 and full.eval_images is None
    assert full.variation_keys >= 20 and prune.prune is F.CIFAR_PRUNE["resnet20"]
    short, _ = F.cifar_settings("resnet20", short=True)
    assert short.polarize.max_steps_per_epoch == 100 and short.variation_keys >= 20
    # the stem and the classifier are kept whole; every other layer keeps half its rows
    assert prune.prune.ratios("stem/conv/kernel")["rows"] == 1
    assert prune.prune.ratios("stage2_block1/conv1/conv/kernel")["rows"] == 2
    assert set(F.MODEL_OPTIONS) == {"lenet5", *F.CIFAR_NETWORKS}
    assert {p["dataset"] for p in F.points(False, "resnet20")} == {"cifar10"}
    assert {p["dataset"] for p in F.points(False, "lenet5")} == {"mnist"}
    assert {p["dataset"] for p in F.points(False)} == {"mnist", "cifar10"}
    with pytest.raises(ValueError, match="resnet20"):
        F.CifarSettings(model="lenet5", baseline=full.baseline, polarize=full.polarize,
                        admm=full.admm)
    with pytest.raises(ValueError, match="network must be one of"):
        F.cifar_settings("resnet50")
    with pytest.raises(UserError, match="no --quick"):
        F.points(True, "lenet5")


def test_resnet20_flow_on_fixture_files(tmp_path, monkeypatch):
    _write_fixture(tmp_path / "data" / C.CANONICAL_FOLDER)
    monkeypatch.setenv(C.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setattr(F, "cifar_settings", lambda network, short=False: _tiny(network, short))
    context = F.prepare(True, 0, tmp_path / "work", "resnet20")
    batch = [{"dataset": "cifar10", "stage": s, "m": m}
             for s, m in (("baseline", None), ("pruned", None), ("flow", 8))]
    base, pruned, flow = F.evaluate(context, batch, 0)
    assert base["model"] == "resnet20" and base["data"] == "cifar10"
    assert (base["test_images"], base["train_images"]) == (8, 40)
    assert base["target_float_acc"] == 0.9 and base["epochs"] == 1
    folder = tmp_path / "work" / "cifar10_resnet20_seed0_quick"
    assert (folder / "baseline.npz").exists() and (folder / "prune" / "finetune.npz").exists()
    layers = {r["layer"]: r for r in pruned["layers"]}
    assert len(layers) == 22  # the folded ResNet-20's crossbar layers
    assert layers["stem/conv/kernel"]["rows_kept"] == 27
    assert layers["stage3_block2/conv1/conv/kernel"]["rows_kept"] == 288  # half of 576
    assert pruned["prune_ratio"] > 1.5
    assert flow["polarized"] and flow["eval_images"] == 8
    assert flow["nonzero"] <= pruned["nonzero"]  # polarization never revives a pruned weight
    assert flow["paper_drop_points"] == F.TABLE_I["resnet18"]["drop_points"][8]
    # the flowed weights keep every zero of the pruned ones
    view = context.weights("cifar10", context.pruned("cifar10").params)
    after = context.weights("cifar10", context.flowed("cifar10", 8).params)
    for name, w in view.items():
        assert np.all(after[name][w == 0] == 0), name
    assert isinstance(context.baseline("cifar10"), dict)
    assert T.accuracy(context.data("cifar10")[1].apply, context.baseline("cifar10"),
                      context.data("cifar10")[0].x_test, context.data("cifar10")[0].y_test) \
        == base["float_acc"]


def test_a_missing_cifar_folder_and_bad_options_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(C.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="RERAM_EMU_DATA"):
        run_experiment(F, tmp_path / "out", quick=True, progress=False, model="resnet20")
    with pytest.raises(UserError, match="unknown --model 'resnet50'"):
        run_experiment(F, tmp_path / "out", progress=False, model="resnet50")
    from reram_emu.experiments import cost
    with pytest.raises(UserError, match="takes no --model"):
        run_experiment(cost, tmp_path / "out2", progress=False, model="resnet20")
