"""reram_emu: a device-level emulator of analog ReRAM crossbar accelerators in JAX."""
