"""The machine a benchmark ran on, as one line: CPU model and its vector flags, cores, jax and
jaxlib versions, the device. Every benchmark prints it above its table."""

from __future__ import annotations

import os
import platform

import jax
import jaxlib

from reram_emu._xla_flags import cpu_flags

FLAGS = ("avx2", "avx512f", "fma", "neon", "asimd")


def _cpu() -> tuple[str, list[str]]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model"):
                    model = value.strip()
                    break
    except OSError:
        pass
    present = cpu_flags() or frozenset()
    return model, [name for name in FLAGS if name in present]


def describe() -> str:
    model, flags = _cpu()
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    return (f"machine: {model} ({', '.join(flags) or 'flags unknown'}), {os.cpu_count()} cores, "
            f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, device {device.platform} "
            f"({kind}) x {jax.device_count()}")


if __name__ == "__main__":
    print(describe())
