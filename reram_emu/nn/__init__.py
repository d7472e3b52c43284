"""Any JAX model on emulated crossbars: the crossbar op and the ``analog`` transform.

* :func:`analog` (:mod:`reram_emu.nn.transform`): trace a function ``apply(params, *inputs)``
  (Flax linen or NNX, Equinox, plain JAX) and run every product of an input with a parameter
  on crossbars, per layer configurable by parameter path.
* :func:`crossbar_matmul` (:mod:`reram_emu.nn.op`): the one weight-stationary crossbar
  product all of it uses, in the modes ``"float"``, ``"digital"``, ``"emulated"`` and
  ``"noise_aware"``; :func:`program_weights` programs a weight matrix once.
"""

from .op import MODES, CrossbarProduct, crossbar_matmul, program_weights
from .transform import Analog, AnalogState, LayerInfo, analog

__all__ = ["analog", "Analog", "AnalogState", "LayerInfo", "crossbar_matmul", "program_weights",
           "CrossbarProduct", "MODES"]
