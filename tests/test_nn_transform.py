"""``reram_emu.nn.analog``: any JAX model's parameter products on crossbars (issue 12).

Bit-exactness: for a Flax CNN, an Equinox MLP, a ResNet basic block with batch norm and a skip
connection, and a transformer block (Flax multi-head attention + MLP + layer norm), the
transform's emulated output equals reading the same layers by hand through
``map_weights``/``program``/``read`` with the same keys, bit for bit, with every
non-ideality off and on.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reram_emu as re
from reram_emu.layers import ConvSpec, im2col
from reram_emu.nn import analog, layer_config

flax_linen = pytest.importorskip("flax.linen")
eqx = pytest.importorskip("equinox")
nn = flax_linen

PROJECT = re.MappingConfig(scheme="polarized", on_violation="project")
IDEAL = re.preset("forms", mapping=PROJECT)
NOISY = IDEAL.replace(device=re.DeviceConfig(variation_sigma=0.1, read_noise_sigma=0.02,
                                             stuck_on_rate=0.01, stuck_off_rate=0.01),
                      adc=dataclasses.replace(IDEAL.adc, noise_lsb=0.3))
CONFIGS = {"ideal": IDEAL, "noisy": NOISY}
PKEY, RKEY = jax.random.key(11), jax.random.key(12)


class Hand:
    """Reads products by hand: layer i programmed with fold_in(PKEY, i), read with
    fold_in(RKEY, i), on ``config`` made signed where the input may be negative."""

    def __init__(self, config):
        self.config, self.index = config, 0

    def __call__(self, x2d, w2d, signed):
        config = self.config
        if signed:
            config = config.replace(inputs=dataclasses.replace(config.inputs, signed=True))
        config = layer_config(config, w2d.shape[1])
        i, self.index = self.index, self.index + 1
        layer = re.program(re.map_weights(np.asarray(w2d), config),
                           key=jax.random.fold_in(PKEY, i))
        out, _ = re.read(layer, x2d, key=jax.random.fold_in(RKEY, i))
        return out


def emulated(apply, config, params, *args, **options):
    f = analog(apply, config, **options)
    state = f.program(params, *args, key=PKEY)
    return f, f.apply(state, params, *args, read_key=RKEY)


def assert_bit_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------- Flax CNN


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(8, (3, 3), strides=2, padding="VALID")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(x)


@pytest.mark.parametrize("noise", ["ideal", "noisy"])
@pytest.mark.parametrize("row_order", ["channel", "width"])
def test_flax_cnn_equals_hand_wired(noise, row_order):
    model = CNN()
    x = jax.random.uniform(jax.random.key(0), (3, 12, 12, 2))
    params = model.init(jax.random.key(1), x)
    f, y = emulated(model.apply, CONFIGS[noise], params, x, nonnegative_inputs=True,
                    row_order=row_order)
    assert [layer.path for layer in f.layers(params, x)] == [
        "params/Conv_0/kernel", "params/Conv_1/kernel", "params/Dense_0/kernel"]

    p = params["params"]
    hand = Hand(CONFIGS[noise])

    def conv(h, name, spec):
        kernel = p[name]["kernel"]                      # HWIO
        if row_order == "channel":
            w2d = kernel.reshape(-1, kernel.shape[-1])
        else:
            w2d = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, kernel.shape[-1])
        patches = im2col(h, spec)
        b, ho, wo, k = patches.shape
        out = hand(patches.reshape(-1, k), w2d, signed=False).reshape(b, ho, wo, -1)
        return out + p[name]["bias"]

    h = jax.nn.relu(conv(x, "Conv_0", ConvSpec(2, 6, (3, 3), 1, "SAME", row_order)))
    h = nn.max_pool(h, (2, 2), (2, 2))
    h = jax.nn.relu(conv(h, "Conv_1", ConvSpec(6, 8, (3, 3), 2, "VALID", row_order)))
    h = h.reshape(h.shape[0], -1)
    expected = hand(h, p["Dense_0"]["kernel"], signed=False) + p["Dense_0"]["bias"]
    assert_bit_equal(y, expected)


# ---------------------------------------------------------------------------- Equinox MLP


@pytest.mark.parametrize("noise", ["ideal", "noisy"])
def test_equinox_mlp_equals_hand_wired(noise):
    mlp = eqx.nn.MLP(12, 5, 16, 2, key=jax.random.key(2))
    x = jax.random.normal(jax.random.key(3), (7, 12))          # signed inputs
    f, y = emulated(lambda m, x: jax.vmap(m)(x), CONFIGS[noise], mlp, x)
    infos = f.layers(mlp, x)
    assert [i.path for i in infos] == ["layers/0/weight", "layers/1/weight", "layers/2/weight"]
    assert [i.config.inputs.signed for i in infos] == [True, False, False]
    hand = Hand(CONFIGS[noise])
    h = x
    for index, layer in enumerate(mlp.layers):
        h = hand(h, layer.weight.T, signed=index == 0) + layer.bias
        if index < 2:
            h = jax.nn.relu(h)
    assert_bit_equal(y, h)


# ------------------------------------------------------------ ResNet basic block (batch norm)


class BasicBlock(nn.Module):
    features: int = 8

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(x)
        y = nn.BatchNorm(use_running_average=True)(y)
        y = nn.relu(y)
        y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(y)
        y = nn.BatchNorm(use_running_average=True)(y)
        return nn.relu(y + residual)


@pytest.mark.parametrize("noise", ["ideal", "noisy"])
def test_resnet_block_equals_hand_wired(noise):
    block = BasicBlock()
    x = jax.random.uniform(jax.random.key(4), (2, 6, 6, 8))
    variables = block.init(jax.random.key(5), x)
    # non-trivial running statistics, so batch norm is not the identity
    stats = variables["batch_stats"]
    stats = jax.tree_util.tree_map(
        lambda s: s + jax.random.uniform(jax.random.key(6), s.shape, minval=0.1, maxval=0.5),
        stats)
    variables = {"params": variables["params"], "batch_stats": stats}
    f, y = emulated(block.apply, CONFIGS[noise], variables, x, nonnegative_inputs=True)
    assert [i.path for i in f.layers(variables, x)] == ["params/Conv_0/kernel",
                                                        "params/Conv_1/kernel"]
    p, s = variables["params"], variables["batch_stats"]
    hand = Hand(CONFIGS[noise])

    def conv_bn(h, conv, bn):
        kernel = p[conv]["kernel"]
        patches = im2col(h, ConvSpec(8, 8, (3, 3), 1, "SAME", "channel"))
        b, ho, wo, k = patches.shape
        out = hand(patches.reshape(-1, k), kernel.reshape(-1, 8), signed=False)
        out = out.reshape(b, ho, wo, 8)
        return nn.BatchNorm(use_running_average=True).apply(
            {"params": p[bn], "batch_stats": s[bn]}, out)

    h = jax.nn.relu(conv_bn(x, "Conv_0", "BatchNorm_0"))
    h = conv_bn(h, "Conv_1", "BatchNorm_1")
    assert_bit_equal(y, jax.nn.relu(h + x))


# -------------------------------------------------------------------------- transformer block


class TransformerBlock(nn.Module):
    heads: int = 2
    width: int = 16

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h)
        h = nn.LayerNorm()(x)
        h = nn.Dense(2 * self.width)(h)
        h = nn.gelu(h)
        return x + nn.Dense(self.width)(h)


@pytest.mark.parametrize("noise", ["ideal", "noisy"])
def test_transformer_block_equals_hand_wired(noise):
    block = TransformerBlock()
    x = jax.random.normal(jax.random.key(7), (2, 5, 16))
    params = block.init(jax.random.key(8), x)
    f, y = emulated(block.apply, CONFIGS[noise], params, x)
    attention = "params/MultiHeadDotProductAttention_0"
    assert [i.path for i in f.layers(params, x)] == [
        f"{attention}/query/kernel", f"{attention}/key/kernel", f"{attention}/value/kernel",
        f"{attention}/out/kernel", "params/Dense_0/kernel", "params/Dense_1/kernel"]
    assert all(i.config.inputs.signed for i in f.layers(params, x))

    p = params["params"]
    a = p["MultiHeadDotProductAttention_0"]
    hand = Hand(CONFIGS[noise])
    b, t, d = x.shape

    def dense(h, kernel, bias, contracted=1):
        k = int(np.prod(kernel.shape[:contracted]))
        rows = h.reshape(-1, k)
        out = hand(rows, kernel.reshape(k, -1), signed=True)
        return out.reshape(h.shape[:h.ndim - contracted] + kernel.shape[contracted:]) + bias

    h = nn.LayerNorm().apply({"params": p["LayerNorm_0"]}, x)
    q = dense(h, a["query"]["kernel"], a["query"]["bias"])
    k = dense(h, a["key"]["kernel"], a["key"]["bias"])
    v = dense(h, a["value"]["kernel"], a["value"]["bias"])
    attended = nn.dot_product_attention(q, k, v)
    x1 = x + dense(attended, a["out"]["kernel"], a["out"]["bias"], contracted=2)
    h = nn.LayerNorm().apply({"params": p["LayerNorm_1"]}, x1)
    h = nn.gelu(dense(h, p["Dense_0"]["kernel"], p["Dense_0"]["bias"]))
    expected = x1 + dense(h, p["Dense_1"]["kernel"], p["Dense_1"]["bias"])
    assert_bit_equal(y, expected)


# ------------------------------------------------------------------------- modes and composition


def plain_mlp(params, x):
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    return h @ params["w2"]


def plain_params():
    k1, k2 = jax.random.split(jax.random.key(9))
    return {"w1": jax.random.normal(k1, (20, 12)) * 0.3, "b1": jnp.zeros(12),
            "w2": jax.random.normal(k2, (12, 4)) * 0.3}


def test_float_mode_is_the_function_itself():
    params, x = plain_params(), jax.random.uniform(jax.random.key(10), (6, 20))
    f = analog(plain_mlp, IDEAL, mode="float")
    np.testing.assert_array_equal(np.asarray(f(params, x)), np.asarray(plain_mlp(params, x)))


def test_digital_mode_equals_emulated_with_everything_off():
    # with a wide ADC that never clips, the emulated read is the ideal quantized product
    wide = IDEAL.replace(adc=re.ADCConfig(bits=8, range="worst_case"))
    params, x = plain_params(), jax.random.uniform(jax.random.key(10), (6, 20))
    digital = analog(plain_mlp, wide, mode="digital", nonnegative_inputs=True)(params, x)
    f = analog(plain_mlp, wide, nonnegative_inputs=True)
    read = f.apply(f.program(params, x), params, x)
    np.testing.assert_allclose(np.asarray(read), np.asarray(digital), rtol=1e-6, atol=1e-6)


def test_program_once_jit_and_vmap_over_keys_and_noise():
    params, x = plain_params(), jax.random.uniform(jax.random.key(10), (6, 20))
    f = analog(plain_mlp, NOISY, nonnegative_inputs=True)
    state = f.program(params, x, key=PKEY)
    eager = f.apply(state, params, x, read_key=RKEY)
    jitted = jax.jit(lambda s, p, x, k: f.apply(s, p, x, read_key=k))
    assert_bit_equal(jitted(state, params, x, RKEY), eager)
    keys = jax.random.split(jax.random.key(1), 3)
    batched = jax.jit(jax.vmap(lambda k: f(params, x, program_key=k, read_key=RKEY)))(keys)
    for i in range(3):
        single = f(params, x, program_key=keys[i], read_key=RKEY)
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(single), rtol=1e-5,
                                   atol=1e-5)
    assert not np.allclose(np.asarray(batched[0]), np.asarray(batched[1]))
    base = NOISY.noise_parameters()
    sigmas = jnp.asarray([0.0, 0.05, 0.2])
    swept = jax.vmap(lambda s: f.apply(state, params, x, read_key=RKEY,
                                       noise=base._replace(read_noise_sigma=s)))(sigmas)
    assert swept.shape == (3,) + eager.shape and np.all(np.isfinite(np.asarray(swept)))


def test_noise_aware_gradient_reaches_the_weights():
    params, x = plain_params(), jax.random.uniform(jax.random.key(10), (6, 20))
    f = analog(plain_mlp, NOISY, mode="noise_aware", nonnegative_inputs=True)
    loss = lambda p: jnp.sum(f(p, x, program_key=PKEY, read_key=RKEY) ** 2)  # noqa: E731
    grads = jax.jit(jax.grad(loss))(params)
    for name in ("w1", "w2", "b1"):
        assert np.all(np.isfinite(np.asarray(grads[name])))
        assert float(jnp.abs(grads[name]).sum()) > 0


def test_per_layer_control_and_counts():
    params, x = plain_params(), jax.random.uniform(jax.random.key(10), (6, 20))
    f = analog(plain_mlp, IDEAL, layers={"w2": None}, nonnegative_inputs=True)
    infos = f.layers(params, x)
    assert [(i.path, i.config is None) for i in infos] == [("w1", False), ("w2", True)]
    y, counts = f.apply(f.program(params, x), params, x, return_counts=True)
    assert set(counts) == {"w1"} and int(counts["w1"].adc_conversions) > 0
    g = analog(plain_mlp, None, layers=lambda path, k, n: IDEAL if k == 20 else None,
               nonnegative_inputs=True)
    assert [i.config is None for i in g.layers(params, x)] == [False, True]


def test_calibrate_prime():
    params, x = plain_params(), jax.random.uniform(jax.random.key(10), (64, 20))
    f = analog(plain_mlp, re.preset("prime"), nonnegative_inputs=True)
    state = f.program(params, x)
    with pytest.raises(ValueError, match="calibrat"):
        f.apply(state, params, x)
    calibrated = f.calibrate(state, params, x)
    y = np.asarray(f.apply(calibrated, params, x))
    reference = np.asarray(plain_mlp(params, x))
    assert np.linalg.norm(y - reference) / np.linalg.norm(reference) < 0.1


# ------------------------------------------------------------------------------- bad input


def test_bad_input_errors():
    params, x = plain_params(), jax.random.uniform(jax.random.key(10), (6, 20))
    with pytest.raises(ValueError, match="no crossbar product uses parameter 'w3'"):
        analog(plain_mlp, IDEAL, layers={"w3": None}).layers(params, x)
    with pytest.raises(ValueError, match="program key"):
        analog(plain_mlp, NOISY, nonnegative_inputs=True).program(params, x)
    f = analog(plain_mlp, NOISY, nonnegative_inputs=True)
    with pytest.raises(ValueError, match="read_key"):
        f.apply(f.program(params, x, key=PKEY), params, x)
    with pytest.raises(ValueError, match="mode must be one of"):
        analog(plain_mlp, IDEAL, mode="exact")
    with pytest.raises(TypeError, match="CrossbarConfig"):
        analog(plain_mlp, "forms")
    with pytest.raises(ValueError, match="3-bit DAC"):
        analog(plain_mlp, re.preset("prime")).layers(params, x)

    def grouped(params, x):
        return jax.lax.conv_general_dilated(x, params["k"], (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=2)
    gp = {"k": jnp.ones((3, 3, 2, 4))}
    gx = jnp.ones((1, 5, 5, 4))
    with pytest.raises(ValueError, match="parameter 'k'.*grouped convolution"):
        analog(grouped, IDEAL).layers(gp, gx)
    assert analog(grouped, IDEAL, layers={"k": None}).layers(gp, gx)[0].config is None

    def per_head(params, x):
        return jnp.einsum("bhd,hde->bhe", x, params["w"])
    with pytest.raises(ValueError, match="parameter 'w'.*batch dimensions"):
        analog(per_head, IDEAL).layers({"w": jnp.ones((2, 3, 4))}, jnp.ones((5, 2, 3)))

    unpolarized = analog(plain_mlp, re.preset("forms"), nonnegative_inputs=True)
    with pytest.raises(ValueError, match="oppose their fragment's sign"):
        unpolarized.program(params, x)
    with pytest.raises(ValueError, match="layer 'w1'.*unsigned"):
        g = analog(plain_mlp, IDEAL, signed_inputs=False)
        g.apply(g.program(params, x), params, x - 0.5)


def test_evaluate_accuracy_is_the_hand_wired_read_batch_by_batch_and_key_by_key():
    """Each key programs once (split into programming and read keys, layer i folding in i) and
    every batch b reads with fold_in(read key, b): the same correctness table as reading the
    package's MLP layer by layer by hand."""
    from reram_emu.datasets import load_dataset
    from reram_emu.models import mlp
    from reram_emu.nn import evaluate_accuracy
    data = load_dataset("digits", flatten=True)
    x, y = data.x_test[:150], data.y_test[:150]
    model = mlp((64, 32, 10))
    params = model.init(jax.random.key(0))
    keys = jax.random.split(jax.random.key(5), 2)
    f = analog(model.apply, NOISY, nonnegative_inputs=True)
    after = evaluate_accuracy(f, params, x, y, keys=keys, batch_size=64)
    names = ("fc1", "fc2")
    for k in range(2):
        program_key, read_key = jax.random.split(keys[k])
        layers = [re.program(re.map_weights(params[n]["w"], layer_config(NOISY, 32 if i == 0
                                                                         else 10)),
                             jax.random.fold_in(program_key, i)) for i, n in enumerate(names)]
        for b, start in enumerate(range(0, 150, 64)):
            h = jnp.asarray(x[start:start + 64])
            batch_key = jax.random.fold_in(read_key, b)
            for i, n in enumerate(names):
                out, _ = re.read(layers[i], h, key=jax.random.fold_in(batch_key, i))
                h = out + params[n]["b"]
                h = jax.nn.relu(h) if i == 0 else h
            np.testing.assert_array_equal(after.correct[k, start:start + 64],
                                          np.argmax(np.asarray(h), -1) == y[start:start + 64])
    assert after.images == 150 and after.ci_low <= after.mean <= after.ci_high
    with pytest.raises(ValueError, match="one-hot"):
        evaluate_accuracy(f, params, x, np.eye(10)[y], keys=keys)
    with pytest.raises(ValueError, match="keys must be"):
        evaluate_accuracy(f, params, x, y, keys=-1)
    strict = analog(model.apply, re.preset("forms"), nonnegative_inputs=True)
    with pytest.raises(ValueError, match="oppose their fragment's sign"):
        evaluate_accuracy(strict, params, x, y)


@pytest.mark.parametrize("row_order", ["channel", "width"])
def test_weight_view_round_trip_and_polarized_projection(row_order):
    from reram_emu import admm
    model = CNN()
    x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 2))
    params = model.init(jax.random.key(1), x)
    f = analog(model.apply, re.preset("forms"), nonnegative_inputs=True, row_order=row_order)
    view = f.weight_view(params, x)
    matrices = view.get(params)
    assert {k: v.shape for k, v in matrices.items()} == {
        "params/Conv_0/kernel": (18, 6), "params/Conv_1/kernel": (54, 8),
        "params/Dense_0/kernel": (32, 10)}
    for a, b in zip(jax.tree_util.tree_leaves(view.put(params, matrices)),
                    jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the view is the mapping's matrix: projecting it polarizes the model for the FORMS read
    with pytest.raises(ValueError, match="oppose"):
        f.program(params, x)
    projected, _, _ = admm.hard_projection(matrices, admm.ADMMConfig(fragment_rows=8))
    polarized = view.put(params, admm.quantize_weights_dict(projected))
    state = f.program(polarized, x)
    assert all(int(v) == 0 for v in state.weights_zeroed.values())
    assert np.all(np.asarray(polarized["params"]["Dense_0"]["bias"])
                  == np.asarray(params["params"]["Dense_0"]["bias"]))
    with pytest.raises(ValueError, match="no crossbar layer named"):
        view.put(params, {"params/Conv_9/kernel": matrices["params/Conv_0/kernel"]})

    def scaled(params, x):  # a weight computed from two leaves cannot be written back
        return x @ (params["w"] * params["s"])
    g = analog(scaled, IDEAL, nonnegative_inputs=True)
    with pytest.raises(ValueError, match="through arithmetic"):
        g.weight_view({"w": jnp.ones((8, 4)), "s": jnp.ones((8, 4))}, jnp.ones((2, 8)))


def test_polarize_any_model_equinox_on_digits():
    from reram_emu.admm import ADMMConfig, check_polarized
    from reram_emu.datasets import load_dataset
    from reram_emu.nn import evaluate_accuracy, polarize
    data = load_dataset("digits", flatten=True)
    mlp = eqx.nn.MLP(64, 10, 32, 1, key=jax.random.key(0))
    apply = lambda m, x: jax.vmap(m)(x)  # noqa: E731
    f = analog(apply, re.preset("forms"), nonnegative_inputs=True)
    result = polarize(f, mlp, data.x_train, data.y_train,
                      ADMMConfig(fragment_rows=8, epochs=8, finetune_epochs=6),
                      learning_rate=3e-3, log=None)
    view = f.weight_view(result.params, jnp.asarray(data.x_test[:4]))
    assert check_polarized(view.get(result.params), 8, re.preset("forms"))
    assert set(result.zeroed_fraction) == {"layers/0/weight", "layers/1/weight"}
    # masked fine-tuning kept every projected zero at zero
    for name, mask in result.masks.items():
        assert np.all(np.asarray(view.get(result.params)[name])[np.asarray(mask) == 0] == 0)
    float_acc = float(np.mean(np.argmax(apply(result.params, data.x_test), -1) == data.y_test))
    emulated = evaluate_accuracy(f, result.params, data.x_test, data.y_test).mean
    assert float_acc > 0.6
    assert abs(emulated - float_acc) <= 0.01


def test_fit_noise_aware_flax_cnn_lowers_the_loss():
    from reram_emu.nn import fit
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (128, 12, 12, 2)).astype(np.float32)
    y = (x[..., 0].mean((1, 2)) > 0.5).astype(np.int32)
    model = CNN()
    params = model.init(jax.random.key(1), x[:2])
    f = analog(model.apply, NOISY, mode="noise_aware", nonnegative_inputs=True)
    trained, history = fit(f, params, x, y, 3e-3, 3, batch_size=32, noise_aware=True, log=None)
    losses = [h["train_loss"] for h in history]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert jax.tree_util.tree_structure(trained) == jax.tree_util.tree_structure(params)
    with pytest.raises(ValueError, match="mode='noise_aware'"):
        fit(analog(model.apply, NOISY), params, x, y, 1e-3, 1, noise_aware=True)
    with pytest.raises(ValueError, match="one-hot"):
        fit(f, params, x, np.eye(2)[y], 1e-3, 1)


def test_sweep_over_noise_with_any_model_compiles_once():
    from reram_emu.sweeps import noise_grid, sweep
    params, x = plain_params(), jax.random.uniform(jax.random.key(10), (6, 20))
    f = analog(plain_mlp, IDEAL, nonnegative_inputs=True)
    reference = f.apply(f.program(params, x), params, x)   # the noise-free read

    def error(noise, key):
        program_key, read_key = jax.random.split(key)
        y = f(params, x, program_key=program_key, read_key=read_key, noise=noise)
        return jnp.linalg.norm(y - reference) / jnp.linalg.norm(reference)

    grid = noise_grid(IDEAL, variation_sigma=[0.0, 0.3], read_noise_sigma=[0.0, 0.1])
    keys = jax.random.split(jax.random.key(0), 4)
    errors = np.asarray(sweep(error, grid, keys))
    assert errors.shape == (4, 4) and np.all(np.isfinite(errors))
    assert np.all(errors[0] == 0)                  # no noise: the noise-free read exactly
    assert np.all(errors[1:] > 0.01)
    assert errors[3].mean() > errors[1].mean() and errors[3].mean() > errors[2].mean()
    # one point of the sweep equals the same point evaluated alone
    point = IDEAL.noise_parameters()._replace(
        variation_sigma=jnp.float32(0.3), read_noise_sigma=jnp.float32(0.1))
    np.testing.assert_allclose(errors[3, 1], float(error(point, keys[1])), rtol=1e-5)


def test_nonnegativity_is_traced_through_im2col_and_pooling():
    # the package's LeNet-5 builds im2col from pad, slice and stack: its images stay >= 0, so
    # every layer reads unsigned inputs, as the FORMS design does
    from reram_emu.models import lenet5
    model = lenet5()
    params = model.init(jax.random.key(0))
    x = jnp.ones((2, 28, 28, 1))
    infos = analog(model.apply, IDEAL, nonnegative_inputs=True).layers(params, x)
    assert [(i.name, i.nonnegative, i.config.inputs.signed) for i in infos] == [
        (f"{n}/w", True, False) for n in ("conv1", "conv2", "fc1", "fc2", "fc3")]
    # undeclared inputs: the first layer is signed, the ones after a ReLU are not
    infos = analog(model.apply, IDEAL).layers(params, x)
    assert [i.config.inputs.signed for i in infos] == [True, False, False, False, False]


def test_glob_patterns_row_order_per_layer_and_input_scales():
    model = CNN()
    x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 2))
    params = model.init(jax.random.key(1), x)
    other = re.preset("forms", fragment_rows=4, mapping=PROJECT)
    f = analog(model.apply, IDEAL, layers={"params/Conv_*": other, "params/Dense_0/kernel": None},
               row_order={"params/Conv_1/kernel": "width"}, nonnegative_inputs=True)
    infos = f.layers(params, x)
    assert [i.config.geometry.fragment_rows if i.config else None for i in infos] == [4, 4, None]
    assert [i.row_order for i in infos] == ["channel", "width", "channel"]
    with pytest.raises(ValueError, match="no crossbar product uses parameter 'params/Conv_7/"):
        analog(model.apply, IDEAL, row_order={"params/Conv_7/kernel": "width"}).layers(params, x)
    state = f.program(params, x)
    calibrated = f.calibrate(state, params, x, input_scales=True)
    assert set(calibrated.scales) == {"params/Conv_0/kernel", "params/Conv_1/kernel"}
    assert all(float(v) > 0 for v in calibrated.scales.values())
    y = f.apply(calibrated, params, x)
    assert np.all(np.isfinite(np.asarray(y)))


def test_bad_input_to_the_op_and_the_polarizer():
    from reram_emu.admm import ADMMConfig
    from reram_emu.nn import admm_pull, crossbar_matmul, polarize
    params, x = plain_params(), jax.random.uniform(jax.random.key(10), (6, 20))
    with pytest.raises(ValueError, match="mode must be one of"):
        crossbar_matmul(x, params["w1"], IDEAL, mode="exact")
    with pytest.raises(ValueError, match="read_key"):
        crossbar_matmul(x, params["w1"], NOISY, mode="noise_aware", program_key=PKEY)
    f = analog(plain_mlp, IDEAL, nonnegative_inputs=True)
    view = f.weight_view(params, x)
    with pytest.raises(ValueError, match="decoupled"):
        admm_pull(view, ADMMConfig(decoupled=False), update_every=1)
    with pytest.raises(ValueError, match="update_every"):
        admm_pull(view, ADMMConfig(), update_every=0)
    labels = np.arange(6) % 4
    with pytest.raises(ValueError, match="one-hot"):
        polarize(f, params, x, np.eye(4)[labels], ADMMConfig(), batch_size=2, log=None)
    with pytest.raises(ValueError, match="batch_size"):
        polarize(f, params, x, labels, ADMMConfig(), batch_size=64, log=None)
    state = f.program(params, x)
    with pytest.raises(ValueError, match="percentile"):
        f.calibrate(state, params, x, percentile=0)
    with pytest.raises(TypeError, match="AnalogState"):
        f.apply({"w1": 0}, params, x)
