"""Experiments run from the command line: ``python -m reram_emu.experiments``."""
