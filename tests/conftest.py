"""The test suite runs without the persistent compilation cache that the command line turns
on (tests that call ``experiments.main`` would otherwise switch it on for every later test of
the process); tests/test_cache.py sets its own folder."""

import os

os.environ.setdefault("RERAM_EMU_COMPILE_CACHE", "0")
