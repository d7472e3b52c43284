"""CIFAR-10 Flax models: shapes, parameter counts, batch-norm folding, crossbar layers,
training and resume."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")

import reram_emu as rx  # noqa: E402
from reram_emu import cifar_models as M  # noqa: E402
from reram_emu.nn import analog  # noqa: E402


def _count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def _randomize_stats(variables, seed=0):
    """Non-trivial batch statistics, BN scales and biases (folding must use them all)."""
    rng = np.random.default_rng(seed)

    def perturb(path, a):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return jnp.asarray(rng.uniform(0.5, 2.0, a.shape), a.dtype)
        if any(k in name for k in ("mean", "scale", "'bias'")):
            return a + jnp.asarray(rng.normal(0, 0.3, a.shape), a.dtype)
        return a
    return jax.tree_util.tree_map_with_path(perturb, variables)


def test_parameter_counts_and_output_shapes():
    x = jnp.zeros((1, 32, 32, 3))
    counts = {}
    for name in M.CIFAR_MODELS:
        model = M.cifar_model(name)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        counts[name] = _count(variables["params"])
        out = jax.eval_shape(model.apply, variables, x)
        assert out.shape == (1, 10)
    # ResNet-20 with 1x1 projection shortcuts: 0.27 M (He et al. report 0.27 M for option A)
    assert counts["resnet20"] == 272474
    assert 11.1e6 < counts["resnet18"] < 11.3e6
    assert 9.2e6 < counts["vgg11"] < 9.3e6 and 14.7e6 < counts["vgg16"] < 14.8e6
    with pytest.raises(ValueError, match="known: resnet20"):
        M.cifar_model("resnet50")


@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
def test_folding_batch_norm_is_exact_in_inference(name):
    model = M.cifar_model(name)
    x = jax.random.uniform(jax.random.key(1), (3, 32, 32, 3))
    variables = _randomize_stats(model.init(jax.random.key(0), x))
    folded, params = M.fold_batch_norm(model, variables)
    reference = model.apply(variables, x, train=False)
    out = M.folded_apply(folded)(params, x)
    assert "batch_stats" not in params and not folded.batch_norm
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4 * float(
        jnp.max(jnp.abs(reference))))
    with pytest.raises(ValueError, match="no batch norm"):
        M.fold_batch_norm(folded, {"params": params})
    with pytest.raises(ValueError, match="batch_stats"):
        M.fold_batch_norm(model, {"params": variables["params"]})


def test_resnet20_has_22_crossbar_layers():
    # stem + 9 blocks x 2 convolutions + 2 projection shortcuts + the dense classifier
    model = M.resnet20()
    x = jnp.zeros((1, 32, 32, 3))
    folded, params = M.fold_batch_norm(model, model.init(jax.random.key(0), x))
    f = analog(M.folded_apply(folded), rx.preset("forms"), nonnegative_inputs=True)
    layers = f.layers(params, x)
    assert len(layers) == 22
    shapes = {info.name: (info.in_features, info.out_features) for info in layers}
    assert all(info.nonnegative for info in layers)  # images, ReLU outputs, their mean
    assert shapes["stem/conv/kernel"] == (27, 16)
    assert shapes["stage3_block1/shortcut/conv/kernel"] == (32, 64)
    assert shapes["fc/kernel"] == (64, 10)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (32, 8, 8, 3)).astype(np.float32)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype(np.int32)
    model = M.ResNet((1, 1), (4, 8), num_classes=2)
    return model, model.init(jax.random.key(0), x[:2]), x, y


def test_training_reduces_the_loss_and_resumes_bit_identically(tiny, tmp_path):
    model, variables, x, y = tiny
    options = dict(epochs=4, batch_size=8, learning_rate=0.05, log=None, eval_data=(x, y))
    full, history = M.train_batch_norm(model, variables, x, y, **options)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    path = str(tmp_path / "bn.npz")
    # interrupted after 2 epochs (a checkpoint of a run asked for 4 epochs), then resumed
    import reram_emu.training as T
    real_save = T.save_checkpoint
    calls = []

    def stop_after_two(*a, **k):
        real_save(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
    T.save_checkpoint = stop_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            M.train_batch_norm(model, variables, x, y, checkpoint=path, **options)
    finally:
        T.save_checkpoint = real_save
    resumed, history2 = M.train_batch_norm(model, variables, x, y, checkpoint=path, **options)
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert [h["train_loss"] for h in history2] == [h["train_loss"] for h in history]


def test_augmentation_is_applied_with_per_step_keys(tiny):
    model, variables, x, y = tiny
    seen = []

    def augment(key, images):
        seen.append(key)
        return images[:, ::-1]
    M.train_batch_norm(model, variables, x, y, epochs=1, batch_size=8, augment_fn=augment,
                       log=None)
    assert len(seen) == 1  # traced once, then a traced key per step


def test_bad_training_input(tiny):
    model, variables, x, y = tiny
    with pytest.raises(ValueError, match=r"\(n, H, W, C\)"):
        M.train_batch_norm(model, variables, x.reshape(32, -1), y, epochs=1, log=None)
    with pytest.raises(ValueError, match="labels must be in"):
        M.train_batch_norm(model, variables, x, y + 5, epochs=1, log=None)
    with pytest.raises(ValueError, match="batch_size"):
        M.train_batch_norm(model, variables, x, y, epochs=1, batch_size=64, log=None)
    with pytest.raises(ValueError, match="epochs"):
        M.train_batch_norm(model, variables, x, y, epochs=-1, log=None)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        M.train_batch_norm(model, variables, x, y, epochs=1, batch_size=8, steps_per_epoch=5,
                           log=None)
