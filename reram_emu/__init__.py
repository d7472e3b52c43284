"""reram_emu: a device-level emulator of analog ReRAM crossbar accelerators in JAX.

The data path, one module per step (lower modules never import higher ones):

``config`` -> ``quantization`` -> ``polarization`` -> ``mapping`` (weights to cell levels)
-> ``devices`` (programming, variation, faults, read noise) -> ``converters`` (ADC)
-> ``crossbar`` (the pipeline: program and read, with hardware counts).

Typical use::

    import jax, reram_emu as re
    config = re.preset("forms")
    layer = re.program(re.map_weights(weights, config), key=jax.random.key(0))
    outputs, counts = re.read(layer, inputs, key=jax.random.key(1))
"""

from . import _xla_flags

_xla_flags.apply_default()  # before JAX's CPU backend starts: see reram_emu/_xla_flags.py

from .config import (ADCConfig, CellConfig, CrossbarConfig, CrossbarGeometry, DeviceConfig,
                     InputConfig, MappingConfig, NoiseParameters, WeightConfig, preset)
from .crossbar import (ProgrammedLayer, ReadCounts, ReadResult, calibrate_adc,
                       effective_weights, program, read, read_integers)
from .mapping import MappedWeights, encode_weights, map_weights
from .polarization import fragment_signs, is_polarized, project_polarized

__version__ = "0.1.0"

__all__ = [
    "ADCConfig", "CellConfig", "CrossbarConfig", "CrossbarGeometry", "DeviceConfig",
    "InputConfig", "MappingConfig", "NoiseParameters", "WeightConfig", "preset",
    "ProgrammedLayer", "ReadCounts", "ReadResult", "program", "read", "read_integers",
    "calibrate_adc", "effective_weights",
    "MappedWeights", "encode_weights", "map_weights",
    "fragment_signs", "is_polarized", "project_polarized",
]
