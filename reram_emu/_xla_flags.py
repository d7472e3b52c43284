"""A default XLA option that keeps reram_emu's compiled reads off a crashing CPU code path.

jaxlib 0.9 and later (checked: 0.9.0 to 0.10.2) hand some dots and reductions of a compiled
CPU program to YNNPACK fusions. On x86-64 CPUs with AVX2 but no AVX-512, jaxlib 0.10.2
crashes (segmentation fault inside ``YnnFusionThunk`` -> ``make_transpose_impl`` ->
``slinky::fuse_contiguous_dims``) running the read-noise sweep of the default study; the same
program runs with YNNPACK fusions off, and with jaxlib 0.10.1. So unless the user has set the
option, importing reram_emu adds ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK
fusions: XLA's own CPU code generation, which every CPU runs) to ``XLA_FLAGS`` before JAX
starts its CPU backend. It changes no result: it only selects how XLA emits the same
operations.

The user keeps control: a ``XLA_FLAGS`` that already names the option is left as it is (set
``--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce`` or any value to choose), and
``RERAM_EMU_XLA_DEFAULTS=0`` leaves ``XLA_FLAGS`` untouched. The option is read once, when the
backend starts: if JAX's backend already ran before reram_emu was imported, the option cannot
apply and :func:`applied` says so. See README "Troubleshooting".
"""

from __future__ import annotations

import os

OPTION = "--xla_cpu_experimental_ynn_fusion_type"
#: the value set when the user has set none: no YNNPACK fusions
VALUE = ""
#: first jaxlib release with YNNPACK fusions and the option (0.8.0 has neither)
FIRST_VERSION = (0, 9, 0)

_state = {"applied": False, "reason": "not attempted"}


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def apply_default() -> bool:
    """Add the option to ``XLA_FLAGS`` when it is safe and wanted; True when it was added."""
    if os.environ.get("RERAM_EMU_XLA_DEFAULTS", "1") == "0":
        _state.update(applied=False, reason="RERAM_EMU_XLA_DEFAULTS=0")
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if OPTION in flags:
        _state.update(applied=False, reason="XLA_FLAGS already sets the option")
        return False
    try:
        from importlib.metadata import version
        jaxlib_version = _version(version("jaxlib"))
    except Exception:  # noqa: BLE001 - no metadata: do not guess
        _state.update(applied=False, reason="jaxlib's version is unknown")
        return False
    if jaxlib_version < FIRST_VERSION:
        _state.update(applied=False, reason="this jaxlib has no YNNPACK fusions")
        return False
    import sys
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and getattr(bridge, "_backends", None):
        _state.update(applied=False, reason="JAX's backend started before reram_emu was "
                                            "imported")
        if not _has_avx512():
            import warnings
            warnings.warn("JAX started before reram_emu was imported, so reram_emu could not "
                          f"set XLA_FLAGS={OPTION}= (jaxlib's YNNPACK fusions crash on some "
                          "CPUs without AVX-512); import reram_emu first, or set it yourself",
                          RuntimeWarning, stacklevel=3)
        return False
    os.environ["XLA_FLAGS"] = (flags + " " if flags else "") + f"{OPTION}={VALUE}"
    _state.update(applied=True, reason="set by reram_emu")
    return True


def cpu_flags() -> frozenset[str] | None:
    """The feature flags the first CPU reports (Linux ``/proc/cpuinfo``: x86 ``flags``, Arm
    ``Features``), or None when the system does not say."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return None


def _has_avx512() -> bool:
    """Whether this CPU reports AVX-512 (True when unknown)."""
    flags = cpu_flags()
    return flags is None or "avx512f" in flags


def applied() -> tuple[bool, str]:
    """(whether reram_emu set the option, why or why not)."""
    return _state["applied"], _state["reason"]
