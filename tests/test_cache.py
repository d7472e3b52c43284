"""The cache folder and JAX's persistent compilation cache (reram_emu.cache)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from reram_emu import cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_compilation_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.COMPILE_CACHE_ENV, str(tmp_path / "progs"))
    chosen = cache.compilation_cache_dir()
    assert chosen.parent == tmp_path / "progs" and chosen.name.startswith("jax")
    monkeypatch.setenv(cache.COMPILE_CACHE_ENV, "off")
    assert cache.compilation_cache_dir() is None and cache.enable_compilation_cache() is None
    monkeypatch.delenv(cache.COMPILE_CACHE_ENV)
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "c"))
    assert cache.compilation_cache_dir().parent == tmp_path / "c" / "jax"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="must be a folder"):
        cache.enable_compilation_cache(tmp_path / "file")


def test_a_second_process_loads_the_first_ones_programs(tmp_path):
    """The first process compiles a read and writes it to the cache; the second reads the
    same numbers from it and adds nothing (every program found)."""
    code = textwrap.dedent("""
        import jax, numpy as np
        import reram_emu as rx
        from reram_emu.cache import enable_compilation_cache
        print("folder", enable_compilation_cache())
        rng = np.random.default_rng(0)
        config = rx.preset("forms")
        w = np.abs(rng.normal(size=(32, 8))) * np.repeat(rng.choice([-1, 1], (4, 8)), 8, 0)
        layer = rx.program(rx.map_weights(w, config), jax.random.key(0))
        out = jax.jit(lambda l, x: rx.read(l, x).outputs)(layer, rng.random((4, 32)))
        print("out", np.asarray(out).tolist())
    """)
    env = dict(os.environ, **{cache.COMPILE_CACHE_ENV: str(tmp_path)})

    def run():
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
        files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
        return lines, files

    first, files_first = run()
    assert first["folder"].startswith(str(tmp_path)) and files_first
    second, files_second = run()
    assert second["out"] == first["out"]
    assert files_second == files_first


def test_the_folder_is_trimmed_to_its_size_limit_oldest_first(tmp_path):
    for i, name in enumerate(["old", "mid", "new"]):
        path = tmp_path / name
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))
    assert cache._trim(tmp_path, 250) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid", "new"]
    assert cache._trim(tmp_path, 1000) == 0
