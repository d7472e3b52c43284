"""Hardware cost model: what FORMS, ISAAC and PRIME spend per layer and per inference.

The emulator counts what the hardware does (input cycles per fragment, ADC conversions, with and
without zero-skipping, crossbars used). This module turns those counts into time, energy, area
and the papers' figures of merit: GOPs/(s mm^2), GOPs/W and frames per second.

Component parameters are data
------------------------------
A design is a :class:`DesignCost`: a *unit* (ISAAC's IMA, FORMS's MCU) holding
``crossbars_per_unit`` crossbars and a list of :class:`ComponentSpec` (ADCs, DACs, sample and
hold, arrays, shift-and-add, buffers), ``units_per_tile`` units plus tile-level components
(eDRAM, bus, router, ...) per tile, and ``tiles_per_chip`` tiles plus chip-level components
(off-chip links). Every component carries its count per unit, its *total* power (watts) and area
(mm^2) for that count, a frequency (hertz, converters only) and the table it comes from.
Presets: :func:`cost_preset` ``("forms", fragment_rows=m)``, ``("isaac")``, ``("prime")``; any
number can be overridden (:meth:`DesignCost.with_component`, :meth:`DesignCost.replace`).

Sources (cited per component in ``ComponentSpec.source``):

* ISAAC, Shafiee et al., ISCA 2016, Table 2 ("ISAAC parameters", 32 nm): per IMA 8 ADCs
  (8 bit, 1.2 GS/s, 16 mW, 0.0096 mm^2), 8x128 1-bit DACs (4 mW, 0.00017 mm^2), 8x128 S+H
  (10 uW, 0.00004 mm^2), 8 arrays of 128x128 2-bit cells (2.4 mW, 0.0002 mm^2), 4 S+A
  (0.2 mW, 0.00024 mm^2), IR 2 KB (1.24 mW, 0.0021 mm^2), OR 256 B (0.23 mW, 0.00077 mm^2);
  12 IMAs per tile (289 mW, 0.157 mm^2); per tile eDRAM 64 KB (20.7 mW, 0.083 mm^2), eDRAM-IMA
  bus (7 mW, 0.090 mm^2), router shared by 4 tiles (42 mW, 0.151 mm^2), 2 sigmoid units
  (0.52 mW, 0.0006 mm^2), S+A (0.05 mW, 0.00006 mm^2), max-pool (0.4 mW, 0.00024 mm^2), OR 3 KB
  (1.68 mW, 0.0032 mm^2); tile 330 mW, 0.372 mm^2; 168 tiles per chip (55.4 W, 62.5 mm^2) plus
  4 HyperTransport links (10.4 W, 22.88 mm^2). Section 3 of the paper states the ADC as
  1.28 GS/s (128 columns per 100 ns crossbar cycle); the table's 1.2 GS/s is the default here.
* FORMS, Yuan et al., ISCA 2021, per-MCU table (FIELD.md section 1): 32 ADCs of 4 bits at
  2.1 GHz, 15.2 mW in total, 9100 um^2 in total (about 0.23 pJ per conversion). The other MCU and
  tile components are not restated here: the preset takes ISAAC's (FORMS builds its MCU on
  ISAAC's IMA) and says so in each ``source``.
* PRIME, Chi et al., ISCA 2016, gives the organisation (256x256 mats, positive and negative
  arrays subtracted in analog, 6-bit reconfigurable sense amplifiers, 3-bit input drivers, 4-bit
  cells) but no per-component power/area table: the PRIME preset's numbers are ISAAC's
  components rescaled, every one marked ``assumed`` in its source. Treat PRIME figures as
  illustrative.

How time, energy and area follow from the counts
------------------------------------------------
* A conversion is one ADC sample: one fragment of m rows, one ADC input (slice column, or
  column pair for the differential scheme, or ISAAC's unit column), one input cycle. A crossbar
  position (a crossbar, or a positive/negative pair) converts at
  ``adcs_per_crossbar x f_adc`` samples/s: ISAAC 1 ADC per crossbar, FORMS 4 (32 per 8-crossbar
  MCU), PRIME (assumed) one sense-amp ADC per pair. The crossbar's analog settling is taken to be
  hidden behind the ADCs (sample and hold), as in ISAAC's pipeline.
* Energy: every component's table power is its power at full activity, so it is charged per
  conversion at ``power / (conversion rate of its unit or tile)``: the design's energy per
  conversion is ``tile power / tile conversion rate`` (the ADC's own share is
  ``ADC power / (count x frequency)``, 0.23 pJ for FORMS and 1.67 pJ for ISAAC). Skipped and
  pruned conversions therefore save their share of every component (optimistic for the tile's
  buffers and router, whose traffic does not shrink with zero-skipping; the per-component
  breakdown in :class:`CostResult` shows how much that is).
* Ops: 2 per multiply-accumulate of the *dense* layer (K x N per input vector, pruned weights
  included), whatever the operand precision: ISAAC's ops are 16-bit x 16-bit, FORMS's 8-bit
  weights x 16-bit inputs, PRIME's 8-bit x 6-bit. :attr:`DesignCost.precision` states it.
* ``gops_per_s_mm2`` is the throughput per area of a chip of these tiles whose ADCs are all kept
  busy (ISAAC replicates layers to balance its pipeline), ``ops / (conversions / tile conversion
  rate) / tile area``; ``gops_per_w`` is ``ops / energy``; ``frames_per_s`` is the same balanced
  chip (``tiles_per_chip`` tiles, or ``chip_tiles``) divided by the conversions of one frame.
  ``latency_s`` is one frame through a single copy of the weights, layers one after another,
  each layer's crossbars in parallel and the slowest crossbar setting the pace.
* Area: the crossbars a network occupies times the tile's area per crossbar (one copy of the
  weights); crossbars whose weights are all zero are not stored, weight fragments whose weights
  are all zero are neither stored nor converted (pruning).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from .config import CrossbarConfig, CrossbarGeometry, InputConfig, preset
from .converters import worst_case_input, worst_case_lsb_levels
from .mapping import ColumnLayout, column_layout
from .polarization import fragment_signs, project_polarized
from .quantization import quantize_weights

__all__ = [
    "ComponentSpec", "DesignCost", "PeakEfficiency", "CostResult", "LayerWorkload",
    "cost_preset", "COST_PRESETS", "peak_efficiency", "fragment_cycles", "pruned_fragments",
    "layer_cost", "network_cost", "quantize_activations", "mapped_integers", "compare_designs",
    "zero_skip_savings", "plot_comparison", "FORMS_ZERO_SKIP_PAPER",
]

LEVELS = ("unit", "tile", "chip")

#: FORMS (ISCA 2021), ResNet-50, 16-bit inputs: average input cycles per fragment with
#: zero-skipping (FIELD.md section 1): fragment 4 needs 10.7 of 16 (33 % saved), fragment 128
#: needs 15 (6 % saved).
FORMS_ZERO_SKIP_PAPER = {4: {"cycles": 10.7, "saved": 0.33}, 128: {"cycles": 15.0, "saved": 0.06}}


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(frozen=True)
class ComponentSpec:
    """One kind of hardware component of a unit, tile or chip.

    Attributes:
      name: e.g. ``"ADC"``, ``"DAC"``, ``"eDRAM"``.
      count_per_unit: instances per unit (``level="unit"``), per tile or per chip (may be
        fractional: ISAAC's router is shared by 4 tiles, 0.25 per tile).
      power_watts: total power of the ``count_per_unit`` instances at full activity, watts.
      area_mm2: total area of the ``count_per_unit`` instances, mm^2.
      frequency_hertz: sample rate of one instance (converters), hertz; None otherwise.
      level: ``"unit"`` (per IMA/MCU), ``"tile"`` or ``"chip"``.
      source: where the numbers come from (table), or ``"assumed: ..."``.
    """

    name: str
    count_per_unit: float
    power_watts: float
    area_mm2: float
    frequency_hertz: float | None = None
    level: str = "unit"
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a component needs a name")
        _check_positive(f"{self.name}: count_per_unit", self.count_per_unit)
        _check_positive(f"{self.name}: power_watts", self.power_watts, allow_zero=True)
        _check_positive(f"{self.name}: area_mm2", self.area_mm2, allow_zero=True)
        if self.frequency_hertz is not None:
            _check_positive(f"{self.name}: frequency_hertz", self.frequency_hertz)
        if self.level not in LEVELS:
            raise ValueError(f"{self.name}: level must be one of {LEVELS}, got {self.level!r}")

    def replace(self, **changes) -> "ComponentSpec":
        return dataclasses.replace(self, **changes)

    @property
    def power_per_instance_watts(self) -> float:
        return self.power_watts / self.count_per_unit

    @property
    def area_per_instance_mm2(self) -> float:
        return self.area_mm2 / self.count_per_unit

    @property
    def energy_per_sample_joules(self) -> float:
        """Energy of one sample of one instance, ``power / (count x frequency)`` (converters)."""
        if self.frequency_hertz is None:
            raise ValueError(f"{self.name} has no frequency: energy per sample is undefined")
        return self.power_watts / (self.count_per_unit * self.frequency_hertz)


@dataclass(frozen=True)
class PeakEfficiency:
    """Peak figures of one tile (or chip) with every crossbar cell in use and no skipping."""

    ops_per_s: float
    power_watts: float
    area_mm2: float

    @property
    def gops_per_s_mm2(self) -> float:
        return self.ops_per_s / 1e9 / self.area_mm2

    @property
    def gops_per_w(self) -> float:
        return self.ops_per_s / 1e9 / self.power_watts


@dataclass(frozen=True)
class DesignCost:
    """A design's organisation and component table, plus the crossbar configuration it runs.

    Attributes:
      name: e.g. ``"FORMS m=8"``.
      config: the :class:`~reram_emu.config.CrossbarConfig` the design's crossbars implement
        (fragment rows, cell bits, weight and input bits, mapping, zero-skipping).
      unit_name: ``"IMA"`` (ISAAC), ``"MCU"`` (FORMS), ``"unit"``.
      crossbars_per_unit: physical crossbars per unit (both arrays of a differential pair count).
      units_per_tile, tiles_per_chip: the organisation.
      components: every :class:`ComponentSpec`, at unit, tile or chip level.
      adc_name: the component whose samples are the conversions.
      ops_per_mac: 2.
      notes: assumptions the tables do not state.
    """

    name: str
    config: CrossbarConfig
    unit_name: str
    crossbars_per_unit: int
    units_per_tile: int
    tiles_per_chip: int
    components: tuple[ComponentSpec, ...]
    adc_name: str = "ADC"
    ops_per_mac: int = 2
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.config, CrossbarConfig):
            raise TypeError(f"config must be a CrossbarConfig, got {type(self.config).__name__}")
        for attr in ("crossbars_per_unit", "units_per_tile", "tiles_per_chip", "ops_per_mac"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{attr} must be a positive int, got {value!r}")
        object.__setattr__(self, "components", tuple(self.components))
        names = [c.name for c in self.components]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"component names must be unique, repeated: {sorted(duplicates)}")
        adc = self.component(self.adc_name)
        if adc.frequency_hertz is None or adc.level != "unit":
            raise ValueError(f"the ADC component {self.adc_name!r} must be a unit-level "
                             f"component with a frequency")
        if self.config.mapping.scheme == "differential" and self.crossbars_per_unit % 2:
            raise ValueError("a differential design needs an even number of crossbars per unit")

    # ----------------------------------------------------------------- overrides
    def replace(self, **changes) -> "DesignCost":
        """A copy with top-level fields replaced."""
        return dataclasses.replace(self, **changes)

    def with_component(self, name: str, **changes) -> "DesignCost":
        """A copy with one component's fields replaced (e.g. ``power_watts=...``)."""
        self.component(name)
        return self.replace(components=tuple(c.replace(**changes) if c.name == name else c
                                             for c in self.components))

    def component(self, name: str) -> ComponentSpec:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no component {name!r}; it has "
                       f"{[c.name for c in self.components]}")

    # ----------------------------------------------------------------- derived
    @property
    def adc(self) -> ComponentSpec:
        return self.component(self.adc_name)

    @property
    def adc_energy_per_conversion_joules(self) -> float:
        """The ADC's own energy per conversion, ``power / (count x frequency)``."""
        return self.adc.energy_per_sample_joules

    @property
    def crossbars_per_tile(self) -> int:
        return self.crossbars_per_unit * self.units_per_tile

    @property
    def adcs_per_crossbar(self) -> float:
        return self.adc.count_per_unit / self.crossbars_per_unit

    @property
    def crossbars_per_position(self) -> int:
        """Physical crossbars behind one ADC input position (2 for a differential pair)."""
        return 2 if self.config.mapping.scheme == "differential" else 1

    @property
    def conversion_rate_per_position_hertz(self) -> float:
        """Conversions/s available to one crossbar (or differential pair)."""
        return self.adcs_per_crossbar * self.crossbars_per_position * self.adc.frequency_hertz

    @property
    def conversion_rate_per_tile_hertz(self) -> float:
        return self.adc.count_per_unit * self.adc.frequency_hertz * self.units_per_tile

    def _level_total(self, level: str, attr: str) -> float:
        return sum(getattr(c, attr) for c in self.components if c.level == level)

    @property
    def unit_power_watts(self) -> float:
        return self._level_total("unit", "power_watts")

    @property
    def unit_area_mm2(self) -> float:
        return self._level_total("unit", "area_mm2")

    @property
    def tile_power_watts(self) -> float:
        return self.units_per_tile * self.unit_power_watts + self._level_total("tile",
                                                                                "power_watts")

    @property
    def tile_area_mm2(self) -> float:
        return self.units_per_tile * self.unit_area_mm2 + self._level_total("tile", "area_mm2")

    @property
    def chip_power_watts(self) -> float:
        return self.tiles_per_chip * self.tile_power_watts + self._level_total("chip",
                                                                                "power_watts")

    @property
    def chip_area_mm2(self) -> float:
        return self.tiles_per_chip * self.tile_area_mm2 + self._level_total("chip", "area_mm2")

    @property
    def energy_per_conversion_joules(self) -> float:
        """All unit and tile components charged per conversion: tile power / tile rate."""
        return self.tile_power_watts / self.conversion_rate_per_tile_hertz

    def energy_per_conversion_breakdown(self) -> dict[str, float]:
        """Joules per conversion, per component (unit and tile levels)."""
        rate = self.conversion_rate_per_tile_hertz
        out = {}
        for c in self.components:
            if c.level == "unit":
                out[c.name] = c.power_watts * self.units_per_tile / rate
            elif c.level == "tile":
                out[c.name] = c.power_watts / rate
        return out

    @property
    def area_per_crossbar_mm2(self) -> float:
        """Tile area (units and tile components) per physical crossbar."""
        return self.tile_area_mm2 / self.crossbars_per_tile

    @property
    def adc_lsb_levels(self) -> float:
        """The ADC's LSB in cell levels with its worst-case range: 1 means every column sum is
        resolved exactly; more means the ADC is coarser than the analog sum (FORMS m=8: a
        fragment of 8 rows of 2-bit cells sums to 24, a 4-bit ADC codes 15)."""
        return worst_case_lsb_levels(self.config)

    @property
    def worst_case_column_sum_levels(self) -> float:
        return float(worst_case_input(self.config))

    @property
    def precision(self) -> str:
        return f"{self.config.weights.bits}-bit weights x {self.config.inputs.bits}-bit inputs"

    def macs_per_conversion(self) -> float:
        """Dense MACs one conversion contributes with every cell in use and no skipping:
        ``m rows / (slices x input cycles)`` times the share of ADC inputs that carry data
        (ISAAC's unit column is the 129th)."""
        config = self.config
        layout = column_layout(config, config.geometry.rows, config.weights_per_tile)
        data_share = layout.data_columns / layout.adc_inputs_per_tile
        return (config.geometry.fragment_rows * data_share
                / (config.weight_slices * config.inputs.cycles))

    def table(self) -> list[dict]:
        """The component table as rows (for reports)."""
        return [dataclasses.asdict(c) for c in self.components]


# --------------------------------------------------------------------------- presets

_ISAAC = "ISAAC (ISCA 2016) Table 2"
_FORMS = "FORMS (ISCA 2021) per-MCU table"


def _isaac_unit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec("ADC", 8, 16e-3, 0.0096, 1.2e9, "unit",
                      f"{_ISAAC}: IMA, ADC 8 bit, 1.2 GS/s, 8 per IMA, 16 mW, 0.0096 mm^2"),
        ComponentSpec("DAC", 8 * 128, 4e-3, 0.00017, None, "unit",
                      f"{_ISAAC}: IMA, DAC 1 bit, 8x128 per IMA, 4 mW, 0.00017 mm^2"),
        ComponentSpec("S+H", 8 * 128, 10e-6, 0.00004, None, "unit",
                      f"{_ISAAC}: IMA, sample and hold, 8x128, 10 uW, 0.00004 mm^2"),
        ComponentSpec("crossbar", 8, 2.4e-3, 0.0002, None, "unit",
                      f"{_ISAAC}: IMA, memristor array 128x128 2 bit/cell, 8 per IMA, 2.4 mW, "
                      f"0.0002 mm^2"),
        ComponentSpec("S+A", 4, 0.2e-3, 0.00024, None, "unit",
                      f"{_ISAAC}: IMA, shift and add, 4 per IMA, 0.2 mW, 0.00024 mm^2"),
        ComponentSpec("IR", 1, 1.24e-3, 0.0021, None, "unit",
                      f"{_ISAAC}: IMA, input register 2 KB, 1.24 mW, 0.0021 mm^2"),
        ComponentSpec("OR", 1, 0.23e-3, 0.00077, None, "unit",
                      f"{_ISAAC}: IMA, output register 256 B, 0.23 mW, 0.00077 mm^2"),
    ]


def _isaac_tile_components(source_prefix: str = "") -> list[ComponentSpec]:
    p = source_prefix
    return [
        ComponentSpec("eDRAM", 1, 20.7e-3, 0.083, None, "tile",
                      f"{p}{_ISAAC}: tile, eDRAM buffer 64 KB, 20.7 mW, 0.083 mm^2"),
        ComponentSpec("eDRAM-IMA bus", 1, 7e-3, 0.090, None, "tile",
                      f"{p}{_ISAAC}: tile, bus 384 wires, 7 mW, 0.090 mm^2"),
        ComponentSpec("router", 0.25, 42e-3 / 4, 0.151 / 4, None, "tile",
                      f"{p}{_ISAAC}: tile, router 42 mW, 0.151 mm^2, shared by 4 tiles"),
        ComponentSpec("sigmoid", 2, 0.52e-3, 0.0006, None, "tile",
                      f"{p}{_ISAAC}: tile, 2 sigmoid units, 0.52 mW, 0.0006 mm^2"),
        ComponentSpec("tile S+A", 1, 0.05e-3, 0.00006, None, "tile",
                      f"{p}{_ISAAC}: tile, shift and add, 0.05 mW, 0.00006 mm^2"),
        ComponentSpec("max-pool", 1, 0.4e-3, 0.00024, None, "tile",
                      f"{p}{_ISAAC}: tile, max-pool unit, 0.4 mW, 0.00024 mm^2"),
        ComponentSpec("tile OR", 1, 1.68e-3, 0.0032, None, "tile",
                      f"{p}{_ISAAC}: tile, output register 3 KB, 1.68 mW, 0.0032 mm^2"),
    ]


def _hyper_transport(source_prefix: str = "") -> ComponentSpec:
    return ComponentSpec("HyperTransport", 4, 10.4, 22.88, None, "chip",
                         f"{source_prefix}{_ISAAC}: chip, 4 HyperTransport links, 10.4 W, "
                         f"22.88 mm^2")


def _isaac_design() -> DesignCost:
    return DesignCost(
        name="ISAAC", config=preset("isaac"), unit_name="IMA", crossbars_per_unit=8,
        units_per_tile=12, tiles_per_chip=168,
        components=tuple(_isaac_unit_components() + _isaac_tile_components()
                         + [_hyper_transport()]),
        notes=(
            "ADC at the table's 1.2 GS/s; ISAAC's text uses 1.28 GS/s (128 columns per 100 ns).",
            "One ADC per crossbar (8 per IMA of 8 crossbars), all 128 rows per conversion, plus "
            "the unit column (129 conversions per crossbar read).",
            "Ops are 16-bit weight x 16-bit input MACs x 2.",
        ))


def _forms_design(fragment_rows: int = 8, adc_bit_scaling: float = 2.0,
                  scale_shift_add: bool = True) -> DesignCost:
    config = preset("forms", fragment_rows=fragment_rows)
    bits = config.adc.bits
    factor = adc_bit_scaling ** (bits - 4)
    adc_source = (f"{_FORMS}: 32 ADCs of 4 bit at 2.1 GHz per MCU, 15.2 mW and 9100 um^2 in "
                  f"total (FIELD.md section 1)")
    if bits != 4:
        adc_source = (f"assumed: {bits}-bit ADC for fragment {fragment_rows} = the paper's 4-bit "
                      f"ADC scaled by {adc_bit_scaling}^({bits}-4) in power and area at the same "
                      f"count and 2.1 GHz; {adc_source}")
    adc = ComponentSpec("ADC", 32, 15.2e-3 * factor, 0.0091 * factor, 2.1e9, "unit", adc_source)
    isaac = {c.name: c for c in _isaac_unit_components()}
    borrowed = "assumed as ISAAC's IMA: "
    components = [adc]
    for name in ("DAC", "S+H", "crossbar"):
        c = isaac[name]
        components.append(c.replace(source=borrowed + c.source))
    sa = isaac["S+A"]
    if scale_shift_add:
        # ISAAC: 4 S+A per 8 ADCs at 1.2 GS/s; FORMS produces 32 x 2.1 G samples/s.
        ratio = (32 * 2.1e9) / (8 * 1.2e9)
        sa = sa.replace(count_per_unit=4 * ratio, power_watts=sa.power_watts * ratio,
                        area_mm2=sa.area_mm2 * ratio,
                        source=f"assumed: ISAAC's S+A scaled by the ADC sample rate "
                               f"(x{ratio:.1f}); {sa.source}")
    else:
        sa = sa.replace(source=borrowed + sa.source)
    components.append(sa)
    for name in ("IR", "OR"):
        c = isaac[name]
        components.append(c.replace(source=borrowed + c.source))
    # The sign indicator: one bit per fragment and weight column of every crossbar.
    sign_bytes = (128 // fragment_rows) * config.weights_per_tile * 8 / 8
    ir = isaac["IR"]
    share = sign_bytes / 2048
    components.append(ComponentSpec(
        "sign array", 1, ir.power_watts * share, ir.area_mm2 * share, None, "unit",
        f"assumed: {int(sign_bytes)} B of fragment signs per MCU, priced as ISAAC's 2 KB IR per "
        f"byte ({_ISAAC})"))
    components += _isaac_tile_components(borrowed)
    components.append(_hyper_transport(borrowed))
    return DesignCost(
        name=f"FORMS m={fragment_rows}", config=config, unit_name="MCU", crossbars_per_unit=8,
        units_per_tile=12, tiles_per_chip=168, components=tuple(components),
        notes=(
            "Per-MCU ADCs from the FORMS table (FIELD.md section 1); 8 crossbars per MCU, "
            "12 MCUs per tile and 168 tiles per chip, and every non-ADC component, are ISAAC's "
            "(assumed: the FORMS table is not restated here).",
            "4 ADCs per crossbar; one conversion covers one fragment of m rows.",
            "Ops are 8-bit weight x 16-bit input MACs x 2.",
        ))


def _prime_design() -> DesignCost:
    config = preset("prime")
    isaac = {c.name: c for c in _isaac_unit_components()}
    adc8 = isaac["ADC"]
    # One 6-bit sense-amp ADC per positive/negative pair: 4 per unit of 8 arrays.
    per_adc_8bit = adc8.power_per_instance_watts
    walden = 2.0 ** (6 - 8)
    assumed = "assumed (PRIME gives no component table): "
    components = [
        ComponentSpec("ADC", 4, 4 * per_adc_8bit * walden, 4 * adc8.area_per_instance_mm2 * walden,
                      1.2e9, "unit",
                      assumed + "6-bit sense-amp ADC, one per positive/negative pair of 256x256 "
                      "mats (PRIME), priced as ISAAC's 8-bit ADC x 2^(6-8) at 1.2 GS/s"),
        ComponentSpec("DAC", 4 * 256, 4 * 256 * isaac["DAC"].power_per_instance_watts * 4,
                      4 * 256 * isaac["DAC"].area_per_instance_mm2 * 4, None, "unit",
                      assumed + "3-bit word-line drivers (PRIME), one per row of a pair, priced "
                      "as ISAAC's 1-bit DAC x 2^(3-1)"),
        ComponentSpec("S+H", 4 * 256, 4 * 256 * isaac["S+H"].power_per_instance_watts,
                      4 * 256 * isaac["S+H"].area_per_instance_mm2, None, "unit",
                      assumed + "one S+H per column pair, ISAAC's per-instance numbers"),
        ComponentSpec("crossbar", 8, 8 * 4 * isaac["crossbar"].power_per_instance_watts,
                      8 * 4 * isaac["crossbar"].area_per_instance_mm2, None, "unit",
                      assumed + "8 mats of 256x256 4-bit cells, ISAAC's 128x128 array x 4 "
                      "(cells)"),
        ComponentSpec("S+A", 2, 2 * isaac["S+A"].power_per_instance_watts,
                      2 * isaac["S+A"].area_per_instance_mm2, None, "unit",
                      assumed + "ISAAC's S+A scaled by the ADC sample rate (x0.5)"),
        isaac["IR"].replace(source=assumed + isaac["IR"].source),
        isaac["OR"].replace(source=assumed + isaac["OR"].source),
    ]
    components += _isaac_tile_components(assumed)
    components.append(_hyper_transport(assumed))
    return DesignCost(
        name="PRIME", config=config, unit_name="unit", crossbars_per_unit=8, units_per_tile=12,
        tiles_per_chip=168, components=tuple(components),
        notes=(
            "PRIME's organisation (256x256 mats, differential pairs subtracted before a 6-bit "
            "sense amplifier, 3-bit inputs in 2 cycles, 4-bit cells) is the paper's; every "
            "power, area and rate is assumed (ISAAC's components rescaled): illustrative only.",
            "Ops are 8-bit weight x 6-bit input MACs x 2; a 6-bit ADC cannot resolve a 256-row "
            "column sum exactly (PRIME accepts the precision loss).",
        ))


COST_PRESETS = {"forms": _forms_design, "isaac": _isaac_design, "prime": _prime_design}


def cost_preset(name: str, fragment_rows: int | None = None, *, adc_bit_scaling: float = 2.0,
                scale_shift_add: bool = True, components: Mapping[str, Mapping] | None = None,
                **overrides) -> DesignCost:
    """A design's cost model: ``"forms"`` (``fragment_rows`` 2..128, default 8), ``"isaac"``,
    ``"prime"``.

    FORMS only: ``adc_bit_scaling`` is the power and area factor per ADC bit away from the
    paper's 4-bit ADC (2.0: Walden figure of merit) for fragments other than 8;
    ``scale_shift_add`` scales ISAAC's shift-and-add units with the ADC sample rate.
    ``components={"ADC": {"power_watts": 0.01}}`` overrides component fields; other keyword
    arguments replace top-level :class:`DesignCost` fields (e.g. ``tiles_per_chip=64``).
    """
    if name not in COST_PRESETS:
        raise ValueError(f"unknown cost preset {name!r}; known: {sorted(COST_PRESETS)}")
    if name == "forms":
        design = _forms_design(8 if fragment_rows is None else fragment_rows, adc_bit_scaling,
                               scale_shift_add)
    else:
        if fragment_rows is not None:
            raise ValueError(f"preset {name!r} drives all rows; fragment_rows is FORMS-only")
        design = COST_PRESETS[name]()
    for component, changes in (components or {}).items():
        design = design.with_component(component, **changes)
    return design.replace(**overrides) if overrides else design


def peak_efficiency(design: DesignCost, level: str = "tile") -> PeakEfficiency:
    """Peak ops/s, power and area of one tile (``"tile"``) or the chip (``"chip"``, off-chip
    links included), every cell in use, no skipping."""
    if level not in ("tile", "chip"):
        raise ValueError(f"level must be 'tile' or 'chip', got {level!r}")
    ops = (design.conversion_rate_per_tile_hertz * design.macs_per_conversion()
           * design.ops_per_mac)
    if level == "tile":
        return PeakEfficiency(ops, design.tile_power_watts, design.tile_area_mm2)
    return PeakEfficiency(ops * design.tiles_per_chip, design.chip_power_watts,
                          design.chip_area_mm2)


# --------------------------------------------------------------------------- counting


def _bit_length(values: np.ndarray) -> np.ndarray:
    """Significant bits of non-negative integers (0 for 0), exact below 2**53."""
    return np.where(values > 0, np.frexp(values.astype(np.float64))[1], 0).astype(np.int64)


def fragment_cycles(x_int, config: CrossbarConfig) -> np.ndarray:
    """Input cycles every fragment of every input vector needs with zero-skipping.

    ``x_int`` (V, K) integer inputs (as :func:`reram_emu.quantization.quantize_inputs` gives)
    -> (V, F) int64, K zero-padded to ``F x m``. The same rule as
    :func:`reram_emu.quantization.effective_cycles` (the largest effective width among the
    fragment's inputs, in DAC cycles; signed inputs keep one sign bit), in NumPy so that large
    activation sets cost no compilation (the tests check the two agree).
    """
    x = np.asarray(x_int)
    if x.ndim != 2:
        raise ValueError(f"x_int must be (vectors, in_features), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"x_int must hold integers, got dtype {x.dtype}")
    m = config.geometry.fragment_rows
    fragments = -(-x.shape[1] // m)
    x = np.pad(x.astype(np.int64), ((0, 0), (0, fragments * m - x.shape[1])))
    if config.inputs.signed:
        magnitude = np.where(x < 0, ~x, x)
        width = np.where(x == 0, 0, _bit_length(magnitude) + 1)
    else:
        if np.any(x < 0):
            raise ValueError("unsigned inputs must be >= 0")
        width = _bit_length(x)
    cycles = -(-width // config.inputs.dac_bits)
    return cycles.reshape(x.shape[0], fragments, m).max(axis=-1)


def pruned_fragments(integer_weights, config: CrossbarConfig) -> np.ndarray:
    """(F, N) bool: weight fragments (m rows of one output column) whose weights are all zero.

    Such a fragment's cells need not be stored and its slice columns need not be converted.
    Counted on the quantized integer weights (``MappedWeights.integer_weights``), so weights that
    round to zero count as pruned.
    """
    w = np.asarray(integer_weights)
    if w.ndim != 2:
        raise ValueError(f"integer_weights must be (in_features, out_features), got {w.shape}")
    m = config.geometry.fragment_rows
    fragments = -(-w.shape[0] // m)
    w = np.pad(w, ((0, fragments * m - w.shape[0]), (0, 0)))
    return np.all(w.reshape(fragments, m, w.shape[1]) == 0, axis=1)


@dataclass(frozen=True)
class CostResult:
    """What one layer (or a network: ``layers`` holds its layers) costs per frame (inference).

    Counts are per frame. ``*_without_skip`` are the same design with zero-skipping off (equal to
    the plain fields when the design does not skip). ``adc_conversions_dense`` has neither
    zero-skipping nor pruning.
    """

    name: str
    design: str
    ops: float
    input_vectors: float
    fragment_cycles: float
    fragment_cycles_without_skip: float
    adc_conversions: float
    adc_conversions_without_skip: float
    adc_conversions_dense: float
    crossbars: int
    crossbars_stored: int
    fragments: int
    fragments_pruned: int
    latency_s: float
    latency_without_skip_s: float
    energy_j: float
    energy_without_skip_j: float
    area_mm2: float
    gops_per_s_mm2: float
    gops_per_w: float
    frames_per_s: float
    frames_per_s_without_skip: float
    fits_on_chip: bool
    energy_breakdown_j: tuple[tuple[str, float], ...] = ()
    layers: tuple["CostResult", ...] = ()

    @property
    def cycles_saved_fraction(self) -> float:
        if self.fragment_cycles_without_skip == 0:
            return 0.0
        return 1.0 - self.fragment_cycles / self.fragment_cycles_without_skip

    @property
    def conversions_saved_fraction(self) -> float:
        """Conversions saved by zero-skipping and pruning together, against the dense count."""
        if self.adc_conversions_dense == 0:
            return 0.0
        return 1.0 - self.adc_conversions / self.adc_conversions_dense

    def summary(self) -> dict:
        """Scalar fields plus the derived fractions (no nested layers), for reports."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("layers", "energy_breakdown_j")}
        out["energy_breakdown_j"] = dict(self.energy_breakdown_j)
        out["cycles_saved_fraction"] = self.cycles_saved_fraction
        out["conversions_saved_fraction"] = self.conversions_saved_fraction
        return out


def _per_tile_inputs(layout: ColumnLayout, live: np.ndarray) -> np.ndarray:
    """(F, T) ADC inputs converted per fragment cycle: S per live weight fragment, plus the unit
    column of a tile whose fragment has any live weight (offset scheme)."""
    f, n = live.shape
    w = layout.weights_per_tile
    padded = np.zeros((f, layout.column_tiles * w), bool)
    padded[:, :n] = live
    per_tile = padded.reshape(f, layout.column_tiles, w).sum(axis=-1) * layout.slices
    if layout.unit_column is not None:
        per_tile = per_tile + (per_tile > 0)
    return per_tile.astype(np.float64)


def _crossbar_loads(cycle_sums: np.ndarray, inputs: np.ndarray, layout: ColumnLayout
                    ) -> np.ndarray:
    """Conversions on every crossbar position (row tile, column tile): (R, T)."""
    per_fragment = cycle_sums[:, None] * inputs  # (F, T)
    pad = layout.row_tiles * layout.fragments_per_tile - layout.fragments
    per_fragment = np.pad(per_fragment, ((0, pad), (0, 0)))
    return per_fragment.reshape(layout.row_tiles, layout.fragments_per_tile, -1).sum(axis=1)


def layer_cost(design: DesignCost, layout: ColumnLayout, counts=None, *, cycles=None,
               integer_weights=None, vectors_per_frame: float | None = None,
               config: CrossbarConfig | None = None, chip_tiles: float | None = None,
               name: str = "layer") -> CostResult:
    """The cost of one crossbar layer per frame.

    Args:
      design: the hardware (:func:`cost_preset`).
      layout: the layer's :class:`~reram_emu.mapping.ColumnLayout` (``MappedWeights.layout``, or
        :func:`~reram_emu.mapping.column_layout`); it must match ``config``.
      counts: optional :class:`~reram_emu.crossbar.ReadCounts` of a read of ``B`` vectors: its
        totals are used (padded columns included, conversions spread evenly over the crossbars
        for the latency). Give ``cycles`` instead for per-crossbar loads and pruning.
      cycles: optional (V, F) input cycles per vector and fragment with zero-skipping
        (:func:`fragment_cycles`); without ``cycles`` and ``counts``, every fragment runs every
        cycle. V sample vectors stand for the frame's ``vectors_per_frame``.
      integer_weights: optional (K, N) quantized weights: all-zero weight fragments are pruned
        (not converted) and all-zero crossbars not stored.
      vectors_per_frame: input vectors per frame (output pixels of a convolution; 1 for a dense
        layer); default V (or the batch of ``counts``).
      config: the crossbar configuration (default ``design.config``).
      chip_tiles: tiles of the chip for ``frames_per_s`` (default ``design.tiles_per_chip``;
        fractional values give every design the same chip area).
    """
    config = design.config if config is None else config
    if (layout.fragment_rows != config.geometry.fragment_rows
            or layout.scheme != config.mapping.scheme):
        raise ValueError(f"layout (fragment_rows={layout.fragment_rows}, scheme={layout.scheme!r}) "
                         f"does not match the configuration (fragment_rows="
                         f"{config.geometry.fragment_rows}, scheme={config.mapping.scheme!r})")
    if cycles is not None and counts is not None:
        raise ValueError("give either counts or cycles, not both")
    full = config.inputs.cycles
    skip = config.zero_skip
    f_total, n = layout.fragments, layout.out_features

    if integer_weights is not None:
        w = np.asarray(integer_weights)
        if w.shape != (layout.in_features, layout.out_features):
            raise ValueError(f"integer_weights must have shape "
                             f"{(layout.in_features, layout.out_features)}, got {w.shape}")
        pruned = pruned_fragments(w, config)
    else:
        pruned = np.zeros((f_total, n), bool)
    live_inputs = _per_tile_inputs(layout, ~pruned)
    dense_inputs = _per_tile_inputs(layout, np.ones((f_total, n), bool))

    if counts is not None:
        b = float(counts.fragment_cycles_without_skip) / (f_total * full)
        v = b if vectors_per_frame is None else float(vectors_per_frame)
        per = v / b
        conv = float(counts.adc_conversions) * per
        conv_ns = float(counts.adc_conversions_without_skip) * per
        cyc = float(counts.fragment_cycles) * per
        cyc_ns = float(counts.fragment_cycles_without_skip) * per
        conv_dense = conv_ns
        positions = layout.row_tiles * layout.column_tiles
        rate = design.conversion_rate_per_position_hertz
        time = conv / positions / rate
        time_ns = conv_ns / positions / rate
    else:
        if cycles is None:
            c = np.full((1, f_total), full, np.int64)
        else:
            c = np.asarray(cycles)
            if c.ndim != 2 or c.shape[1] != f_total:
                raise ValueError(f"cycles must be (vectors, {f_total}), got shape {c.shape}")
            if not skip:
                c = np.full_like(c, full)
        v_sample = c.shape[0]
        v = float(v_sample if vectors_per_frame is None else vectors_per_frame)
        per = v / v_sample
        sums = c.sum(axis=0).astype(np.float64) * per  # (F,)
        sums_ns = np.full(f_total, full * v, np.float64)
        loads = _crossbar_loads(sums, live_inputs, layout)
        loads_ns = _crossbar_loads(sums_ns, live_inputs, layout)
        conv, conv_ns = float(loads.sum()), float(loads_ns.sum())
        conv_dense = float(_crossbar_loads(sums_ns, dense_inputs, layout).sum())
        cyc, cyc_ns = float(sums.sum()), float(sums_ns.sum())
        rate = design.conversion_rate_per_position_hertz
        time, time_ns = float(loads.max()) / rate, float(loads_ns.max()) / rate

    # crossbars: a (row tile, column tile) position whose weights are all zero is not stored
    crossbars = layout.crossbars
    stored_positions = (_crossbar_loads(np.ones(f_total), live_inputs, layout) > 0).sum()
    crossbars_stored = int(stored_positions) * design.crossbars_per_position

    ops = float(design.ops_per_mac * layout.in_features * layout.out_features * v)
    return _finish(design, name, ops, v, cyc, cyc_ns, conv, conv_ns, conv_dense, crossbars,
                   crossbars_stored, f_total * n, int(pruned.sum()), time, time_ns, chip_tiles)


def _finish(design: DesignCost, name, ops, vectors, cyc, cyc_ns, conv, conv_ns, conv_dense,
            crossbars, crossbars_stored, fragments, fragments_pruned, time, time_ns,
            chip_tiles, layers=()) -> CostResult:
    e_conv = design.energy_per_conversion_joules
    breakdown = tuple((k, e * conv) for k, e in design.energy_per_conversion_breakdown().items())
    tiles = design.tiles_per_chip if chip_tiles is None else chip_tiles
    chip_rate = design.conversion_rate_per_tile_hertz * tiles
    rate_per_mm2 = design.conversion_rate_per_tile_hertz / design.tile_area_mm2
    energy = conv * e_conv
    return CostResult(
        name=name, design=design.name, ops=ops, input_vectors=vectors,
        fragment_cycles=cyc, fragment_cycles_without_skip=cyc_ns,
        adc_conversions=conv, adc_conversions_without_skip=conv_ns,
        adc_conversions_dense=conv_dense, crossbars=int(crossbars),
        crossbars_stored=int(crossbars_stored), fragments=int(fragments),
        fragments_pruned=int(fragments_pruned), latency_s=time, latency_without_skip_s=time_ns,
        energy_j=energy, energy_without_skip_j=conv_ns * e_conv,
        area_mm2=crossbars_stored * design.area_per_crossbar_mm2,
        gops_per_s_mm2=(ops / 1e9) * rate_per_mm2 / conv if conv else math.inf,
        gops_per_w=(ops / 1e9) / energy if energy else math.inf,
        frames_per_s=chip_rate / conv if conv else math.inf,
        frames_per_s_without_skip=chip_rate / conv_ns if conv_ns else math.inf,
        fits_on_chip=crossbars_stored <= tiles * design.crossbars_per_tile,
        energy_breakdown_j=breakdown, layers=tuple(layers))


def network_cost(design: DesignCost, layers: Sequence[CostResult], name: str = "network",
                 chip_tiles: float | None = None) -> CostResult:
    """Sum a network's layer costs (same design): counts, energy and area add, the single-copy
    latency is the sum of the layers' (they run one after another), frames per second and the
    efficiencies follow from the totals."""
    layers = tuple(layers)
    if not layers:
        raise ValueError("a network needs at least one layer")
    for layer in layers:
        if layer.design != design.name:
            raise ValueError(f"layer {layer.name!r} was costed for {layer.design!r}, "
                             f"not {design.name!r}")
    total = lambda attr: sum(getattr(l, attr) for l in layers)  # noqa: E731
    return _finish(design, name, total("ops"), total("input_vectors"),
                   total("fragment_cycles"), total("fragment_cycles_without_skip"),
                   total("adc_conversions"), total("adc_conversions_without_skip"),
                   total("adc_conversions_dense"), total("crossbars"), total("crossbars_stored"),
                   total("fragments"), total("fragments_pruned"), total("latency_s"),
                   total("latency_without_skip_s"), chip_tiles, layers)


# --------------------------------------------------------------------------- workloads


def quantize_activations(x, inputs: InputConfig, scale: str = "per_layer") -> np.ndarray:
    """Unsigned integer inputs of ``inputs.bits`` bits from non-negative activations (V, K).

    ``"per_layer"``: one fixed-point step for the layer, its largest activation mapped to the top
    code (a static scale, as a fixed-point accelerator uses); ``"per_vector"``: each vector's
    largest value mapped to the top code (the emulator's default read scale).
    """
    x = np.asarray(x, np.float64)
    if np.any(x < 0):
        raise ValueError("activations must be non-negative (after ReLU)")
    top = 2 ** inputs.bits - 1
    if scale == "per_layer":
        peak = x.max()
        step = peak / top if peak > 0 else 1.0
    elif scale == "per_vector":
        peak = x.max(axis=1, keepdims=True)
        step = np.where(peak > 0, peak / top, 1.0)
    else:
        raise ValueError(f"scale must be 'per_layer' or 'per_vector', got {scale!r}")
    return np.clip(np.round(x / step), 0, top).astype(np.int64)


def mapped_integers(weights, config: CrossbarConfig) -> tuple[np.ndarray, ColumnLayout]:
    """The integer weights a layer is stored with and its layout, without building the cell
    levels: :func:`~reram_emu.quantization.quantize_weights`, then for the polarized scheme the
    projection onto the fragments' signs (sign of the weight sum), as
    :func:`~reram_emu.mapping.encode_weights` does."""
    w = jnp.asarray(np.asarray(weights, np.float32)).astype(config.float_dtype)
    if w.ndim != 2:
        raise ValueError(f"weights must be (in_features, out_features), got shape {w.shape}")
    integers, _ = quantize_weights(w, config.weights)
    if config.mapping.scheme == "polarized":
        m = config.geometry.fragment_rows
        integers = project_polarized(integers, m, signs=fragment_signs(integers, m, "sum"))
    return np.asarray(integers), column_layout(config, *w.shape)


@dataclass(frozen=True)
class LayerWorkload:
    """One crossbar layer of a trained model: its float weights (K, N), a sample of its real
    input vectors (V, K), non-negative, and how many input vectors one frame feeds it."""

    name: str
    weights: np.ndarray = field(repr=False)
    activations: np.ndarray = field(repr=False)
    vectors_per_frame: int = 1


def compare_designs(workloads: Sequence[LayerWorkload] | Mapping[str, Sequence[LayerWorkload]],
                    designs: Mapping[str, DesignCost] | Iterable[DesignCost], *,
                    activation_scale: str = "per_layer", chip_area_mm2: float | None = None
                    ) -> dict[str, CostResult]:
    """Cost a model on several designs.

    Each layer's weights are quantized and mapped by the design's configuration (FORMS:
    projected onto its fragments' signs), its activations quantized to the design's input bits
    (:func:`quantize_activations`), zero-skip cycles and pruned fragments counted, then
    :func:`layer_cost` and :func:`network_cost`.

    ``workloads`` is one list of layers for every design, or ``{design name: layers}`` (e.g. a
    model polarized at each FORMS fragment size, with its own activations). ``chip_area_mm2``
    gives every design a chip of the same area (fractional tiles) for frames per second;
    default: each design's own ``tiles_per_chip``.
    """
    if not isinstance(designs, Mapping):
        designs = {d.name: d for d in designs}
    results = {}
    for key, design in designs.items():
        loads = workloads[key] if isinstance(workloads, Mapping) else workloads
        tiles = None if chip_area_mm2 is None else chip_area_mm2 / design.tile_area_mm2
        config = design.config
        layers = []
        for load in loads:
            integers, layout = mapped_integers(load.weights, config)
            x_int = quantize_activations(load.activations, config.inputs, activation_scale)
            layers.append(layer_cost(design, layout, cycles=fragment_cycles(x_int, config),
                                     integer_weights=integers,
                                     vectors_per_frame=load.vectors_per_frame,
                                     chip_tiles=tiles, name=load.name))
        results[key] = network_cost(design, layers, name=key, chip_tiles=tiles)
    return results


def zero_skip_savings(activations: Sequence[np.ndarray], fragment_rows=(4, 8, 16, 32, 64, 128),
                      bits: int = 16, activation_scale: str = "per_layer",
                      weights: Sequence[float] | None = None) -> dict[int, dict]:
    """Average input cycles per fragment with zero-skipping, for each fragment size m.

    ``activations``: the real (V, K) inputs of each layer (non-negative), e.g. from the same
    images, so that V counts the vectors a frame feeds the layer. Every (vector, fragment) pair
    counts once, times its layer's ``weights`` entry (default 1; the layer's output columns
    give the average per ADC conversion instead). Returns
    ``{m: {"cycles": mean cycles, "saved": 1 - cycles / bits}}``.
    """
    inputs = InputConfig(bits=bits)
    layer_weights = [1.0] * len(activations) if weights is None else list(weights)
    if len(layer_weights) != len(activations):
        raise ValueError("weights needs one entry per layer")
    out = {}
    for m in fragment_rows:
        config = CrossbarConfig(geometry=CrossbarGeometry(128, 128, m), inputs=inputs)
        total = count = 0.0
        for x, lw in zip(activations, layer_weights):
            cyc = fragment_cycles(quantize_activations(x, inputs, activation_scale), config)
            total += lw * float(cyc.sum())
            count += lw * cyc.size
        mean = total / count
        out[int(m)] = {"cycles": mean, "saved": 1.0 - mean / bits}
    return out


def plot_comparison(results: Mapping[str, CostResult], path, zero_skip: Mapping | None = None,
                    ) -> None:
    """Write a PNG comparing designs: conversions per frame (with and without zero-skipping),
    energy per frame, GOPs/(s mm^2) and GOPs/W, frames per second; and, if given, zero-skip
    savings against fragment size next to the FORMS paper's points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    r = [results[k] for k in names]
    panels = 5 if zero_skip else 4
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2))
    xs = np.arange(len(names))

    def bars(ax, a, b, title, label_a, label_b, log=True):
        ax.bar(xs - 0.2, a, 0.4, label=label_a)
        ax.bar(xs + 0.2, b, 0.4, label=label_b)
        ax.set_xticks(xs, names, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7)

    bars(axes[0], [x.adc_conversions_dense for x in r], [x.adc_conversions for x in r],
         "ADC conversions per frame", "dense (no skip, no pruning)", "with zero-skip + pruning")
    bars(axes[1], [x.energy_without_skip_j * 1e6 for x in r], [x.energy_j * 1e6 for x in r],
         "energy per frame (uJ)", "without zero-skip", "with zero-skip")
    a = [x.gops_per_s_mm2 for x in r]
    b = [x.gops_per_w for x in r]
    bars(axes[2], a, b, "efficiency on this model", "GOPs/(s mm^2)", "GOPs/W")
    bars(axes[3], [x.frames_per_s_without_skip for x in r], [x.frames_per_s for x in r],
         "frames/s (balanced chip)", "without zero-skip", "with zero-skip")
    if zero_skip:
        ax = axes[4]
        for label, series in zero_skip.items():
            ms = sorted(series)
            ax.plot(ms, [100 * series[m]["saved"] for m in ms], "o-", label=label)
        pm = sorted(FORMS_ZERO_SKIP_PAPER)
        ax.plot(pm, [100 * FORMS_ZERO_SKIP_PAPER[m]["saved"] for m in pm], "k*", ms=12,
                label="FORMS paper (ResNet-50)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("fragment rows m")
        ax.set_ylabel("input cycles saved (%)")
        ax.set_title("zero-skipping, 16-bit inputs", fontsize=10)
        ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
