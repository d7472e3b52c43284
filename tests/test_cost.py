"""The hardware cost model: preset numbers and units, hand-worked counts, pruning, zero-skip."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import reram_emu as rx
from reram_emu import cost
from reram_emu.config import (ADCConfig, CrossbarConfig, CrossbarGeometry, InputConfig,
                              MappingConfig)
from reram_emu.mapping import column_layout

PRESETS = [("forms", 4), ("forms", 8), ("forms", 16), ("forms", 32), ("isaac", None),
           ("prime", None)]


def design(name, m=None):
    return cost.cost_preset(name, m)


def small_config(scheme, m=8, input_bits=8, zero_skip=True):
    return CrossbarConfig(geometry=CrossbarGeometry(128, 128, m),
                          mapping=MappingConfig(scheme=scheme, on_violation="project"),
                          inputs=InputConfig(bits=input_bits), adc=ADCConfig(bits=14),
                          zero_skip=zero_skip)


def design_for(scheme, **kwargs):
    """A cost design whose crossbars run ``small_config(scheme)``: FORMS's hardware for the
    single-crossbar schemes, PRIME's (pairs) for the differential one."""
    base = cost.cost_preset("prime" if scheme == "differential" else "forms")
    return base.replace(config=small_config(scheme, **kwargs))


# --------------------------------------------------------------------------- presets


def test_per_conversion_energies_match_the_papers():
    forms = design("forms", 8)
    isaac = design("isaac")
    assert forms.adc_energy_per_conversion_joules == pytest.approx(0.23e-12, rel=0.03)
    assert forms.adc_energy_per_conversion_joules == pytest.approx(15.2e-3 / (32 * 2.1e9))
    assert isaac.adc_energy_per_conversion_joules == pytest.approx(1.67e-12, rel=0.01)
    # the 1.28 GS/s of ISAAC's text gives 1.56 pJ
    fast = isaac.with_component("ADC", frequency_hertz=1.28e9)
    assert fast.adc_energy_per_conversion_joules == pytest.approx(1.5625e-12)


@pytest.mark.parametrize("name,m", PRESETS)
def test_preset_units_are_sane(name, m):
    d = design(name, m)
    assert d.components, "a design needs components"
    for c in d.components:
        assert c.source, f"{c.name} cites no source"
        assert ("table" in c.source.lower()) or c.source.startswith("assumed"), c.source
        assert c.count_per_unit > 0
        limit_w, limit_mm2 = (100.0, 100.0) if c.level == "chip" else (1.0, 1.0)
        assert 0 < c.power_watts < limit_w, f"{c.name}: {c.power_watts} W (watts, not mW)"
        assert 0 < c.area_mm2 < limit_mm2, f"{c.name}: {c.area_mm2} mm^2"
        if c.frequency_hertz is not None:
            assert 1e8 <= c.frequency_hertz <= 1e10, f"{c.name}: {c.frequency_hertz} Hz"
    adc = d.adc
    assert 1e-14 < adc.energy_per_sample_joules < 1e-11  # tens of fJ .. 10 pJ per conversion
    assert 0.01 < d.tile_power_watts < 5 and 0.05 < d.tile_area_mm2 < 5
    assert d.energy_per_conversion_joules > d.adc_energy_per_conversion_joules
    assert sum(d.energy_per_conversion_breakdown().values()) == pytest.approx(
        d.energy_per_conversion_joules)
    peak = cost.peak_efficiency(d)
    assert peak.gops_per_s_mm2 > 0 and peak.gops_per_w > 0
    if name == "prime":
        assert all(c.source.startswith("assumed") for c in d.components)


def test_isaac_totals_match_table_2():
    d = design("isaac")
    assert d.unit_power_watts * 12 == pytest.approx(0.289, rel=0.005)   # 12 IMAs: 289 mW
    assert d.unit_area_mm2 * 12 == pytest.approx(0.157, rel=0.005)      # 0.157 mm^2
    assert d.tile_power_watts == pytest.approx(0.330, rel=0.005)        # tile: 330 mW
    assert d.tile_area_mm2 == pytest.approx(0.372, rel=0.005)           # 0.372 mm^2
    assert d.chip_power_watts == pytest.approx(65.8, rel=0.005)         # with HyperTransport
    assert d.chip_area_mm2 == pytest.approx(85.4, rel=0.005)
    assert d.adcs_per_crossbar == 1 and d.crossbars_per_tile == 96


def test_forms_adc_follows_the_fragment():
    m8, m4, m16 = design("forms", 8), design("forms", 4), design("forms", 16)
    assert m8.adc.power_watts == pytest.approx(15.2e-3) and m8.adc.count_per_unit == 32
    assert m8.adc.frequency_hertz == 2.1e9 and m8.adcs_per_crossbar == 4
    assert m4.adc.power_watts == pytest.approx(7.6e-3)     # 3 bits: / 2 (Walden)
    assert m16.adc.power_watts == pytest.approx(30.4e-3)   # 5 bits: x 2
    flat = cost.cost_preset("forms", 16, adc_bit_scaling=1.0)
    assert flat.adc.power_watts == pytest.approx(15.2e-3)
    assert m8.adc_lsb_levels == 2.0  # 8 rows x 3 levels = 24 > 15 codes


def test_peak_throughput_hand_worked():
    isaac = cost.peak_efficiency(design("isaac"))
    # 96 crossbars x 1.2 GS/s, 128 rows x 128/129 data columns / (8 slices x 16 cycles), 2 ops
    assert isaac.ops_per_s == pytest.approx(96 * 1.2e9 * 128 / 129 / (8 * 16) * 128 * 2)
    forms = cost.peak_efficiency(design("forms", 8))
    assert forms.ops_per_s == pytest.approx(12 * 32 * 2.1e9 * 8 / (4 * 16) * 2)  # 201.6 GOPs/s
    assert forms.ops_per_s == pytest.approx(201.6e9)


def test_overrides():
    d = cost.cost_preset("isaac", components={"ADC": {"power_watts": 8e-3}}, tiles_per_chip=10)
    assert d.adc_energy_per_conversion_joules == pytest.approx(1.67e-12 / 2, rel=0.01)
    assert d.tiles_per_chip == 10
    with pytest.raises(KeyError):
        d.with_component("flux capacitor", power_watts=1.0)
    with pytest.raises(ValueError):
        d.with_component("ADC", power_watts=-1.0)
    with pytest.raises(ValueError):
        cost.cost_preset("isaac", fragment_rows=8)
    with pytest.raises(ValueError):
        cost.cost_preset("tpu")


# --------------------------------------------------------------------------- hand-worked layers


@pytest.mark.parametrize("scheme,fragments,adc_inputs,crossbars", [
    ("polarized", 2, 16, 1),      # 4 weights x 4 slices (7-bit magnitudes in 2-bit cells)
    ("differential", 2, 16, 2),   # one ADC input per column pair; a positive and negative array
    ("offset", 2, 17, 1),         # 4 x 4 slices (8-bit offset binary) + the unit column
])
def test_16x4_layer_at_m8(scheme, fragments, adc_inputs, crossbars):
    config = small_config(scheme)
    layout = column_layout(config, 16, 4)
    d = design_for(scheme)
    r = cost.layer_cost(d, layout)  # no activations: every fragment runs all 8 cycles
    assert layout.fragments == fragments
    assert r.fragments == fragments * 4
    assert r.fragment_cycles == fragments * 8
    assert r.adc_conversions == fragments * 8 * adc_inputs
    assert r.adc_conversions == r.adc_conversions_dense == r.adc_conversions_without_skip
    assert r.crossbars == r.crossbars_stored == crossbars
    assert r.ops == 2 * 16 * 4
    # one crossbar (pair) does it all at its conversion rate
    assert r.latency_s == pytest.approx(r.adc_conversions / d.conversion_rate_per_position_hertz)
    assert r.energy_j == pytest.approx(r.adc_conversions * d.energy_per_conversion_joules)
    assert r.area_mm2 == pytest.approx(crossbars * d.area_per_crossbar_mm2)


def test_conversions_agree_with_the_pipeline_counts():
    """A layer that fills its column tile: the cost model's count equals ReadCounts."""
    rng = np.random.default_rng(0)
    for scheme in ("polarized", "differential", "offset"):
        config = small_config(scheme)
        mapped = rx.map_weights(rng.normal(size=(40, config.weights_per_tile)), config)
        x = rng.integers(0, 256, size=(6, 40))
        x[:, 8:16] = 0          # fragment 1 all zero: skipped entirely
        x[:, :8] = x[:, :8] % 8  # fragment 0 needs at most 3 cycles
        counts = rx.read_integers(rx.program(mapped), jnp.asarray(x)).counts
        d = design_for(scheme)
        from_counts = cost.layer_cost(d, mapped.layout, counts)
        from_cycles = cost.layer_cost(d, mapped.layout, cycles=cost.fragment_cycles(x, config))
        for r in (from_counts, from_cycles):
            assert r.adc_conversions == pytest.approx(float(counts.adc_conversions))
            assert r.adc_conversions_without_skip == pytest.approx(
                float(counts.adc_conversions_without_skip))
            assert r.fragment_cycles == pytest.approx(float(counts.fragment_cycles))
        if scheme == "polarized":
            assert from_cycles.fragment_cycles < from_cycles.fragment_cycles_without_skip


def test_zero_skip_cycles_hand_worked():
    config = small_config("polarized")
    x = np.zeros((1, 16), np.int64)
    x[0, :8] = [5, 0, 1, 0, 0, 0, 0, 0]  # widest input 5 = 0b101: 3 cycles; fragment 1: none
    cycles = cost.fragment_cycles(x, config)
    np.testing.assert_array_equal(cycles, [[3, 0]])
    r = cost.layer_cost(design_for("polarized"), column_layout(config, 16, 4), cycles=cycles)
    assert r.fragment_cycles == 3 and r.fragment_cycles_without_skip == 16
    assert r.adc_conversions == 3 * 16 and r.adc_conversions_without_skip == 16 * 16
    assert r.cycles_saved_fraction == pytest.approx(1 - 3 / 16)
    assert r.frames_per_s > r.frames_per_s_without_skip
    # a design without zero-skipping runs every cycle whatever the inputs
    off = small_config("polarized", zero_skip=False)
    r_off = cost.layer_cost(design_for("polarized").replace(config=off),
                            column_layout(off, 16, 4), cycles=cycles)
    assert r_off.adc_conversions == 16 * 16


def test_pruning_counts():
    config = small_config("polarized")
    layout = column_layout(config, 16, 4)
    w = np.ones((16, 4))
    w[:8, 0] = 0            # fragment 0 of column 0: pruned
    w[:, 3] = 0             # column 3: both fragments pruned
    pruned = cost.pruned_fragments(w, config)
    np.testing.assert_array_equal(pruned, [[True, False, False, True], [False, False, False, True]])
    d = design_for("polarized")
    r = cost.layer_cost(d, layout, integer_weights=w)
    assert r.fragments_pruned == 3
    assert r.adc_conversions == (8 - 3) * 8 * 4  # live weight fragments x cycles x slices
    assert r.adc_conversions_dense == 2 * 8 * 16
    assert r.crossbars_stored == 1
    empty = cost.layer_cost(d, layout, integer_weights=np.zeros((16, 4)))
    assert empty.crossbars_stored == 0 and empty.adc_conversions == 0 and empty.area_mm2 == 0


def test_pruning_whole_crossbars_and_offset_unit_column():
    config = small_config("offset")
    layout = column_layout(config, 256, 4)  # 2 row tiles of 16 fragments
    w = np.ones((256, 4))
    w[128:] = 0                             # the second crossbar holds only zeros
    w[:8, 1:] = 0                           # fragment 0: only column 0 live
    d = design_for("offset")
    r = cost.layer_cost(d, layout, integer_weights=w)
    assert r.crossbars == 2 and r.crossbars_stored == 1
    # fragment 0: 1 weight x 4 slices + unit; fragments 1..15: 4 x 4 + unit; 8 cycles each
    assert r.adc_conversions == 8 * ((4 + 1) + 15 * (16 + 1))


def test_latency_is_set_by_the_slowest_crossbar():
    config = small_config("polarized")
    layout = column_layout(config, 256, 4)  # two crossbars, rows 0-127 and 128-255
    x = np.zeros((1, 256), np.int64)
    x[0, 0] = 255                           # only fragment 0 (first crossbar) works: 8 cycles
    d = design_for("polarized")
    r = cost.layer_cost(d, layout, cycles=cost.fragment_cycles(x, config))
    assert r.adc_conversions == 8 * 16
    assert r.latency_s == pytest.approx(8 * 16 / (4 * 2.1e9))
    assert r.latency_without_skip_s == pytest.approx(16 * 8 * 16 / (4 * 2.1e9))


def test_vectors_per_frame_and_network_sum():
    config = small_config("polarized")
    d = design_for("polarized")
    layout = column_layout(config, 16, 4)
    one = cost.layer_cost(d, layout, vectors_per_frame=1, name="a")
    many = cost.layer_cost(d, layout, vectors_per_frame=10, name="b")
    assert many.adc_conversions == 10 * one.adc_conversions
    assert many.latency_s == pytest.approx(10 * one.latency_s)
    net = cost.network_cost(d, [one, many])
    assert net.adc_conversions == 11 * one.adc_conversions
    assert net.energy_j == pytest.approx(one.energy_j + many.energy_j)
    assert net.latency_s == pytest.approx(one.latency_s + many.latency_s)
    assert net.crossbars == 2
    chip_rate = d.conversion_rate_per_tile_hertz * d.tiles_per_chip
    assert net.frames_per_s == pytest.approx(chip_rate / net.adc_conversions)
    assert net.gops_per_w == pytest.approx(net.ops / 1e9 / net.energy_j)
    assert sum(e for _, e in net.energy_breakdown_j) == pytest.approx(net.energy_j)
    with pytest.raises(ValueError):
        cost.network_cost(design("isaac"), [one])


def test_layout_must_match_config():
    layout = column_layout(small_config("polarized", m=4), 16, 4)
    with pytest.raises(ValueError):
        cost.layer_cost(design_for("polarized"), layout)


def test_quantize_activations_and_savings():
    inputs = InputConfig(bits=16)
    x = np.array([[1.0, 0.5, 0.0, 0.25], [0.0, 0.0, 0.0, 0.5]])
    per_layer = cost.quantize_activations(x, inputs)
    assert per_layer.max() == 65535 and per_layer[1, 3] == 32768
    per_vector = cost.quantize_activations(x, inputs, "per_vector")
    assert per_vector[1, 3] == 65535
    with pytest.raises(ValueError):
        cost.quantize_activations(-x, inputs)
    # one layer, 4 inputs: fragment 4 holds the vector; both vectors need 16 cycles
    s = cost.zero_skip_savings([x], fragment_rows=(2, 4))
    assert s[4]["cycles"] == pytest.approx(16.0) and s[4]["saved"] == pytest.approx(0.0)
    # fragment 2: [1, .5] 16, [0, .25] 15, [0, 0] 0, [0, .5] 16
    assert s[2]["cycles"] == pytest.approx((16 + 15 + 0 + 16) / 4)


def test_compare_designs_and_plot(tmp_path):
    rng = np.random.default_rng(1)
    loads = [cost.LayerWorkload("fc1", rng.normal(size=(40, 20)),
                                np.maximum(rng.normal(size=(12, 40)), 0)),
             cost.LayerWorkload("conv", rng.normal(size=(18, 8)),
                                np.maximum(rng.normal(size=(30, 18)), 0), vectors_per_frame=15)]
    designs = [design("forms", 8), design("isaac"), design("prime")]
    results = cost.compare_designs(loads, designs, chip_area_mm2=62.5)
    assert set(results) == {"FORMS m=8", "ISAAC", "PRIME"}
    forms = results["FORMS m=8"]
    assert len(forms.layers) == 2 and forms.layers[1].input_vectors == 15
    assert forms.adc_conversions < forms.adc_conversions_without_skip  # ReLU zeros skipped
    assert results["ISAAC"].adc_conversions == results["ISAAC"].adc_conversions_without_skip
    for r in results.values():
        assert math.isfinite(r.gops_per_w) and r.frames_per_s > 0 and r.fits_on_chip
    path = tmp_path / "cost.png"
    cost.plot_comparison(results, path, zero_skip={"random": cost.zero_skip_savings(
        [l.activations for l in loads], (4, 8))})
    assert path.stat().st_size > 1000


@pytest.mark.parametrize("signed,dac_bits,m", [(False, 1, 8), (False, 3, 4), (True, 1, 4),
                                               (True, 1, 16)])
def test_fragment_cycles_agree_with_effective_cycles(signed, dac_bits, m):
    from reram_emu.quantization import effective_cycles
    rng = np.random.default_rng(m + dac_bits)
    inputs = InputConfig(bits=12 if not signed else 10, signed=signed, dac_bits=dac_bits)
    config = CrossbarConfig(geometry=CrossbarGeometry(128, 128, m), inputs=inputs)
    low = -(2 ** (inputs.bits - 1)) if signed else 0
    high = 2 ** (inputs.bits - 1) if signed else 2 ** inputs.bits
    x = rng.integers(low, high, size=(9, 4 * m))
    x >>= rng.integers(0, inputs.bits, size=x.shape)  # many widths, zeros and -1s
    expected = np.asarray(effective_cycles(jnp.asarray(x, jnp.int32), inputs, m))
    np.testing.assert_array_equal(cost.fragment_cycles(x, config), expected)
    ragged = cost.fragment_cycles(x[:, :-3], config)  # K not a multiple of m: zero padding
    assert ragged.shape == (9, 4)


@pytest.mark.parametrize("name,m", [("forms", 4), ("isaac", None), ("prime", None)])
def test_mapped_integers_match_the_mapping(name, m):
    config = cost.cost_preset(name, m).config
    w = np.random.default_rng(5).normal(size=(37, 11)).astype(np.float32)
    integers, layout = cost.mapped_integers(w, config)
    mapped = rx.encode_weights(jnp.asarray(w), config)
    np.testing.assert_array_equal(integers, np.asarray(mapped.integer_weights))
    assert layout == mapped.layout
