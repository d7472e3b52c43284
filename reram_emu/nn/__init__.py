"""Any JAX model on emulated crossbars: the crossbar op and the ``analog`` transform.

* :func:`analog` (:mod:`reram_emu.nn.transform`): trace a function ``apply(params, *inputs)``
  (Flax linen or NNX, Equinox, plain JAX) and run every product of an input with a parameter
  on crossbars, per layer configurable by parameter path.
* :func:`crossbar_matmul` (:mod:`reram_emu.nn.op`): the one weight-stationary crossbar
  product all of it uses, in the modes ``"float"``, ``"digital"``, ``"emulated"`` and
  ``"noise_aware"``; :func:`program_weights` programs a weight matrix once;
  :func:`layer_config` trims a layer's tile to its columns; the noise-aware mode's output
  noise is :func:`output_noise_moments` (:mod:`reram_emu.nn.moments`).
* :func:`evaluate_accuracy` (:mod:`reram_emu.nn.evaluate`): accuracy over noise keys with
  confidence intervals, each key programmed once and read for every batch.
* :func:`fit` (:mod:`reram_emu.nn.train`): training in float or noise-aware on crossbars.
* :func:`polarize` (:mod:`reram_emu.nn.polarize`): the ADMM polarizer for any parameter
  pytree, its pull and fine-tuning masks as optax transformations.
"""

from .op import MODES, CrossbarProduct, crossbar_matmul, layer_config, program_weights
from .moments import output_noise_moments
from .transform import Analog, AnalogState, LayerInfo, WeightView, analog
from .evaluate import evaluate_accuracy, program_and_read_keys
from .train import cross_entropy, fit
from .polarize import PolarizedModel, admm_pull, polarize, polarized_masks

__all__ = ["analog", "Analog", "AnalogState", "LayerInfo", "WeightView", "crossbar_matmul", "program_weights",
           "CrossbarProduct", "MODES", "layer_config", "output_noise_moments", "evaluate_accuracy", "program_and_read_keys", "polarize", "admm_pull",
           "polarized_masks", "PolarizedModel", "fit", "cross_entropy"]
