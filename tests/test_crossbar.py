"""The crossbar pipeline: exactness with non-idealities off, the FORMS ADC, hardware counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reram_emu as rx
from reram_emu.config import (ADCConfig, CellConfig, CrossbarConfig, CrossbarGeometry,
                              InputConfig, MappingConfig, WeightConfig)
from reram_emu.converters import adc_lsb_levels

SCHEMES = [("polarized", False), ("differential", False), ("offset", False), ("offset", True)]


def polarized_weights(rng, k, n, m):
    """Random weights whose fragments of m rows share one sign."""
    fragments = -(-k // m)
    signs = np.repeat(rng.choice([-1.0, 1.0], size=(fragments, n)), m, axis=0)[:k]
    return np.abs(rng.normal(size=(k, n))) * signs


def exact_config(scheme, flip, signed, m=8, baseline="reference_column", rows=64, columns=32,
                 input_bits=8, dac_bits=1, zero_skip=True):
    return CrossbarConfig(
        geometry=CrossbarGeometry(rows, columns, m),
        adc=ADCConfig(bits=14),
        mapping=MappingConfig(scheme=scheme, flip_encoding=flip, on_violation="project",
                              baseline=baseline),
        inputs=InputConfig(bits=input_bits, signed=signed, dac_bits=dac_bits),
        zero_skip=zero_skip, chunk_size=4)


def random_inputs(rng, batch, k, bits, signed):
    if signed:
        return rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(batch, k))
    return rng.integers(0, 2 ** bits, size=(batch, k))


@pytest.mark.parametrize("scheme,flip", SCHEMES)
@pytest.mark.parametrize("signed", [False, True])
def test_ideal_read_is_integer_exact(scheme, flip, signed):
    rng = np.random.default_rng(abs(hash((scheme, flip, signed))) % 2 ** 32)
    read = jax.jit(rx.read_integers)
    for k, n, batch in [(150, 37, 5), (7, 3, 2), (64, 40, 9)]:  # shapes that do not divide
        config = exact_config(scheme, flip, signed)
        mapped = rx.map_weights(rng.normal(size=(k, n)), config)
        layer = rx.program(mapped)
        x = random_inputs(rng, batch, k, 8, signed)
        expected = x @ np.asarray(mapped.integer_weights, np.int64)
        result = read(layer, jnp.asarray(x))
        np.testing.assert_array_equal(np.asarray(result.outputs), expected)


@pytest.mark.parametrize("scheme,flip", SCHEMES)
def test_digital_baseline_and_multibit_dac_exact(scheme, flip):
    rng = np.random.default_rng(3)
    config = exact_config(scheme, flip, False, baseline="digital", input_bits=6, dac_bits=3)
    config = config.replace(cell=CellConfig(g_off_siemens=0.0))
    mapped = rx.map_weights(rng.normal(size=(45, 20)), config)
    x = random_inputs(rng, 6, 45, 6, False)
    result = rx.read_integers(rx.program(mapped), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(result.outputs),
                                  x @ np.asarray(mapped.integer_weights, np.int64))


def test_float_read_matches_quantized_product():
    rng = np.random.default_rng(1)
    config = exact_config("polarized", False, False).replace(
        weights=WeightConfig(bits=8, scale="per_output_channel"))
    w = polarized_weights(rng, 100, 24, 8)
    x = rng.random((7, 100)).astype(np.float32)
    mapped = rx.map_weights(w, config)
    result = jax.jit(rx.read)(rx.program(mapped), x)
    scale = np.max(np.abs(x), axis=1, keepdims=True) / 255
    x_int = np.clip(np.round(x / scale), 0, 255)
    expected = (x_int @ np.asarray(mapped.integer_weights)) * scale * np.asarray(
        mapped.weight_scale)
    np.testing.assert_allclose(np.asarray(result.outputs), expected, rtol=1e-5, atol=1e-6)
    ideal = x @ w  # 8-bit quantization stays within 1 % of the output range
    np.testing.assert_allclose(np.asarray(result.outputs), ideal, atol=0.01 * np.abs(ideal).max())


@pytest.mark.parametrize("name", ["forms", "isaac", "prime"])
def test_presets_are_exact_with_enough_adc_bits(name):
    """Each paper's configuration at its own weight and input precision, with a wide ADC, in
    float64 (ISAAC's 16-bit x 16-bit products exceed float32's 2**24 integer range)."""
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        config = rx.preset(name)
        config = config.replace(adc=ADCConfig(bits=20), dtype="float64",
                                mapping=MappingConfig(**{**config.mapping.__dict__,
                                                         "on_violation": "project"}))
        mapped = rx.map_weights(rng.normal(size=(300, 10)), config)
        x = random_inputs(rng, 3, 300, config.inputs.bits, False)
        result = rx.read_integers(rx.program(mapped), jnp.asarray(x))
        assert result.outputs.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(result.outputs),
                                      x @ np.asarray(mapped.integer_weights, np.int64))


def forms_reference(x_int, integer_weights, m, lsb, top, bits_per_cell=2, slices=4, bits=16):
    """Independent numpy model of the FORMS data path with an ADC of LSB ``lsb`` levels and
    codes 0..top: every (input bit, fragment, slice column) sum is rounded half to even and
    clipped, then shift-added with the fragment sign."""
    k, n = integer_weights.shape
    pad = -k % m
    w = np.pad(integer_weights, ((0, pad), (0, 0))).reshape(-1, m, n)
    sign = np.where(w.sum(axis=1) >= 0, 1, -1)  # (F, n)
    magnitude = np.abs(w).astype(np.int64)
    x = np.pad(x_int, ((0, 0), (0, pad))).reshape(x_int.shape[0], -1, m)
    out = np.zeros((x_int.shape[0], n))
    for bit in range(bits):
        plane = (x >> bit) & 1  # (B, F, m)
        for s in range(slices):
            level = (magnitude >> (bits_per_cell * s)) & 3  # (F, m, n)
            column_sum = np.einsum("bfm,fmn->bfn", plane, level)
            code = np.clip(np.round(column_sum / lsb), 0, top)
            out += np.einsum("bfn,fn->bn", code * lsb, sign) * 2.0 ** (bit + bits_per_cell * s)
    return out


def test_forms_adc_error_matches_worst_case_arithmetic():
    """FORMS preset (fragment 8, 2-bit cells, 4-bit ADC) with the worst-case ADC range, the
    alternative to the preset's fixed range. The worst-case column sum is 8 * 3 = 24 > 15, so
    the worst-case range uses an LSB of 2 levels: every conversion rounds to an even level and
    nothing clips."""
    config = rx.preset("forms").replace(adc=ADCConfig(bits=4, range="worst_case"))
    assert adc_lsb_levels(config) == 2.0
    assert adc_lsb_levels(rx.preset("forms")) == 1.0  # the preset: one level per code
    rng = np.random.default_rng(4)
    w = polarized_weights(rng, 40, 6, 8)
    mapped = rx.map_weights(w, config)
    x = rng.integers(0, 2 ** 16, size=(5, 40))
    result = rx.read_integers(rx.program(mapped), jnp.asarray(x))
    integer_weights = np.asarray(mapped.integer_weights, np.int64)
    expected = forms_reference(x, integer_weights, 8, lsb=2.0, top=15)
    np.testing.assert_allclose(np.asarray(result.outputs), expected, rtol=1e-6)
    exact = x @ integer_weights
    assert np.any(np.asarray(result.outputs) != exact)  # the 4-bit ADC does lose precision
    # Bound: at most one level of error per conversion, times its significance.
    bound = 40 / 8 * (2 ** 16 - 1) * (1 + 4 + 16 + 64)
    assert np.max(np.abs(np.asarray(result.outputs) - exact)) <= bound


def test_forms_fixed_range_clips_above_fifteen_levels():
    """With a fixed range of one level per code, a 4-bit ADC codes 0..15: a fragment column
    sum of 15 passes, 16 and above clip to 15."""
    config = rx.preset("forms").replace(adc=ADCConfig(bits=4, range="fixed"),
                                        inputs=InputConfig(bits=1))
    weights = np.full((8, 1), 3.0)  # every cell of slice 0 at level 3
    mapped = rx.map_weights(weights, config.replace(weights=WeightConfig(bits=3)))
    layer = rx.program(mapped)
    assert float(layer.adc_lsb) == 1.0
    outputs = []
    for active in range(9):
        x = np.zeros((1, 8), np.int32)
        x[0, :active] = 1
        outputs.append(float(rx.read_integers(layer, jnp.asarray(x)).outputs[0, 0]))
    expected = [min(3 * a, 15) for a in range(9)]
    assert outputs == expected  # 0, 3, ..., 15 exact; 18, 21, 24 clip to 15


def test_zero_skip_counts_match_brute_force():
    rng = np.random.default_rng(5)
    m, k, batch, bits = 4, 37, 6, 16
    config = exact_config("polarized", False, False, m=m, input_bits=bits)
    layer = rx.program(rx.map_weights(polarized_weights(rng, k, 10, m), config))
    # inputs of many widths, some fragments all zero
    x = (rng.integers(0, 2 ** 16, size=(batch, k)) >> rng.integers(0, 17, size=(batch, k)))
    counts = rx.read_integers(layer, jnp.asarray(x)).counts
    padded = np.pad(x, ((0, 0), (0, -k % m)))
    brute = 0
    for row in padded:
        for f in range(len(row) // m):
            brute += max(int(v).bit_length() for v in row[f * m:(f + 1) * m])
    fragments = -(-k // m)
    assert int(counts.fragment_cycles) == brute
    assert int(counts.fragment_cycles_without_skip) == batch * fragments * bits
    per_cycle = layer.layout.column_tiles * layer.layout.adc_inputs_per_tile
    assert int(counts.adc_conversions) == brute * per_cycle
    no_skip = rx.read_integers(rx.program(rx.map_weights(
        polarized_weights(rng, k, 10, m), config.replace(zero_skip=False))), jnp.asarray(x))
    assert int(no_skip.counts.fragment_cycles) == batch * fragments * bits


def test_signed_zero_skip_uses_twos_complement_width():
    config = exact_config("polarized", False, True, m=2, input_bits=8)
    layer = rx.program(rx.map_weights(np.ones((2, 1)), config))
    cases = {(0, 0): 0, (-1, 0): 1, (1, 0): 2, (-2, 1): 2, (-3, 0): 3, (-128, 5): 8, (127, 0): 8}
    for (a, b), width in cases.items():
        result = rx.read_integers(layer, jnp.asarray([[a, b]]))
        assert int(result.counts.fragment_cycles) == width, (a, b)
        assert float(result.outputs[0, 0]) == (a + b) * float(
            np.asarray(rx.map_weights(np.ones((2, 1)), config).integer_weights)[0, 0])


def test_counts_are_hardware_conversions():
    config = rx.preset("forms").replace(zero_skip=False)
    rng = np.random.default_rng(6)
    layer = rx.program(rx.map_weights(polarized_weights(rng, 256, 64, 8), config))
    counts = rx.read_integers(layer, jnp.ones((3, 256), jnp.int32)).counts
    # batch x input bits x fragments x physical slice columns
    assert int(counts.adc_conversions) == 3 * 16 * (256 // 8) * (64 * 4)


def test_unpolarized_weights_rejected_or_projected():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(32, 8))
    config = rx.preset("forms")
    with pytest.raises(ValueError, match=r"(\d+) of 32 fragments .* not polarized"):
        rx.map_weights(w, config)
    projected = rx.map_weights(w, config.replace(
        mapping=MappingConfig(on_violation="project")))
    report = projected.report
    assert report.fragments == 32 and 0 < report.fragments_broken <= 32
    assert 0 < report.relative_norm_removed < 1
    assert bool(rx.is_polarized(projected.integer_weights, 8))
    rx.map_weights(polarized_weights(rng, 32, 8, 8), config)  # accepted as is


def test_jit_vmap_over_keys_and_noise_parameters_compiles_once():
    rng = np.random.default_rng(8)
    config = rx.preset("forms")
    mapped = rx.map_weights(polarized_weights(rng, 64, 16, 8), config)
    x = jnp.asarray(rng.random((4, 64)), jnp.float32)

    traces = []

    def evaluate(sigma, program_key, read_key):
        traces.append(1)  # runs once per trace (compilation), not per call
        noise = config.noise_parameters()._replace(variation_sigma=sigma, read_noise_sigma=sigma)
        layer = rx.program(mapped, program_key, noise)
        return rx.read(layer, x, read_key, noise).outputs

    sigmas = jnp.linspace(0.0, 0.2, 5)
    keys = jax.random.split(jax.random.key(0), 5)
    batched = jax.jit(jax.vmap(evaluate, in_axes=(0, 0, 0)))
    out1 = batched(sigmas, keys, keys)
    out2 = batched(sigmas * 0.5, keys, keys)
    assert out1.shape == (5, 4, 16)
    assert len(traces) == 1 and batched._cache_size() == 1
    ideal = rx.read(rx.program(mapped), x).outputs
    np.testing.assert_allclose(out1[0], ideal, rtol=1e-6)  # sigma 0: the ideal read
    assert not np.allclose(out1[4], ideal)
    assert not np.allclose(out1[4], out2[4])


def test_dtype_is_float32_by_default():
    rng = np.random.default_rng(9)
    layer = rx.program(rx.map_weights(polarized_weights(rng, 16, 4, 8), rx.preset("forms")))
    assert layer.conductance.dtype == jnp.float32
    assert rx.read(layer, rng.random((2, 16))).outputs.dtype == jnp.float32


@pytest.mark.parametrize("scheme,flip", SCHEMES)
@pytest.mark.parametrize("baseline", ["reference_column", "digital"])
def test_effective_weights_decode_the_programmed_array(scheme, flip, baseline):
    from reram_emu.crossbar import effective_weights
    rng = np.random.default_rng(10)
    config = exact_config(scheme, flip, False, baseline=baseline)
    mapped = rx.map_weights(rng.normal(size=(70, 13)), config)
    ideal = np.asarray(mapped.integer_weights * mapped.weight_scale)
    np.testing.assert_allclose(np.asarray(effective_weights(rx.program(mapped))), ideal,
                               atol=1e-6 * np.abs(ideal).max())
    noisy = config.replace(device=rx.DeviceConfig(variation_sigma=0.05))
    programmed = rx.program(rx.map_weights(rng.normal(size=(70, 13)), noisy), jax.random.key(0))
    x = rng.integers(0, 256, size=(4, 70))
    # with variation, an ideal (wide) ADC read equals x @ effective weights up to rounding
    read = np.asarray(rx.read_integers(programmed, jnp.asarray(x)).outputs) * np.asarray(
        programmed.weight_scale)
    expected = x @ np.asarray(effective_weights(programmed), np.float64)
    # each conversion rounds by at most half a level: bound the sum over 9 fragments, cycle
    # significance 255 and slice significance 1+4+16+64 (plus the unit column for offset)
    per_conversion = 85 + (128 + 3 * 85 if scheme == "offset" else 0)
    bound = 0.5 * 9 * 255 * per_conversion * float(np.max(np.asarray(programmed.weight_scale)))
    assert np.max(np.abs(read - expected)) <= bound


def test_calibrated_adc_range_from_data():
    from reram_emu.crossbar import adc_inputs, calibrate_adc
    rng = np.random.default_rng(11)
    base = rx.preset("prime").replace(mapping=MappingConfig(scheme="differential"),
                                      adc=ADCConfig(bits=6, range="worst_case"))
    x = rng.integers(0, 64, size=(32, 200))
    w = rng.normal(size=(200, 16))
    worst = rx.program(rx.map_weights(w, base))
    calibrated_config = base.replace(adc=ADCConfig(bits=6, range="calibrated"))
    layer = rx.program(rx.map_weights(w, calibrated_config))
    with pytest.raises(ValueError, match="range='calibrated'"):
        calibrate_adc(worst, jnp.asarray(x))
    calibrated = calibrate_adc(layer, jnp.asarray(x), percentile=100.0)
    largest = float(jnp.max(jnp.abs(adc_inputs(layer, jnp.asarray(x)))))
    # jnp.percentile interpolates in float32: agree to its rounding
    assert float(calibrated.adc_lsb) == pytest.approx(largest / 31, rel=1e-4)
    assert float(calibrated.adc_lsb) < float(worst.adc_lsb)
    exact = x @ np.asarray(rx.map_weights(w, base).integer_weights)
    error = lambda lyr: np.linalg.norm(np.asarray(  # noqa: E731
        rx.read_integers(lyr, jnp.asarray(x)).outputs) - exact)
    assert error(calibrated) < 0.5 * error(worst)


def test_programmed_layer_is_a_pytree_and_reads_vmap_over_batches():
    rng = np.random.default_rng(12)
    layer = rx.program(rx.map_weights(polarized_weights(rng, 40, 6, 8), rx.preset("forms")))
    leaves = jax.tree_util.tree_leaves(layer)
    assert len(leaves) == 6 and all(isinstance(leaf, jax.Array) for leaf in leaves)
    doubled = jax.tree_util.tree_map(lambda a: a, layer)
    assert doubled.config == layer.config
    xs = jnp.asarray(rng.random((3, 5, 40)), jnp.float32)
    batched = jax.jit(jax.vmap(lambda x: rx.read(layer, x).outputs))(xs)
    for i in range(3):
        np.testing.assert_allclose(batched[i], rx.read(layer, xs[i]).outputs, rtol=1e-6)
