"""Moved into the package: ``python -m reram_emu.experiments run polarize --out experiments/polarize``
(see :mod:`reram_emu.experiments.polarize`). This shim forwards its arguments to that command."""
import sys

from reram_emu.experiments.__main__ import main

sys.exit(main(["run", "polarize", "--out", "experiments/polarize", *sys.argv[1:]]))
