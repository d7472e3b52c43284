"""The package's training, calibration and experiment helpers on any JAX model: a Flax CNN is
trained, ADMM-polarized, calibrated and read exactly as the package's own models are (the
runner classes and the private model class these used to need are gone)."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reram_emu as re
from reram_emu import admm as A
from reram_emu import training as T
from reram_emu.datasets import load_dataset
from reram_emu.experiments import emulated_eval
from reram_emu.models import lenet5, mlp
from reram_emu.nn import analog, evaluate_accuracy, layer_config

flax_nn = pytest.importorskip("flax.linen")


class SmallCNN(flax_nn.Module):
    @flax_nn.compact
    def __call__(self, x):
        x = flax_nn.relu(flax_nn.Conv(8, (3, 3))(x))
        x = flax_nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        return flax_nn.Dense(10)(x)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def flax_trained(digits):
    model = SmallCNN()
    params = model.init(jax.random.key(0), digits.x_train[:2])
    config = T.TrainConfig(epochs=2, batch_size=32, learning_rate=3e-3, max_steps_per_epoch=30)
    state, history = T.train(model.apply, params, digits, config, log=None)
    return model, state.params, history


def test_a_flax_model_trains_and_polarizes_with_the_package_pipeline(digits, flax_trained):
    model, params, history = flax_trained
    assert history[-1]["test_acc"] > 0.5  # it learnt something
    admm = A.ADMMConfig(fragment_rows=8, epochs=1, finetune_epochs=1)
    config = T.TrainConfig(batch_size=32, max_steps_per_epoch=20)
    result = T.polarize(model.apply, params, digits, admm, config, log=None,
                        check_config=re.preset("forms", fragment_rows=8))
    view = T.crossbar_view(model.apply, result.params, digits.x_test[:1])
    assert view.names == ("params/Conv_0/kernel", "params/Dense_0/kernel")
    # the conv kernel's (K, N) matrix is polarized in the channel row order
    weights = view.get(result.params)
    assert weights["params/Conv_0/kernel"].shape == (9, 8)
    assert A.check_polarized(weights, 8)
    assert set(result.zeroed_fraction) == set(view.names)
    # biases are left alone by the projection and the masks
    assert result.params["params"]["Dense_0"]["bias"].shape == (10,)
    # and the strict FORMS mapping reads it without zeroing anything
    f = analog(model.apply, re.preset("forms", fragment_rows=8), nonnegative_inputs=True)
    state = f.program(result.params, digits.x_test[:4])
    assert all(int(v) == 0 for v in state.weights_zeroed.values())


def test_noise_aware_training_runs_through_the_transform(digits, flax_trained):
    model, params, _ = flax_trained
    noisy = re.preset("forms", fragment_rows=8, signed_inputs=True).replace(
        mapping=re.MappingConfig(scheme="polarized", on_violation="project"),
        device=re.DeviceConfig(variation_sigma=0.1, read_noise_sigma=0.02))
    config = T.TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=3)
    aware = T.NoiseAware(noisy)
    a, _ = T.train(model.apply, params, digits, config, noise_aware=aware, log=None)
    b, _ = T.train(model.apply, params, digits, config, noise_aware=aware, log=None)
    plain, _ = T.train(model.apply, params, digits, config, log=None)
    leaves = lambda p: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(p)])  # noqa
    np.testing.assert_array_equal(leaves(a.params), leaves(b.params))  # same seed, same bits
    assert not np.array_equal(leaves(a.params), leaves(plain.params))  # the noise mattered
    # the forward is the transform in its noise-aware mode on every crossbar layer
    f = aware.forward(model.apply)
    assert f.mode == "noise_aware"
    assert [i.name for i in f.layers(params, digits.x_test[:2])] == [
        "params/Conv_0/kernel", "params/Dense_0/kernel"]
    assert T.NoiseAware(noisy, exact_read=True).forward(model.apply).mode == "emulated"


def test_an_equinox_like_tree_with_functions_gets_a_clear_error(digits):
    params = {"w": jnp.zeros((64, 10)), "act": jax.nn.relu}
    with pytest.raises(TypeError, match="eqx.partition"):
        T.train(lambda p, x: p["act"](x.reshape(len(x), -1) @ p["w"]), params, digits,
                T.TrainConfig(epochs=1, max_steps_per_epoch=1), log=None)
    with pytest.raises(TypeError, match="apply\\(params, x\\)"):
        T.train(mlp((64, 10)), mlp((64, 10)).init(jax.random.key(0)), digits,
                T.TrainConfig(epochs=1, max_steps_per_epoch=1), log=None)


def test_layer_inputs_and_calibrated_scales_follow_the_float_forward(digits):
    net = lenet5(input_shape=(12, 12, 1), channels=(4, 8), hidden=(16, 12))
    params = net.init(jax.random.key(3))
    x = jnp.pad(jnp.asarray(digits.x_train[:20]), ((0, 0), (2, 2), (2, 2), (0, 0)))
    f = analog(net.apply, re.preset("forms"), nonnegative_inputs=True)
    inputs = f.layer_inputs(params, x)
    assert list(inputs) == ["conv1/w", "conv2/w", "fc1/w", "fc2/w", "fc3/w"]
    # conv1 sees the image's 5x5 SAME patches, one row per pixel; fc1 the flattened features
    assert inputs["conv1/w"].shape == (20 * 144, 25)
    assert inputs["fc1/w"].shape == (20, 8)
    # fc3's input is what the float model feeds it: relu(relu(. @ fc1) @ fc2)
    h = jnp.maximum(inputs["fc1/w"] @ params["fc1"]["w"] + params["fc1"]["b"], 0)
    h = jnp.maximum(h @ params["fc2"]["w"] + params["fc2"]["b"], 0)
    np.testing.assert_allclose(np.asarray(inputs["fc3/w"]), np.asarray(h), rtol=1e-6, atol=1e-6)
    scales = T.calibrate_input_scales(net.apply, params, x, re.preset("forms"))
    top = 2 ** re.preset("forms").inputs.bits - 1
    for name, value in inputs.items():
        expected = np.float32(max(float(jnp.percentile(jnp.abs(value), 99.99)), 1e-12) / top)
        assert scales[name] == pytest.approx(expected, rel=1e-6)


def test_evaluate_accuracy_with_fixed_scales_is_the_hand_wired_read(digits):
    net = mlp((64, 24, 10))
    params = net.init(jax.random.key(1))
    x, y = digits.x_test[:40].reshape(40, -1), digits.y_test[:40]
    config = re.preset("isaac").replace(device=re.DeviceConfig(variation_sigma=0.05,
                                                               read_noise_sigma=0.02))
    scales = T.calibrate_input_scales(net.apply, params, digits.x_train[:100].reshape(100, -1),
                                      config)
    f = analog(net.apply, config, nonnegative_inputs=True)
    ev = evaluate_accuracy(f, params, x, y, keys=2, seed=5, scales=scales, batch_size=40)
    keys = jax.random.split(jax.random.key(5), 2)
    for k in range(2):
        program_key, read_key = jax.random.split(keys[k])
        read_key = jax.random.fold_in(read_key, 0)  # batch 0
        h = jnp.asarray(x)
        for i, name in enumerate(net.layer_names):
            layer = re.program(re.map_weights(params[name]["w"],
                                              layer_config(config, params[name]["w"].shape[1])),
                               jax.random.fold_in(program_key, i))
            out, _ = re.read(layer, h, key=jax.random.fold_in(read_key, i),
                             scale=scales[f"{name}/w"])
            h = out + params[name]["b"]
            if i < 2:
                h = jax.nn.relu(h)
        assert ev.accuracies[k] == np.mean(np.argmax(np.asarray(h), -1) == y)
    with pytest.raises(ValueError, match="crossbar layers"):
        evaluate_accuracy(f, params, x, y, scales={"fc9/w": 1.0})
    with pytest.raises(ValueError, match="finite number > 0"):
        evaluate_accuracy(f, params, x, y, scales={"fc1/w": -1.0})


def test_the_experiments_reference_is_the_digital_mode_and_the_clean_read_matches(digits):
    net = mlp((64, 24, 10))
    params = net.init(jax.random.key(2))
    x = digits.x_test[:30].reshape(30, -1)
    config = re.preset("isaac")
    configs = emulated_eval.per_layer_configs(net.apply, params, x[:1], config)
    assert list(configs) == ["fc1/w", "fc2/w"]
    assert configs["fc2/w"].geometry.columns == 10 * config.weight_slices < 128  # trimmed
    scales = T.calibrate_input_scales(net.apply, params, x, config)
    reference = emulated_eval.reference_logits(net.apply, params, x, configs, scales)
    # hand-computed quantized ideal: integer inputs times integer weights, rescaled
    h = jnp.asarray(x)
    for i, name in enumerate(net.layer_names):
        cfg = configs[f"{name}/w"]
        step = jnp.float32(scales[f"{name}/w"])
        x_int = re.quantization.quantize_inputs(h, step, cfg.inputs).astype(jnp.float32)
        w_int, w_scale = re.quantization.quantize_weights(params[name]["w"], cfg.weights)
        h = (x_int @ w_int) * step * w_scale + params[name]["b"]
        if i == 0:
            h = jax.nn.relu(h)
    np.testing.assert_array_equal(reference, np.asarray(h))
    logits, counts = emulated_eval.clean_read(net.apply, params, x, configs, scales)
    assert set(counts) == {"fc1/w", "fc2/w"}
    assert int(counts["fc1/w"].adc_conversions) > 0
    with pytest.raises(ValueError, match="noise-free"):
        emulated_eval.clean_read(net.apply, params, x, config.replace(
            device=re.DeviceConfig(read_noise_sigma=0.1)), scales)


def test_checkpoint_provenance_of_a_model_function_is_stable_across_processes():
    code = ("from reram_emu import training as T; from reram_emu.models import lenet5; "
            "print(T.checkpoint_provenance('baseline', 0, model=lenet5().apply)['config'])")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 16
    here = T.checkpoint_provenance("baseline", 0, model=lenet5().apply)["config"]
    assert here == runs[0]
    other = T.checkpoint_provenance("baseline", 0, model=lenet5(row_order="width").apply)
    assert other["config"] != here  # the architecture is part of it


def _zero_images(key, x):
    """An 'augmentation' that blanks the batch: a model trained through it sees no pixels."""
    return jnp.zeros_like(x)


def test_augmentation_reaches_every_training_batch_and_is_keyed(digits, tmp_path):
    model = SmallCNN()
    params = model.init(jax.random.key(0), digits.x_train[:2])
    config = T.TrainConfig(epochs=1, batch_size=32, learning_rate=3e-3, max_steps_per_epoch=5)

    def run(augment, **kw):
        return T.train(model.apply, params, digits, config, log=None, augment=augment, **kw)

    blank, _ = run(_zero_images)
    kernel = params["params"]["Conv_0"]["kernel"]
    # blank batches: the convolution's kernel gets no gradient, the output layer's bias does
    assert np.array_equal(blank.params["params"]["Conv_0"]["kernel"], kernel)
    assert not np.array_equal(blank.params["params"]["Dense_0"]["bias"],
                              params["params"]["Dense_0"]["bias"])
    from reram_emu.experiments.polarize import shift_augment
    shifted, _ = run(shift_augment)
    again, _ = run(shift_augment)
    plain, _ = run(None)
    leaves = jax.tree_util.tree_leaves
    assert all(np.array_equal(a, b) for a, b in zip(leaves(shifted.params), leaves(again.params)))
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(shifted.params),
                                                         leaves(plain.params)))
    # a checkpoint records its augmentation: resuming it without one is refused
    path = str(tmp_path / "aug.npz")
    run(shift_augment, checkpoint=path)
    with pytest.raises(T.CheckpointError):
        run(None, checkpoint=path)
    with pytest.raises(TypeError, match="augment must be None or a function"):
        run(3)


class _UnhashableAugment:
    """An augmentation object that cannot be a cache key (``__eq__`` without ``__hash__``),
    so the train step is built uncached."""

    def __eq__(self, other):
        return self is other

    def __call__(self, key, x):
        return _zero_images(key, x)


def test_an_unhashable_augmentation_still_reaches_the_uncached_step(digits):
    model = SmallCNN()
    params = model.init(jax.random.key(0), digits.x_train[:2])
    config = T.TrainConfig(epochs=1, batch_size=32, learning_rate=3e-3, max_steps_per_epoch=3)
    state, _ = T.train(model.apply, params, digits, config, log=None,
                       augment=_UnhashableAugment())
    assert np.array_equal(state.params["params"]["Conv_0"]["kernel"],
                          params["params"]["Conv_0"]["kernel"])
