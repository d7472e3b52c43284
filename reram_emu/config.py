"""Configuration of an emulated ReRAM crossbar accelerator.

Every configuration is a frozen, validated dataclass, so ``jax.jit`` can take it as a static
argument. The numbers that a sweep varies (device-variation sigma, read noise, stuck-at rates,
ADC noise and offset) can also be passed as traced arrays through :class:`NoiseParameters`, so
that ``jax.vmap`` over them does not recompile per value.

Units: conductances in siemens, resistances in ohms, voltages in volts. ADC noise and offset are
in units of the ADC's least significant bit (LSB). Column currents are expressed in *level
units* inside the pipeline: one level unit is the current of one conductance step
``(G_on - G_off) / (2**bits_per_cell - 1)`` at the read voltage, in amperes.

References: FORMS (Yuan et al., ISCA 2021), ISAAC (Shafiee et al., ISCA 2016),
PRIME (Chi et al., ISCA 2016); see ``shared/FIELD.md`` section 1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .circuit import WireConfig

__all__ = [
    "CrossbarGeometry",
    "CellConfig",
    "WeightConfig",
    "InputConfig",
    "ADCConfig",
    "MappingConfig",
    "DeviceConfig",
    "CrossbarConfig",
    "NoiseParameters",
    "WireConfig",
    "preset",
    "PRESETS",
]


def _check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_real(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                strict_minimum: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if strict_minimum and value <= minimum:
            raise ValueError(f"{name} must be > {minimum}, got {value}")
        if not strict_minimum and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class CrossbarGeometry:
    """Crossbar tile shape and fragment size.

    Attributes:
      rows: word lines per crossbar tile.
      columns: bit lines per crossbar tile available for weight slices (extra reference or unit
        columns that a mapping needs are added beside them, as ISAAC's 129th column).
      fragment_rows: m, the rows driven together for one ADC conversion (FORMS fragment). Must
        divide ``rows``. ISAAC and PRIME drive all rows: ``fragment_rows == rows``.
    """

    rows: int = 128
    columns: int = 128
    fragment_rows: int = 8

    def __post_init__(self):
        _check_int("rows", self.rows)
        _check_int("columns", self.columns)
        _check_int("fragment_rows", self.fragment_rows)
        if self.rows % self.fragment_rows:
            raise ValueError(
                f"fragment_rows ({self.fragment_rows}) must divide the crossbar rows "
                f"({self.rows}); allowed: the divisors of {self.rows}")

    @property
    def fragments_per_tile(self) -> int:
        return self.rows // self.fragment_rows


@dataclass(frozen=True)
class CellConfig:
    """Multi-level ReRAM cell.

    Attributes:
      bits_per_cell: bits stored per cell; the cell has ``2**bits_per_cell`` nominal levels.
      g_on_siemens: highest (on-state) conductance, siemens.
      g_off_siemens: lowest (off-state) conductance, siemens; 0 means an infinite on/off ratio.
      read_voltage_volts: word-line voltage of a '1' input bit (1-bit DAC), volts.
    """

    bits_per_cell: int = 2
    g_on_siemens: float = 1e-4
    g_off_siemens: float = 1e-6
    read_voltage_volts: float = 0.2

    def __post_init__(self):
        _check_int("bits_per_cell", self.bits_per_cell)
        if self.bits_per_cell > 8:
            raise ValueError(f"bits_per_cell must be <= 8, got {self.bits_per_cell}")
        _check_real("g_on_siemens", self.g_on_siemens, 0.0, strict_minimum=True)
        _check_real("g_off_siemens", self.g_off_siemens, 0.0)
        if self.g_off_siemens >= self.g_on_siemens:
            raise ValueError(
                f"g_off_siemens ({self.g_off_siemens}) must be < g_on_siemens "
                f"({self.g_on_siemens}): the on/off ratio must exceed 1")
        _check_real("read_voltage_volts", self.read_voltage_volts, 0.0, strict_minimum=True)

    @classmethod
    def from_resistance(cls, r_on_ohms: float, r_off_ohms: float, **kwargs) -> "CellConfig":
        """Build from on/off resistances in ohms (``r_off_ohms=inf`` for no leakage)."""
        _check_real("r_on_ohms", r_on_ohms, 0.0, strict_minimum=True)
        if not (isinstance(r_off_ohms, (int, float)) and r_off_ohms > 0):
            raise ValueError(f"r_off_ohms must be > 0, got {r_off_ohms!r}")
        g_off = 0.0 if math.isinf(r_off_ohms) else 1.0 / r_off_ohms
        return cls(g_on_siemens=1.0 / r_on_ohms, g_off_siemens=g_off, **kwargs)

    @property
    def max_level(self) -> int:
        """Highest nominal level index, ``2**bits_per_cell - 1``."""
        return 2 ** self.bits_per_cell - 1

    @property
    def level_step_siemens(self) -> float:
        """Conductance of one level step, ``(G_on - G_off) / max_level``, siemens."""
        return (self.g_on_siemens - self.g_off_siemens) / self.max_level

    @property
    def off_in_levels(self) -> float:
        """G_off expressed in level steps (the per-active-row baseline), ``G_off / step``."""
        return self.g_off_siemens / self.level_step_siemens

    @property
    def level_current_amperes(self) -> float:
        """Current of one level unit at the read voltage, amperes."""
        return self.level_step_siemens * self.read_voltage_volts


@dataclass(frozen=True)
class WeightConfig:
    """Weight quantization.

    Attributes:
      bits: signed weight precision. Magnitudes use ``bits - 1`` bits for the polarized and
        differential mappings (sign kept apart) and ``bits`` bits (offset binary) for the offset
        mapping.
      scale: ``"per_layer"`` (one scale) or ``"per_output_channel"`` (one scale per column).
    """

    bits: int = 8
    scale: str = "per_layer"

    def __post_init__(self):
        _check_int("weight bits", self.bits, 2)
        if self.bits > 16:
            raise ValueError(f"weight bits must be <= 16, got {self.bits}")
        _check_choice("weight scale", self.scale, ("per_layer", "per_output_channel"))


@dataclass(frozen=True)
class InputConfig:
    """Input (activation) encoding, fed bit-serially, least significant digit first.

    Attributes:
      bits: input precision.
      signed: False for unsigned activations (e.g. after ReLU); True for two's complement, whose
        most significant cycle is subtracted digitally (requires ``dac_bits == 1``).
      dac_bits: bits per input cycle (1: a 1-bit DAC, one bit plane per cycle; PRIME uses 3).
      scale: ``"per_vector"`` (each input vector scaled by its own max magnitude) or
        ``"per_batch"`` (one scale for the whole batch). A fixed scale can be passed to ``read``.
    """

    bits: int = 8
    signed: bool = False
    dac_bits: int = 1
    scale: str = "per_vector"

    def __post_init__(self):
        _check_int("input bits", self.bits)
        if self.bits > 24:
            raise ValueError(f"input bits must be <= 24, got {self.bits}")
        if not isinstance(self.signed, bool):
            raise TypeError(f"signed must be a bool, got {self.signed!r}")
        _check_int("dac_bits", self.dac_bits)
        if self.dac_bits > self.bits:
            raise ValueError(f"dac_bits ({self.dac_bits}) must be <= input bits ({self.bits})")
        if self.signed and self.dac_bits != 1:
            raise ValueError("signed inputs need dac_bits == 1 (two's complement bit-serial)")
        if self.signed and self.bits < 2:
            raise ValueError("signed inputs need at least 2 bits")
        _check_choice("input scale", self.scale, ("per_vector", "per_batch"))

    @property
    def cycles(self) -> int:
        """Input cycles per full read, ``ceil(bits / dac_bits)``."""
        return -(-self.bits // self.dac_bits)

    @property
    def max_digit(self) -> int:
        """Largest DAC level, ``2**dac_bits - 1``."""
        return 2 ** self.dac_bits - 1


@dataclass(frozen=True)
class ADCConfig:
    """Analog-to-digital converter of each fragment's column (or column pair) current.

    Attributes:
      bits: resolution. Codes are ``0 .. 2**bits - 1`` (signed ``-2**(bits-1) .. 2**(bits-1)-1``
        for the differential mapping, whose analog difference can be negative).
      range: how the LSB is chosen.
        ``"worst_case"``: the smallest power-of-two LSB (in level units, at least 1) whose full
          scale covers the fragment's worst-case column sum; nothing clips, resolution drops.
        ``"fixed"``: full scale ``full_scale_levels`` (default ``2**bits - 1``, i.e. an LSB of one
          level): sums above it clip.
        ``"calibrated"``: the LSB is set from data by :func:`reram_emu.calibrate_adc` on the
          programmed layer; until then the layer cannot be read (a ValueError outside ``jit``,
          NaN outputs inside it), never silently at some other range.
      full_scale_levels: full scale in level units for ``"fixed"``.
      clip: saturate codes at the ends of the range (False: an unbounded ADC, for studies).
      noise_lsb: standard deviation of Gaussian input-referred noise per conversion, in LSB.
      offset_lsb: constant input-referred offset, in LSB.
    """

    bits: int = 4
    range: str = "worst_case"
    full_scale_levels: float | None = None
    clip: bool = True
    noise_lsb: float = 0.0
    offset_lsb: float = 0.0

    def __post_init__(self):
        _check_int("ADC bits", self.bits)
        if self.bits > 24:
            raise ValueError(f"ADC bits must be <= 24, got {self.bits}")
        _check_choice("ADC range", self.range, ("worst_case", "fixed", "calibrated"))
        if self.full_scale_levels is not None:
            _check_real("full_scale_levels", self.full_scale_levels, 0.0, strict_minimum=True)
            if self.range != "fixed":
                raise ValueError("full_scale_levels is only used with range='fixed'")
        if not isinstance(self.clip, bool):
            raise TypeError(f"clip must be a bool, got {self.clip!r}")
        _check_real("ADC noise_lsb", self.noise_lsb, 0.0)
        _check_real("ADC offset_lsb", self.offset_lsb)


@dataclass(frozen=True)
class MappingConfig:
    """How signed weights become conductances.

    Attributes:
      scheme: ``"polarized"`` (FORMS: one sign per fragment, magnitudes stored, the sign applied
        by the digital accumulator), ``"differential"`` (PRIME: a positive and a negative
        crossbar, subtracted in analog before the ADC) or ``"offset"`` (ISAAC: ``w + 2**(b-1)``
        stored unsigned, a unit column counts the active inputs and the offset is subtracted
        digitally).
      flip_encoding: ISAAC's encoding: a slice column whose level sum in a fragment exceeds half
        the maximum is stored flipped (``max_level - level``), halving the ADC range (offset only).
      on_violation: polarized only: weights whose sign differs from their fragment's sign are
        ``"error"`` (rejected, the message counts the fragments) or ``"project"`` (zeroed, with
        the damage reported).
      baseline: how the G_off baseline (a '0' still conducts G_off) is removed:
        ``"reference_column"``: each tile has a reference column of G_off cells driven by the same
          inputs whose current is subtracted in analog before the ADC (exact when ideal; its cells
          get the same variation and faults). Not used by the differential scheme, whose
          subtraction cancels the baseline itself.
        ``"digital"``: the ADC converts the raw current and the digital back end subtracts
          ``active inputs x G_off / step`` (nominal) after conversion.
    """

    scheme: str = "polarized"
    flip_encoding: bool = False
    on_violation: str = "error"
    baseline: str = "reference_column"

    def __post_init__(self):
        _check_choice("mapping scheme", self.scheme, ("polarized", "differential", "offset"))
        if not isinstance(self.flip_encoding, bool):
            raise TypeError(f"flip_encoding must be a bool, got {self.flip_encoding!r}")
        if self.flip_encoding and self.scheme != "offset":
            raise ValueError("flip_encoding applies to the offset (ISAAC) scheme only")
        _check_choice("on_violation", self.on_violation, ("error", "project"))
        _check_choice("baseline", self.baseline, ("reference_column", "digital"))


@dataclass(frozen=True)
class DeviceConfig:
    """Device non-idealities (all off by default).

    Attributes:
      variation: ``"lognormal"`` (``G = G_target * exp(sigma * n)``, median preserved) or
        ``"gaussian"`` (``G = G_target * (1 + sigma * n)``, floored at 0 siemens).
      variation_sigma: device-to-device relative spread, drawn once at programming.
      read_noise_sigma: relative Gaussian noise of each cell's conductance, drawn anew per read.
      stuck_on_rate: fraction of cells stuck at G_on.
      stuck_off_rate: fraction of cells stuck at G_off.
      programmable_levels: number of evenly spaced conductance states between G_off and G_on the
        device can be programmed to (None: any nominal level is reached exactly).
    """

    variation: str = "lognormal"
    variation_sigma: float = 0.0
    read_noise_sigma: float = 0.0
    stuck_on_rate: float = 0.0
    stuck_off_rate: float = 0.0
    programmable_levels: int | None = None

    def __post_init__(self):
        _check_choice("variation", self.variation, ("lognormal", "gaussian"))
        _check_real("variation_sigma", self.variation_sigma, 0.0)
        _check_real("read_noise_sigma", self.read_noise_sigma, 0.0)
        _check_real("stuck_on_rate", self.stuck_on_rate, 0.0, 1.0)
        _check_real("stuck_off_rate", self.stuck_off_rate, 0.0, 1.0)
        if self.stuck_on_rate + self.stuck_off_rate > 1.0:
            raise ValueError("stuck_on_rate + stuck_off_rate must be <= 1")
        if self.programmable_levels is not None:
            _check_int("programmable_levels", self.programmable_levels, 2)


class NoiseParameters(NamedTuple):
    """The numeric non-idealities as a pytree of (possibly traced) scalars.

    Passing one of these to ``program``/``read`` overrides the values in the configuration and
    compiles every noise path in, so ``jax.vmap`` over any field runs without recompiling.
    ``wire_row_ohms`` and ``wire_col_ohms`` are the word-line and bit-line wire resistances per
    cell segment (ohms), used when the configuration has wires (``CrossbarConfig.wires``) and
    ignored otherwise; None keeps the configured value. :meth:`with_wire_resistance` sets both.
    Values are checked (finite, sigmas >= 0, rates in [0, 1]) where they are concrete
    (:func:`reram_emu.checks.check_noise`); traced values are the caller's responsibility.
    """

    variation_sigma: Any
    read_noise_sigma: Any
    stuck_on_rate: Any
    stuck_off_rate: Any
    adc_noise_lsb: Any
    adc_offset_lsb: Any
    wire_row_ohms: Any = None
    wire_col_ohms: Any = None

    def with_wire_resistance(self, ohms) -> "NoiseParameters":
        """A copy whose word-line and bit-line wires both have ``ohms`` per segment."""
        return self._replace(wire_row_ohms=ohms, wire_col_ohms=ohms)


@dataclass(frozen=True)
class CrossbarConfig:
    """Everything that defines an emulated crossbar layer.

    Attributes:
      zero_skip: FORMS input zero-skipping: a fragment stops once the remaining input bits of all
        its rows are zero; skipped cycles are not converted (no ADC noise) and are counted.
      chunk_size: batch rows processed together in the read kernel (memory / speed trade-off;
        results do not depend on it).
      wires: wire parasitics (IR drop, :mod:`reram_emu.circuit`); None: ideal wires.
      dtype: ``"float32"`` (default) or ``"float64" (needs ``jax_enable_x64``; integer-exact
        up to 2**53 instead of 2**24, e.g. for ISAAC's 16-bit weights and inputs).
    """

    geometry: CrossbarGeometry = field(default_factory=CrossbarGeometry)
    cell: CellConfig = field(default_factory=CellConfig)
    weights: WeightConfig = field(default_factory=WeightConfig)
    inputs: InputConfig = field(default_factory=InputConfig)
    adc: ADCConfig = field(default_factory=ADCConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    zero_skip: bool = True
    chunk_size: int = 64
    dtype: str = "float32"
    wires: WireConfig | None = None

    def __post_init__(self):
        for name, cls in [("geometry", CrossbarGeometry), ("cell", CellConfig),
                          ("weights", WeightConfig), ("inputs", InputConfig), ("adc", ADCConfig),
                          ("mapping", MappingConfig), ("device", DeviceConfig)]:
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got "
                                f"{type(getattr(self, name)).__name__}")
        if not isinstance(self.zero_skip, bool):
            raise TypeError(f"zero_skip must be a bool, got {self.zero_skip!r}")
        _check_int("chunk_size", self.chunk_size)
        _check_choice("dtype", self.dtype, ("float32", "float64"))
        if self.wires is not None and not isinstance(self.wires, WireConfig):
            raise TypeError(f"wires must be a WireConfig or None, got {type(self.wires).__name__}")
        if self.mapping.scheme == "differential" and self.adc.bits < 2:
            raise ValueError(f"the differential mapping needs a signed ADC of at least 2 bits "
                             f"(sign and magnitude), got ADCConfig(bits={self.adc.bits})")
        if self.weight_slices * self.columns_per_slice > self.geometry.columns:
            raise ValueError(
                f"one weight needs {self.weight_slices} slice columns but the crossbar has "
                f"{self.geometry.columns} columns")

    def replace(self, **changes) -> "CrossbarConfig":
        """A copy with some top-level fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    @property
    def magnitude_bits(self) -> int:
        """Bits stored in cells per weight (sign apart, or offset binary for ISAAC)."""
        if self.mapping.scheme == "offset":
            return self.weights.bits
        return self.weights.bits - 1

    @property
    def weight_slices(self) -> int:
        """Cells (slices, physical columns) per weight magnitude."""
        return -(-self.magnitude_bits // self.cell.bits_per_cell)

    @property
    def columns_per_slice(self) -> int:
        return 1

    @property
    def weights_per_tile(self) -> int:
        """Logical output columns per crossbar tile (slices of one weight side by side)."""
        return self.geometry.columns // self.weight_slices

    @property
    def float_dtype(self):
        """The floating dtype of the pipeline; float64 only when JAX's x64 mode is on."""
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError("dtype='float64' needs jax.config.update('jax_enable_x64', True)")
        return jnp.dtype(self.dtype)

    def noise_parameters(self) -> NoiseParameters:
        """The configured numeric non-idealities as scalars of the pipeline's dtype."""
        d, a = self.device, self.adc
        f = lambda v: jnp.asarray(v, self.float_dtype)  # noqa: E731
        row, col = ((self.wires.r_wire_row_ohms, self.wires.r_wire_col_ohms)
                    if self.wires is not None else (0.0, 0.0))
        return NoiseParameters(f(d.variation_sigma), f(d.read_noise_sigma), f(d.stuck_on_rate),
                               f(d.stuck_off_rate), f(a.noise_lsb), f(a.offset_lsb), f(row),
                               f(col))


def _forms(fragment_rows: int = 8) -> CrossbarConfig:
    # FORMS (ISCA 2021): 128x128 crossbars, 2-bit cells, 8-bit weights in 4 adjacent cells,
    # 16-bit inputs fed 1 bit per cycle, fragment m rows, log2(m)+1-bit ADCs, zero-skipping.
    # The paper does not say how a fragment's worst-case sum (m x 3 levels: 24 at m = 8) fits
    # a log2(m)+1-bit ADC (15 codes). The default is the choice that keeps trained models
    # accurate: an LSB of one level, sums above full scale clip (range="fixed"; rare with
    # sparse bit planes and small weights). ADCConfig(range="worst_case") is the alternative
    # (an LSB of two levels: nothing clips, but every sum loses its lowest bit).
    adc_bits = int(math.log2(fragment_rows)) + 1
    return CrossbarConfig(
        geometry=CrossbarGeometry(128, 128, fragment_rows),
        cell=CellConfig(bits_per_cell=2),
        weights=WeightConfig(bits=8),
        inputs=InputConfig(bits=16),
        adc=ADCConfig(bits=adc_bits, range="fixed"),
        mapping=MappingConfig(scheme="polarized"),
        zero_skip=True,
    )


def _isaac() -> CrossbarConfig:
    # ISAAC (ISCA 2016): 128x128 crossbars, all 128 rows per conversion, 2-bit cells, 16-bit
    # weights over 8 cells, 16-bit inputs 1 bit per cycle, 8-bit ADC, offset encoding with a unit
    # column and the flip encoding that saves one ADC bit.
    return CrossbarConfig(
        geometry=CrossbarGeometry(128, 128, 128),
        cell=CellConfig(bits_per_cell=2),
        weights=WeightConfig(bits=16),
        inputs=InputConfig(bits=16),
        adc=ADCConfig(bits=8, range="worst_case"),
        mapping=MappingConfig(scheme="offset", flip_encoding=True),
        zero_skip=False,
    )


def _prime() -> CrossbarConfig:
    # PRIME (ISCA 2016): 256x256 crossbars, all rows driven, positive and negative crossbars
    # subtracted in analog, 4-bit cells (8-bit weights as two 4-bit cells), 3-bit input DAC
    # (6-bit inputs in two cycles), 6-bit sense-amplifier ADC. A column sums up to
    # 256 x 15 x 7 levels, so a 6-bit ADC at its worst-case range (an LSB of 1024 levels) reads
    # trained models at chance and one level per code clips most sums: the ADC range is
    # calibrated from data (calibrate_adc on the programmed layer) before the first read.
    return CrossbarConfig(
        geometry=CrossbarGeometry(256, 256, 256),
        cell=CellConfig(bits_per_cell=4),
        weights=WeightConfig(bits=9),
        inputs=InputConfig(bits=6, dac_bits=3),
        adc=ADCConfig(bits=6, range="calibrated"),
        mapping=MappingConfig(scheme="differential"),
        zero_skip=False,
    )


PRESETS = {"forms": _forms, "isaac": _isaac, "prime": _prime}


def preset(name: str, *, signed_inputs: bool = False, **overrides) -> CrossbarConfig:
    """A configuration that reproduces a paper's design: ``"forms"``, ``"isaac"`` or ``"prime"``.

    ``preset("forms", fragment_rows=4)`` gives FORMS at fragment 4 (with its 3-bit ADC);
    ``signed_inputs=True`` feeds two's complement inputs (bit-serial designs only: PRIME's
    3-bit DAC takes unsigned inputs); other keyword arguments replace top-level fields of
    :class:`CrossbarConfig`. Where a paper leaves a choice open the preset takes the one that
    keeps trained models accurate (see each design's comment; ``docs`` in the README).
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(CrossbarConfig)}
    unknown = sorted(set(overrides) - fields - {"fragment_rows"})
    if unknown:
        raise TypeError(f"preset() got unknown keyword(s) {unknown}; allowed: fragment_rows "
                        f"(FORMS), signed_inputs, and the CrossbarConfig fields {sorted(fields)}")
    if not isinstance(signed_inputs, bool):
        raise TypeError(f"signed_inputs must be a bool, got {signed_inputs!r}")
    if name == "forms":
        fragment_rows = overrides.pop("fragment_rows", 8)
        if fragment_rows not in (2, 4, 8, 16, 32, 64, 128) or isinstance(fragment_rows, bool):
            raise ValueError(f"FORMS fragment_rows must be a power of two <= 128, "
                             f"got {fragment_rows!r}")
        config = _forms(fragment_rows)
    else:
        if "fragment_rows" in overrides:
            raise ValueError(f"preset {name!r} drives all rows; fragment_rows is FORMS-only")
        config = PRESETS[name]()
    config = config.replace(**overrides) if overrides else config
    if signed_inputs:
        if config.inputs.dac_bits != 1:
            raise ValueError(
                f"signed_inputs needs a 1-bit DAC (two's complement, bit-serial); preset "
                f"{name!r} has dac_bits={config.inputs.dac_bits}. Pass inputs=InputConfig("
                f"bits={config.inputs.bits}, dac_bits=1, signed=True) to read it bit-serially")
        config = config.replace(inputs=dataclasses.replace(config.inputs, signed=True))
    return config
