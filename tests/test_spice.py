"""ngspice agreement: the exported netlist, solved by ngspice itself, gives the solver's currents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reram_emu.circuit import WireConfig, column_currents
from reram_emu.spice import ngspice_available, run_ngspice, write_netlist

pytestmark = pytest.mark.skipif(not ngspice_available(),
                                reason="ngspice not installed (apt-get install ngspice)")


@pytest.mark.parametrize("shape,wires", [
    ((4, 4), WireConfig(1.0, 1.0)),
    ((8, 16), WireConfig(2.5, 1.0, 10.0, 5.0)),
    ((16, 8), WireConfig(0.5, 3.0, 0.0, 1.0)),
])
def test_ngspice_agrees_with_the_solver(shape, wires):
    rng = np.random.default_rng(sum(shape))
    g = rng.uniform(1e-6, 1e-4, size=shape)
    v = rng.uniform(0.0, 0.2, size=shape[0])
    spice = np.asarray(run_ngspice(g, v, wires)).ravel()
    with jax.enable_x64(True):
        ours = np.asarray(column_currents(jnp.asarray(g), jnp.asarray(v)[None],
                                          *wires.resistances))[0]
    # ngspice prints about 15 significant digits
    np.testing.assert_allclose(spice, ours, rtol=1e-9, atol=1e-18)


def test_netlist_is_written(tmp_path):
    path = tmp_path / "array.cir"
    write_netlist(path, np.full((2, 3), 1e-5), np.array([0.2, 0.1]), WireConfig(1.0, 1.0))
    text = path.read_text()
    assert ".op" in text.lower() and text.lower().rstrip().endswith(".end")
