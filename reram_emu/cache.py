"""reram_emu's cache folder (decoded data sets, compiled programs), outside the repository.

``$RERAM_EMU_CACHE``, else ``$XDG_CACHE_HOME/reram_emu``, else ``~/.cache/reram_emu``.

JAX's persistent compilation cache: :func:`enable_compilation_cache` stores every compiled
program under ``<cache>/jax/<fingerprint>``, so a second process (the next
``python -m reram_emu.experiments`` run, the next notebook kernel) loads what an earlier one
compiled instead of compiling it again. The command line turns it on; a library user calls it.
``$RERAM_EMU_COMPILE_CACHE`` moves it (a folder) or switches it off (``0`` or ``off``). The
fingerprint names the jax and jaxlib versions, the machine and its CPU's features, so a
cache folder shared by machines with different CPUs (one with AVX-512, one without) never
hands one the other's machine code.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

from ._xla_flags import cpu_flags

__all__ = ["CACHE_ENV", "COMPILE_CACHE_ENV", "default_cache_dir", "compilation_cache_dir",
           "enable_compilation_cache"]

CACHE_ENV = "RERAM_EMU_CACHE"
COMPILE_CACHE_ENV = "RERAM_EMU_COMPILE_CACHE"
_OFF = ("0", "off", "false", "no")
#: the compilation cache's size limit: :func:`enable_compilation_cache` deletes the least
#: recently written programs beyond it, once, when it starts (JAX's own size limit rescans the
#: whole folder at every write: quadratic in the number of programs, measured)
MAX_BYTES = 1 << 30


def default_cache_dir() -> Path:
    """``$RERAM_EMU_CACHE``, else ``$XDG_CACHE_HOME/reram_emu``, else ``~/.cache/reram_emu``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "reram_emu"


def _cpu_features() -> str:
    flags = cpu_flags()
    return platform.processor() if flags is None else " ".join(sorted(flags))


def _fingerprint() -> str:
    import jax
    import jaxlib
    text = (f"jax {jax.__version__} jaxlib {jaxlib.__version__} {platform.machine()} "
            f"{_cpu_features()}")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"jax{jax.__version__}-{platform.machine()}-{digest}"


def compilation_cache_dir() -> Path | None:
    """Where :func:`enable_compilation_cache` stores programs without a ``path``: the folder
    ``$RERAM_EMU_COMPILE_CACHE`` names, or ``<cache>/jax``, then this machine's fingerprint;
    None when ``$RERAM_EMU_COMPILE_CACHE`` is ``0`` or ``off``."""
    chosen = os.environ.get(COMPILE_CACHE_ENV, "").strip()
    if chosen.lower() in _OFF:
        return None
    root = Path(chosen).expanduser() if chosen else default_cache_dir() / "jax"
    return root / _fingerprint()


def enable_compilation_cache(path=None) -> Path | None:
    """Turn on JAX's persistent compilation cache for this process.

    Args:
      path: the folder (created if missing); None: :func:`compilation_cache_dir`.

    Returns:
      The folder in use, or None when ``$RERAM_EMU_COMPILE_CACHE`` switches the cache off
      (and ``path`` is None).

    Raises:
      ValueError: ``path`` (or the folder chosen) exists and is not a folder, or cannot be
        created.

    Every program is cached, however quickly it compiled (jax's
    ``jax_persistent_cache_min_compile_time_secs`` set to 0): the study's reads are many
    programs of a second or less each. The folder is trimmed to :data:`MAX_BYTES` when this
    is called (oldest programs first). A cached program is the same machine code, so results
    are bit for bit those of a fresh compilation.
    """
    folder = compilation_cache_dir() if path is None else Path(os.fspath(path)).expanduser()
    if folder is None:
        return None
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"the compilation cache must be a folder, but {folder} is a file; "
                         f"name another folder or set {COMPILE_CACHE_ENV}=0 to switch it off")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the compilation cache folder {folder}: {error}; "
                         f"name another folder or set {COMPILE_CACHE_ENV}=0") from None
    _trim(folder, MAX_BYTES)
    import jax
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def _trim(folder: Path, max_bytes: int) -> int:
    """Delete the oldest files (by modification time) until ``folder`` holds at most
    ``max_bytes``; returns how many were deleted. A file another process removes first is
    skipped."""
    entries = []
    for path in folder.iterdir():
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    deleted = 0
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        try:
            path.unlink()
            deleted += 1
        except OSError:
            pass
        total -= size
    return deleted
