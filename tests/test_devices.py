"""Device models: variation, stuck-at faults, finite levels, read noise; keys and statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import reram_emu as rx
from reram_emu.config import (ADCConfig, CellConfig, CrossbarConfig, CrossbarGeometry,
                              DeviceConfig, InputConfig, MappingConfig)
from reram_emu.devices import program_conductance, snap_to_programmable_levels, to_siemens

CELL = CellConfig(bits_per_cell=2, g_on_siemens=1e-4, g_off_siemens=1e-6)


def target_levels(shape=(64, 8, 4, 130), seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 4, size=shape), jnp.float32)


def test_no_noise_gives_target_levels_exactly():
    levels = target_levels()
    programmed = program_conductance(levels, CELL, DeviceConfig(), None)
    np.testing.assert_array_equal(np.asarray(programmed), np.asarray(levels))
    np.testing.assert_allclose(np.asarray(to_siemens(programmed, CELL)),
                               1e-6 + np.asarray(levels) * (1e-4 - 1e-6) / 3, rtol=1e-6)


@pytest.mark.parametrize("kind", ["lognormal", "gaussian"])
def test_variation_has_configured_spread(kind):
    sigma = 0.1
    levels = target_levels()
    programmed = program_conductance(levels, CELL, DeviceConfig(variation=kind,
                                                                variation_sigma=sigma),
                                     jax.random.key(1))
    g_target = np.asarray(to_siemens(levels, CELL), np.float64).ravel()
    g = np.asarray(to_siemens(programmed, CELL), np.float64).ravel()
    ratio = np.log(g / g_target) if kind == "lognormal" else g / g_target - 1
    n = ratio.size
    # mean within a 5-sigma confidence bound of 0, spread within the chi-square bound of sigma
    assert abs(ratio.mean()) < 5 * sigma / np.sqrt(n)
    low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], n - 1)
    variance = ratio.var(ddof=1)
    assert (n - 1) * variance / high < sigma ** 2 < (n - 1) * variance / low


def test_programming_key_reproducible_and_distinct():
    levels = target_levels()
    device = DeviceConfig(variation_sigma=0.1, stuck_on_rate=0.01)
    a = program_conductance(levels, CELL, device, jax.random.key(3))
    b = program_conductance(levels, CELL, device, jax.random.key(3))
    c = program_conductance(levels, CELL, device, jax.random.key(4))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_stuck_at_rates_match():
    levels = jnp.ones((200, 1000), jnp.float32)  # all cells at level 1
    rates = (0.01, 0.005)
    programmed = np.asarray(program_conductance(
        levels, CELL, DeviceConfig(stuck_on_rate=rates[0], stuck_off_rate=rates[1]),
        jax.random.key(5)))
    n = programmed.size
    for value, rate in [(3.0, rates[0]), (0.0, rates[1])]:
        count = int(np.sum(programmed == value))
        low, high = stats.binom.ppf([1e-6, 1 - 1e-6], n, rate)
        assert low <= count <= high, (value, count, n * rate)
    assert int(np.sum(programmed == 1.0)) == n - int(np.sum(programmed != 1.0))


def test_finite_programmable_levels():
    levels = jnp.arange(4.0)
    np.testing.assert_array_equal(snap_to_programmable_levels(levels, CELL, 4), levels)
    np.testing.assert_allclose(snap_to_programmable_levels(levels, CELL, 3), [0, 1.5, 1.5, 3])
    np.testing.assert_allclose(snap_to_programmable_levels(levels, CELL, 2), [0, 0, 3, 3])


def noisy_config(read_sigma=0.0, adc_noise=0.0, adc_bits=20, full_scale=64.0):
    """One fragment of 8 rows, a fine ADC (LSB = full_scale / top) so quantization is small."""
    return CrossbarConfig(
        geometry=CrossbarGeometry(8, 8, 8), cell=CELL,
        adc=ADCConfig(bits=adc_bits, range="fixed", full_scale_levels=full_scale,
                      noise_lsb=adc_noise),
        mapping=MappingConfig(scheme="polarized"), inputs=InputConfig(bits=1),
        device=DeviceConfig(read_noise_sigma=read_sigma), zero_skip=False)


def test_read_noise_same_key_agrees_different_keys_differ():
    config = noisy_config(read_sigma=0.05)
    layer = rx.program(rx.map_weights(np.abs(np.random.default_rng(0).normal(size=(8, 2))),
                                      config))
    x = jnp.ones((3, 8), jnp.int32)
    a = rx.read_integers(layer, x, jax.random.key(1)).outputs
    b = rx.read_integers(layer, x, jax.random.key(1)).outputs
    c = rx.read_integers(layer, x, jax.random.key(2)).outputs
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))  # rows drawn independently
    with pytest.raises(ValueError, match="key"):
        rx.read_integers(layer, x)


def test_read_noise_matches_per_cell_monte_carlo():
    """The column-level read noise equals, in distribution, drawing every cell's conductance
    anew: compare the output variance with a brute-force numpy draw of every cell."""
    sigma, draws = 0.05, 4000
    config = noisy_config(read_sigma=sigma).replace(weights=rx.WeightConfig(bits=3))
    weights = np.array([[3.0], [1.0], [2.0], [3.0], [0.0], [1.0], [3.0], [2.0]])
    mapped = rx.map_weights(weights, config)
    layer = rx.program(mapped)
    x = jnp.asarray(np.array([[1, 1, 0, 1, 1, 1, 0, 1]] * draws), jnp.int32)
    out = np.asarray(rx.read_integers(layer, x, jax.random.key(7)).outputs[:, 0], np.float64)
    # brute force: G_i (1 + sigma n_i) per cell, minus the reference column read the same way
    rng = np.random.default_rng(0)
    beta = CELL.off_in_levels
    g = np.asarray(mapped.integer_weights)[:, 0] + beta
    active = np.asarray(x[0], bool)
    cells = (g[active] * (1 + sigma * rng.normal(size=(draws, active.sum())))).sum(axis=1)
    reference = (beta * (1 + sigma * rng.normal(size=(draws, active.sum())))).sum(axis=1)
    brute = cells - reference
    lsb = float(layer.adc_lsb)
    assert abs(out.mean() - brute.mean()) < 5 * brute.std() / np.sqrt(draws) + lsb
    ratio = out.var() / (brute.var() + lsb ** 2 / 12)
    assert 0.9 < ratio < 1.1, ratio


def test_adc_noise_and_offset():
    config = noisy_config(adc_noise=2.0, adc_bits=8, full_scale=255.0)
    layer = rx.program(rx.map_weights(np.full((8, 1), 3.0), config.replace(
        weights=rx.WeightConfig(bits=3))))
    x = jnp.ones((4000, 8), jnp.int32)
    out = np.asarray(rx.read_integers(layer, x, jax.random.key(0)).outputs[:, 0])
    assert abs(out.mean() - 24) < 0.2 and abs(out.std() - np.sqrt(4 + 1 / 12)) < 0.15
    offset = rx.program(rx.map_weights(np.full((8, 1), 3.0), config.replace(
        weights=rx.WeightConfig(bits=3), adc=ADCConfig(bits=8, range="fixed", offset_lsb=1.4))))
    assert float(rx.read_integers(offset, x[:1]).outputs[0, 0]) == 25.0


def test_zero_skipped_cycles_add_no_adc_noise():
    """Zero inputs: with zero-skipping no cycle runs, so the output is exactly 0 even with ADC
    noise and offset; without zero-skipping every cycle is converted and noise appears."""
    config = rx.preset("forms").replace(
        adc=ADCConfig(bits=4, noise_lsb=1.0, offset_lsb=0.3))
    rng = np.random.default_rng(0)
    layer = rx.program(rx.map_weights(np.abs(rng.normal(size=(32, 4))), config))
    x = jnp.zeros((8, 32), jnp.int32)
    skip = rx.read_integers(layer, x, jax.random.key(0))
    assert int(skip.counts.adc_conversions) == 0
    np.testing.assert_array_equal(np.asarray(skip.outputs), 0.0)
    no_skip_layer = rx.program(rx.map_weights(np.abs(rng.normal(size=(32, 4))),
                                              config.replace(zero_skip=False)))
    no_skip = rx.read_integers(no_skip_layer, x, jax.random.key(0))
    assert np.any(np.asarray(no_skip.outputs) != 0)


def test_variation_degrades_output_gracefully():
    rng = np.random.default_rng(1)
    config = rx.preset("forms").replace(device=DeviceConfig(variation_sigma=0.1),
                                        adc=ADCConfig(bits=12))
    signs = np.repeat(rng.choice([-1.0, 1.0], size=(8, 16)), 8, axis=0)
    w = np.abs(rng.normal(size=(64, 16))) * signs
    mapped = rx.map_weights(w, config)
    x = rng.random((16, 64)).astype(np.float32)
    ideal_mapped = rx.map_weights(w, config.replace(device=DeviceConfig()))
    ideal = np.asarray(rx.read(rx.program(ideal_mapped), x).outputs)
    noisy = np.asarray(rx.read(rx.program(mapped, jax.random.key(0)), x).outputs)
    relative = np.linalg.norm(noisy - ideal) / np.linalg.norm(ideal)
    assert 0.01 < relative < 0.3


def test_fast_normal_stream_statistics():
    from reram_emu import random_streams
    a = np.asarray(random_streams.normal(jax.random.key(0), (400_000,)), np.float64)
    b = np.asarray(random_streams.normal(jax.random.key(1), (400_000,)), np.float64)
    again = np.asarray(random_streams.normal(jax.random.key(0), (400_000,)), np.float64)
    np.testing.assert_array_equal(a, again)
    n = a.size
    assert abs(a.mean()) < 5 / np.sqrt(n) and abs(a.std() - 1) < 5 / np.sqrt(2 * n)
    assert stats.kstest(a, "norm").pvalue > 1e-4
    assert abs(stats.kurtosis(a)) < 5 * np.sqrt(24 / n)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(n)  # streams of two keys
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 5 / np.sqrt(n)  # neighbours in a stream
    assert np.max(np.abs(a)) > 4  # reaches the tails


def test_fast_erfinv_matches_scipy_over_the_whole_open_interval():
    from scipy import special

    from reram_emu import random_streams
    # the 23-bit grid the streams use, its ends included, and a dense sweep
    grid = np.concatenate([(np.arange(0, 2 ** 23, 997) + 0.5) * 2.0 / 2 ** 23 - 1.0,
                           [(0.5 * 2.0 / 2 ** 23) - 1.0, 1.0 - 0.5 * 2.0 / 2 ** 23]])
    grid = grid.astype(np.float32)
    ours = np.asarray(random_streams._erfinv(jnp.asarray(grid)), np.float64)
    reference = special.erfinv(grid.astype(np.float64))
    assert np.max(np.abs(ours - reference) / np.maximum(np.abs(reference), 1e-3)) < 2e-6


def test_sub_streams_of_one_seed_pair_are_distinct_and_reproducible():
    from reram_emu import random_streams
    seeds = jax.vmap(random_streams.key_seeds)(jax.random.split(jax.random.key(3), 3))
    values = np.asarray(random_streams.normal_from_seeds(seeds[:, None, :], (50_000,),
                                                         stream=jnp.arange(2)[None, :]))
    assert values.shape == (3, 2, 50_000)
    flat = values.reshape(6, -1).astype(np.float64)
    correlations = np.corrcoef(flat)[np.triu_indices(6, 1)]
    assert np.max(np.abs(correlations)) < 5 / np.sqrt(50_000)
    again = random_streams.normal_from_seeds(seeds[1], (50_000,), stream=1)
    np.testing.assert_array_equal(values[1, 1], np.asarray(again))
    # no stream: the key's own stream
    np.testing.assert_array_equal(
        np.asarray(random_streams.normal(jax.random.key(5), (1000,))),
        np.asarray(random_streams.normal_from_seeds(
            random_streams.key_seeds(jax.random.key(5)), (1000,))))
