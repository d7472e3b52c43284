"""Trained models the experiments share, cached under an experiment's work folder.

:func:`digits_mlp` trains the float MLP on scikit-learn's digits and polarizes a copy per
fragment size with the ADMM polarizer (:func:`reram_emu.training.polarize`), checkpointing each
phase as ``.npz`` under ``work_dir``: a second call (or ``--resume``) loads instead of training.
Every checkpoint records its stage, seed and a hash of what produced it
(:func:`reram_emu.training.checkpoint_provenance`); one that is damaged or holds another stage
or configuration raises :class:`reram_emu.training.CheckpointError` naming it.
The settings are the ones of ``experiments/polarize`` (digits MLP); ``quick`` shortens the
polarizer's phases.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from .. import admm as admm_lib
from .. import training
from ..config import ADCConfig, CrossbarConfig, InputConfig, preset
from ..datasets import Dataset, load_dataset
from ..models import Network, mlp

__all__ = ["TrainedModels", "digits_mlp", "forms_config", "INPUT_BITS"]

INPUT_BITS = 8
BASELINE = training.TrainConfig(epochs=40, batch_size=32, learning_rate=3e-3)
POLARIZE = training.TrainConfig(batch_size=32, learning_rate=1e-3)
ADMM_FULL = admm_lib.ADMMConfig(rho=1e-3, rho_growth=1.25, updates_per_epoch=1, epochs=30,
                                finetune_epochs=30, finetune_learning_rate=3e-3)
ADMM_QUICK = dataclasses.replace(ADMM_FULL, epochs=12, finetune_epochs=12, rho_growth=1.6)


class TrainedModels(NamedTuple):
    """A data set, a model and its trained parameters.

    Attributes:
      model, data: the :class:`~reram_emu.models.Network` and :class:`~reram_emu.datasets.Dataset`.
      float_params: the float baseline (not polarized, not quantized).
      polarized: fragment rows m -> parameters polarized at m, 8-bit quantized weights.
      float_accuracy: test accuracy of ``float_params`` (fraction).
      polarized_accuracy: m -> float test accuracy of ``polarized[m]`` (fraction).
      calibration_x: training images to calibrate fixed input scales with
        (:func:`reram_emu.training.calibrate_input_scales`).
    """

    model: Network
    data: Dataset
    float_params: dict
    polarized: dict
    float_accuracy: float
    polarized_accuracy: dict
    calibration_x: np.ndarray


def forms_config(m: int, adc_bits: int | None = None) -> CrossbarConfig:
    """FORMS at fragment ``m`` as the polarizer study reads it: the preset's 2-bit cells and
    8-bit weights, 8-bit bit-serial inputs, and a ``log2(m) + 1``-bit ADC (or ``adc_bits``)
    whose LSB is one conductance level (``range="fixed"``: sums above the full scale clip)."""
    bits = int(np.log2(m)) + 1 if adc_bits is None else adc_bits
    return preset("forms", fragment_rows=m).replace(
        adc=ADCConfig(bits=bits, range="fixed"), inputs=InputConfig(bits=INPUT_BITS))


def digits_mlp(work_dir: str | os.PathLike, fragment_rows=(4, 8, 16), *, seed: int = 0,
               quick: bool = False, log=None) -> TrainedModels:
    """Train (or load) the digits MLP (64-128-64-10) and its polarized copies.

    Args:
      work_dir: folder for the ``.npz`` checkpoints (created).
      fragment_rows: the fragment sizes m to polarize at.
      seed: seeds the data split, initialization and data order.
      quick: shorter ADMM and fine-tuning phases (12 + 12 epochs instead of 30 + 30).
      log: a callable taking progress lines, or None for silence.
    """
    work = Path(work_dir) / f"digits_mlp_seed{seed}{'_quick' if quick else ''}"
    work.mkdir(parents=True, exist_ok=True)
    data = load_dataset("digits", seed=seed, flatten=True)
    model = mlp((64, 128, 64, 10))
    baseline = dataclasses.replace(BASELINE, seed=seed)
    initial = jax.jit(model.init)(jax.random.key(seed))
    state, _ = training.train(model.apply, initial, data, baseline,
                              checkpoint=str(work / "baseline.npz"), log=log)
    float_params = state.params
    admm = ADMM_QUICK if quick else ADMM_FULL
    polarized, polarized_accuracy = {}, {}
    for m in fragment_rows:
        final = work / f"polarized_m{m}.npz"  # written after the polarizer's own check passed
        admm_m, polarize_config = (dataclasses.replace(admm, fragment_rows=int(m)),
                                   dataclasses.replace(POLARIZE, seed=seed))
        provenance = training.checkpoint_provenance(
            f"polarized m={int(m)}", seed, model=model.apply, admm=admm_m, config=polarize_config,
            start=float_params, check=forms_config(int(m)))
        if final.exists():
            polarized[int(m)] = training.load_checkpoint(str(final), initial,
                                                         expect=provenance)[0]
        else:
            result = training.polarize(
                model.apply, float_params, data, admm_m, polarize_config,
                checkpoint_dir=str(work / f"admm_m{m}"), log=log,
                check_config=forms_config(int(m)))
            polarized[int(m)] = result.params
            training.save_checkpoint(str(final), result.params, epoch=0, step=0, seed=seed,
                                     done=True, provenance=provenance)
        polarized_accuracy[int(m)] = training.accuracy(model.apply, polarized[int(m)], data.x_test,
                                                       data.y_test)
    return TrainedModels(model, data, float_params, polarized,
                         training.accuracy(model.apply, float_params, data.x_test, data.y_test),
                         polarized_accuracy, np.asarray(data.x_train[:500]))
