"""The package's models and layers: im2col convolutions in both row orders, the models as plain
functions read on crossbars by the transform, the crossbar op's noise-aware and exact-read
training forwards, the noise model of the training forward, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reram_emu as rx
from reram_emu import admm as A
from reram_emu import training
from reram_emu.config import ADCConfig, DeviceConfig, InputConfig, MappingConfig
from reram_emu.layers import ConvSpec, DenseSpec, conv_weight_to_hwio, im2col
from reram_emu.models import convnet, count_parameters, lenet5, lenet5_caffe, mlp
from reram_emu.nn import analog, crossbar_matmul, layer_config, output_noise_moments
from reram_emu.polarization import project_polarized


@pytest.mark.parametrize("row_order", ["channel", "width"])
@pytest.mark.parametrize("padding,stride", [("SAME", 1), ("VALID", 1), ("SAME", 2)])
def test_im2col_matches_lax_convolution(row_order, padding, stride):
    rng = np.random.default_rng(0)
    spec = ConvSpec(3, 5, (3, 5), stride, padding, row_order)
    x = jnp.asarray(rng.normal(size=(2, 9, 11, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=spec.weight_shape), jnp.float32)
    ours = im2col(x, spec) @ w
    ref = jax.lax.conv_general_dilated(x, conv_weight_to_hwio(w, spec), (stride, stride), padding,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_row_orders_put_channels_or_kernel_width_in_a_fragment():
    spec_c = ConvSpec(4, 1, (2, 3), row_order="channel_major")
    spec_w = ConvSpec(4, 1, (2, 3), row_order="width_major")
    assert spec_c.row_order == "channel" and spec_w.row_order == "width"
    # an input whose value encodes (row, column, channel)
    i, j, c = np.meshgrid(np.arange(2), np.arange(3), np.arange(4), indexing="ij")
    x = jnp.asarray((100 * i + 10 * j + c)[None], jnp.float32)  # (1, 2, 3, 4)
    row_c = np.asarray(im2col(x, spec_c))[0, 0, 0]
    row_w = np.asarray(im2col(x, spec_w))[0, 0, 0]
    np.testing.assert_array_equal(row_c[:4], [0, 1, 2, 3])  # channels at kernel (0, 0)
    np.testing.assert_array_equal(row_w[:3], [0, 10, 20])  # kernel width of channel 0
    with pytest.raises(ValueError):
        ConvSpec(1, 1, row_order="diagonal")


def test_lenet5_shapes_and_parameter_count():
    model = lenet5()
    params = model.init(jax.random.key(0))
    assert count_parameters(params) == 61706
    assert params["conv2"]["w"].shape == (150, 16)
    out = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32))
    assert out.shape == (3, 10)
    assert mlp((64, 32, 10)).apply(mlp((64, 32, 10)).init(jax.random.key(1)),
                                   jnp.zeros((2, 64))).shape == (2, 10)


def test_lenet5_caffe_shapes_and_parameter_count():
    """Caffe's MNIST LeNet-5: 20 and 50 VALID 5x5 filters, fc 800-500-10 (431,080 parameters)."""
    model = lenet5_caffe()
    params = model.init(jax.random.key(0))
    assert count_parameters(params) == 431080
    shapes = {k: params[k]["w"].shape for k in ("conv1", "conv2", "fc1", "fc2")}
    assert shapes == {"conv1": (25, 20), "conv2": (500, 50), "fc1": (800, 500), "fc2": (500, 10)}
    out = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32))
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="too small"):
        lenet5_caffe(input_shape=(12, 12, 1))


def exact_config(m=8):
    """FORMS geometry with an ADC fine enough that the read is the quantized product."""
    return rx.preset("forms", fragment_rows=m).replace(
        adc=ADCConfig(bits=14), mapping=MappingConfig(on_violation="project"),
        inputs=InputConfig(bits=16))


def test_a_package_cnn_on_crossbars_reads_the_quantized_model():
    """A small CNN (im2col convolution, pooling, dense) read through the emulator with an ADC
    fine enough to be exact gives the quantized float model's logits."""
    model = convnet("cnn", (("conv1", ConvSpec(1, 4, (3, 3), 1, "SAME", "width")),
                            ("conv2", ConvSpec(4, 6, (3, 3), 1, "VALID", "channel"))),
                    (("fc1", DenseSpec(24, 10)),), (12, 12, 1))
    params = model.init(jax.random.key(2))
    x = jax.random.uniform(jax.random.key(3), (4, 12, 12, 1))
    view = training.crossbar_view(model.apply, params, x)
    assert view.names == ("conv1/w", "conv2/w", "fc1/w")
    weights = {k: project_polarized(w, 8) for k, w in view.get(params).items()}
    params = view.put(params, weights)
    quantized = view.put(params, A.quantize_weights_dict(weights, 8))
    f = analog(model.apply, exact_config(), nonnegative_inputs=True)
    # every layer on its column-trimmed tile, reading unsigned inputs (images, then ReLU/pool)
    assert [i.config for i in f.layers(params, x)] == [layer_config(exact_config(), n)
                                                       for n in (4, 6, 10)]
    emulated = jax.jit(lambda p, x: f.apply(f.program(p, x), p, x))(params, x)
    ideal = model.apply(quantized, x)
    np.testing.assert_allclose(np.asarray(emulated), np.asarray(ideal), rtol=2e-3, atol=2e-3)


def test_trimmed_tile_changes_only_the_cost():
    """A layer narrower than a tile read on the trimmed tile gives the full tile's outputs."""
    rng = np.random.default_rng(7)
    w = project_polarized(jnp.asarray(rng.normal(size=(40, 6)), jnp.float32), 8)
    x = jnp.asarray(rng.uniform(size=(5, 40)), jnp.float32)
    config = rx.preset("forms", fragment_rows=8).replace(inputs=InputConfig(bits=8))
    trimmed = layer_config(config, 6)
    assert trimmed.geometry.columns == 24 and layer_config(config, 120) == config
    outputs = [rx.read(rx.program(rx.map_weights(w, c)), x)[0] for c in (config, trimmed)]
    np.testing.assert_allclose(np.asarray(outputs[0]), np.asarray(outputs[1]), rtol=1e-6)


def test_noise_aware_product_is_straight_through_and_fresh_per_key():
    rng = np.random.default_rng(4)
    w = jnp.asarray(project_polarized(jnp.asarray(rng.normal(size=(32, 8)), jnp.float32), 8))
    x = jnp.asarray(rng.uniform(size=(5, 32)), jnp.float32)
    clean = exact_config()
    noisy = clean.replace(device=DeviceConfig(variation_sigma=0.1))

    def forward(w, config, key):
        return crossbar_matmul(x, w, config, mode="noise_aware", program_key=key).outputs

    y0 = forward(w, clean, jax.random.key(0))
    quantized = A.quantize_weights_dict({"w": w})["w"]
    np.testing.assert_allclose(np.asarray(y0), np.asarray(x @ quantized), rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda w: jnp.sum(forward(w, noisy, jax.random.key(1)) ** 2))(w)
    y1 = forward(w, noisy, jax.random.key(1))
    np.testing.assert_allclose(np.asarray(g), np.asarray(x.T @ (2 * y1)), rtol=1e-4, atol=1e-4)
    y2 = forward(w, noisy, jax.random.key(2))
    assert not np.allclose(np.asarray(y1), np.asarray(y2))
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(forward(w, noisy, jax.random.key(1))))
    # the same product through analog(..., mode="noise_aware") on a model function: layer 0
    # programmed with fold_in(program_key, 0), gradient straight through to the parameter
    f = analog(lambda p, x: x @ p["w"], noisy, mode="noise_aware", nonnegative_inputs=True)
    via_analog = f({"w": w}, x, program_key=jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(via_analog), np.asarray(crossbar_matmul(
        x, w, layer_config(noisy, 8), mode="noise_aware",
        program_key=jax.random.fold_in(jax.random.key(1), 0)).outputs))
    assert not np.allclose(np.asarray(via_analog),
                           np.asarray(f({"w": w}, x, program_key=jax.random.key(2))))
    g = jax.grad(lambda w: jnp.sum(f({"w": w}, x, program_key=jax.random.key(1)) ** 2))(w)
    np.testing.assert_allclose(np.asarray(g), np.asarray(x.T @ (2 * via_analog)), rtol=1e-4,
                               atol=1e-4)


def test_exact_read_is_the_emulated_read_with_a_straight_through_gradient():
    rng = np.random.default_rng(8)
    w = jnp.asarray(project_polarized(jnp.asarray(rng.normal(size=(32, 8)), jnp.float32), 8))
    x = jnp.asarray(rng.uniform(size=(5, 32)), jnp.float32)
    # the preset's worst-case ADC (LSB 2 levels): rounding visibly changes the product
    config = rx.preset("forms", fragment_rows=8).replace(inputs=InputConfig(bits=8))

    def forward(w):
        return crossbar_matmul(x, w, config, mode="emulated",
                               program_key=jax.random.key(0)).outputs

    y = forward(w)
    hand = rx.read(rx.program(rx.map_weights(w, config)), x)[0]
    np.testing.assert_allclose(np.asarray(y), np.asarray(hand), rtol=1e-5, atol=1e-5)
    quantized = A.quantize_weights_dict({"w": w})["w"]
    assert not np.allclose(np.asarray(y), np.asarray(x @ quantized), rtol=1e-2)
    g = jax.grad(lambda w: jnp.sum(forward(w)))(w)
    np.testing.assert_allclose(np.asarray(g), np.asarray(x.T @ jnp.ones((5, 8))), rtol=1e-5)
    # the training forward with exact_read is that emulated read, with that gradient
    aware = training.NoiseAware(config, exact_read=True).forward(lambda p, x: x @ p["w"])
    assert aware.mode == "emulated"
    keys = dict(program_key=jax.random.key(0), read_key=jax.random.key(1))
    np.testing.assert_allclose(np.asarray(aware({"w": w}, x, **keys)), np.asarray(hand),
                               rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda w: jnp.sum(aware({"w": w}, x, **keys)))(w)
    np.testing.assert_allclose(np.asarray(g), np.asarray(x.T @ jnp.ones((5, 8))), rtol=1e-5)


FINE_ADC = dict(bits=16, range="fixed", full_scale_levels=64.0)
FORMS_ADC = dict(bits=4, range="fixed")


@pytest.mark.parametrize("read_sigma,adc_noise,adc", [(0.05, 0.0, FINE_ADC), (0.0, 0.5, FINE_ADC),
                                                      (0.0, 0.25, FORMS_ADC)])
def test_output_noise_model_matches_the_emulated_read(read_sigma, adc_noise, adc):
    """The training forward's output noise has the bit-serial read's mean and spread."""
    rng = np.random.default_rng(5)
    w = np.asarray(project_polarized(jnp.asarray(rng.normal(size=(32, 4)), jnp.float32), 8))
    x = rng.uniform(size=(3, 32)).astype(np.float32)
    x[0, :16] = 0.0  # fragments that zero-skip
    clean = rx.preset("forms", fragment_rows=8).replace(
        adc=ADCConfig(**adc), inputs=InputConfig(bits=6), chunk_size=8)
    config = layer_config(clean.replace(
        adc=ADCConfig(**adc, noise_lsb=adc_noise),
        device=DeviceConfig(read_noise_sigma=read_sigma)), 4)
    mapped = rx.map_weights(w, config)
    layer = rx.program(mapped)
    scale = jnp.float32(1.0 / 63)
    keys = jax.random.split(jax.random.key(6), 256)
    outputs = jax.vmap(lambda k: rx.read(layer, x, key=k, scale=scale).outputs)(keys)
    reference = rx.read(rx.program(rx.map_weights(w, layer_config(clean, 4))), x, scale=scale)[0]
    mean, std = output_noise_moments(layer, mapped, jnp.asarray(x), scale, read_sigma or None,
                                     adc_noise or None)
    empirical = np.std(np.asarray(outputs), axis=0)
    np.testing.assert_allclose(empirical, np.asarray(std), rtol=0.2)
    if adc is FORMS_ADC or adc_noise == 0:
        # (the clipped negative codes of input-dependent zero sums also bias the output; the
        # model resolves only the always-zero fragment slices, a small part at 0.5 LSB noise)
        bias = np.mean(np.asarray(outputs), axis=0) - np.asarray(reference)
        np.testing.assert_allclose(bias, np.asarray(mean), atol=0.25 * float(np.max(std)))


def test_checkpoint_round_trip(tmp_path):
    model = mlp((8, 4, 3))
    state = {"params": model.init(jax.random.key(0)), "count": jnp.asarray(3, jnp.int32)}
    path = str(tmp_path / "ck.npz")
    training.save_checkpoint(path, state, epoch=2, step=7, seed=1, history=[{"a": 1}])
    loaded, meta = training.load_checkpoint(path, state)
    assert meta["epoch"] == 2 and meta["step"] == 7 and meta["history"] == [{"a": 1}]
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with np.load(path) as data:  # plain numpy reads it
        assert "['params']['fc1']['w']" in data.files
    with pytest.raises(ValueError):
        training.load_checkpoint(path, {"params": mlp((8, 5, 3)).init(jax.random.key(0)),
                                        "count": jnp.asarray(0)})


def test_mean_ci_and_difference():
    mean, low, high = training.mean_ci([0.9, 0.92, 0.91, 0.93])
    assert low < mean < high and abs(mean - 0.915) < 1e-12
    diff, low, high = training.difference_ci([1.0, 1.1, 0.9], [0.0, 0.1, -0.1])
    assert abs(diff - 1.0) < 1e-12 and low > 0
