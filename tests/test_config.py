"""Configuration validation and bad input at the API boundary."""

import jax.numpy as jnp
import numpy as np
import pytest

import reram_emu as rx
from reram_emu.config import (ADCConfig, CellConfig, CrossbarConfig, CrossbarGeometry,
                              DeviceConfig, InputConfig, MappingConfig, WeightConfig)


@pytest.mark.parametrize("build,message", [
    (lambda: WeightConfig(bits=0), "weight bits must be >= 2"),
    (lambda: InputConfig(bits=0), "input bits must be >= 1"),
    (lambda: ADCConfig(bits=0), "ADC bits must be >= 1"),
    (lambda: CellConfig(bits_per_cell=0), "bits_per_cell must be >= 1"),
    (lambda: CrossbarGeometry(128, 128, 7), "fragment_rows \\(7\\) must divide"),
    (lambda: CellConfig(g_on_siemens=1e-6, g_off_siemens=1e-4), "must be < g_on_siemens"),
    (lambda: CellConfig(g_on_siemens=1e-6, g_off_siemens=1e-6), "must be < g_on_siemens"),
    (lambda: CellConfig.from_resistance(1e4, 1e3), "must be < g_on_siemens"),
    (lambda: DeviceConfig(variation_sigma=-0.1), "variation_sigma must be >= 0"),
    (lambda: DeviceConfig(read_noise_sigma=-1.0), "read_noise_sigma must be >= 0"),
    (lambda: DeviceConfig(stuck_on_rate=1.5), "stuck_on_rate must be <= 1"),
    (lambda: DeviceConfig(stuck_on_rate=0.6, stuck_off_rate=0.6), "must be <= 1"),
    (lambda: DeviceConfig(variation="uniform"), "variation must be one of"),
    (lambda: DeviceConfig(variation_sigma=float("nan")), "must be finite"),
    (lambda: ADCConfig(noise_lsb=-1.0), "noise_lsb must be >= 0"),
    (lambda: ADCConfig(range="auto"), "ADC range must be one of"),
    (lambda: MappingConfig(scheme="bipolar"), "mapping scheme must be one of"),
    (lambda: MappingConfig(scheme="polarized", flip_encoding=True), "offset"),
    (lambda: InputConfig(bits=8, signed=True, dac_bits=2), "dac_bits == 1"),
    (lambda: rx.preset("newton"), "unknown preset 'newton'; known presets"),
    (lambda: rx.preset("forms", fragment_rows=6), "power of two"),
    (lambda: rx.preset("isaac", fragment_rows=8), "FORMS-only"),
    (lambda: CrossbarConfig(dtype="float16"), "dtype must be one of"),
    (lambda: CrossbarConfig(geometry=CrossbarGeometry(8, 2, 8)), "slice columns"),
])
def test_bad_configuration_raises_value_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="must be an int"):
        WeightConfig(bits=8.0)
    with pytest.raises(TypeError, match="geometry must be a CrossbarGeometry"):
        CrossbarConfig(geometry=(128, 128, 8))
    with pytest.raises(TypeError, match="config must be a CrossbarConfig"):
        rx.map_weights(np.ones((4, 4)), "forms")


def test_configs_are_hashable_and_frozen():
    config = rx.preset("forms")
    assert hash(config) == hash(rx.preset("forms"))
    with pytest.raises(Exception):
        config.zero_skip = False


def test_presets_follow_the_papers():
    forms4, forms8, forms16 = (rx.preset("forms", fragment_rows=m) for m in (4, 8, 16))
    assert [c.adc.bits for c in (forms4, forms8, forms16)] == [3, 4, 5]  # log2(m) + 1
    assert forms8.weight_slices == 4 and forms8.inputs.bits == 16
    isaac = rx.preset("isaac")
    assert isaac.geometry.fragment_rows == 128 and isaac.adc.bits == 8
    assert isaac.mapping.flip_encoding and isaac.weight_slices == 8
    prime = rx.preset("prime")
    assert prime.mapping.scheme == "differential" and prime.cell.bits_per_cell == 4
    assert prime.inputs.dac_bits == 3 and prime.adc.bits == 6


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_and_inputs_rejected(bad):
    config = rx.preset("forms")
    w = np.ones((16, 4))
    w[3, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        rx.map_weights(w, config)
    layer = rx.program(rx.map_weights(np.ones((16, 4)), config))
    x = np.ones((2, 16))
    x[1, 5] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        rx.read(layer, x)


def test_wrong_shapes_rejected():
    config = rx.preset("forms")
    with pytest.raises(ValueError, match="2-D"):
        rx.map_weights(np.ones(16), config)
    with pytest.raises(ValueError, match="non-empty"):
        rx.map_weights(np.ones((0, 4)), config)
    layer = rx.program(rx.map_weights(np.ones((16, 4)), config))
    with pytest.raises(ValueError, match=r"shape \(batch, 16\)"):
        rx.read(layer, np.ones((2, 15)))
    with pytest.raises(ValueError, match=r"shape \(batch, 16\)"):
        rx.read(layer, np.ones(16))
    with pytest.raises(TypeError, match="ProgrammedLayer"):
        rx.read(np.ones((16, 4)), np.ones((2, 16)))


def test_float64_needs_x64():
    with pytest.raises(ValueError, match="jax_enable_x64"):
        rx.map_weights(np.ones((4, 4)), rx.preset("forms").replace(dtype="float64"))
