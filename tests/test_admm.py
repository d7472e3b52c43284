"""The ADMM polarizer: projection properties, the sign rules, masked fine-tuning, the pipeline on
digits (small settings so the file stays fast), checkpoint resume."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reram_emu as rx
from reram_emu import admm as A
from reram_emu import training as T
from reram_emu.config import ADCConfig, InputConfig
from reram_emu.datasets import load_dataset
from reram_emu.models import mlp
from reram_emu.nn import analog, evaluate_accuracy
from reram_emu.polarization import fragment_signs, is_polarized, project_polarized


def random_weights(seed=0, k=37, n=9):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(k, n)), jnp.float32)


@pytest.mark.parametrize("rule", ["sum", "euclidean"])
@pytest.mark.parametrize("m", [1, 4, 8, 16])
def test_projection_is_idempotent_and_polarized(rule, m):
    config = A.ADMMConfig(fragment_rows=m, rule=rule)
    weights = {"a": random_weights(0), "b": random_weights(1, 64, 3)}
    once, signs, masks = A.hard_projection(weights, config)
    twice, signs2, _ = A.hard_projection(once, config)
    for name in weights:
        assert bool(is_polarized(once[name], m))
        np.testing.assert_array_equal(np.asarray(once[name]), np.asarray(twice[name]))
        # kept weights are untouched, masked ones are zero
        kept = np.asarray(masks[name]) > 0
        np.testing.assert_array_equal(np.asarray(once[name])[kept],
                                      np.asarray(weights[name])[kept])
        assert np.all(np.asarray(once[name])[~kept] == 0)
    assert A.check_polarized(once, m)
    assert not A.check_polarized(weights, m) or m == 1


def test_sum_and_euclidean_rules_agree_where_they_must():
    m = 8
    rng = np.random.default_rng(3)
    # 1. an already polarized matrix: both projections are the identity
    signs = np.repeat(rng.choice([-1.0, 1.0], size=(5, 6)), m, axis=0)
    polarized = jnp.asarray(np.abs(rng.normal(size=(40, 6))) * signs, jnp.float32)
    for rule in ("sum", "euclidean"):
        np.testing.assert_array_equal(np.asarray(project_polarized(polarized, m, rule)),
                                      np.asarray(polarized))
    # 2. fragments whose nonzero entries all have one magnitude: sum and sum of squares rank
    #    the signs alike (ties included: both pick +)
    equal = jnp.asarray(rng.choice([-1.0, 1.0], size=(40, 6)), jnp.float32) * 0.3
    np.testing.assert_array_equal(np.asarray(fragment_signs(equal, m, "sum")),
                                  np.asarray(fragment_signs(equal, m, "euclidean")))
    # 3. fragment 1: each weight is its own fragment, both keep everything
    w = random_weights(4)
    for rule in ("sum", "euclidean"):
        np.testing.assert_array_equal(np.asarray(project_polarized(w, 1, rule)), np.asarray(w))
    # 4. where they differ, the Euclidean rule is the true projection: never farther
    for seed in range(5):
        w = random_weights(seed, 64, 16)
        d_sum = jnp.sum((w - project_polarized(w, m, "sum")) ** 2)
        d_euc = jnp.sum((w - project_polarized(w, m, "euclidean")) ** 2)
        assert float(d_euc) <= float(d_sum) + 1e-6
    # a fragment where they disagree: one large negative, several small positives
    f = jnp.asarray([[-1.0], [0.3], [0.3], [0.3], [0.3]], jnp.float32)
    assert float(fragment_signs(f, 5, "sum")[0, 0]) == 1.0
    assert float(fragment_signs(f, 5, "euclidean")[0, 0]) == -1.0


def test_admm_update_steps():
    config = A.ADMMConfig(fragment_rows=4, rho=0.1, rho_growth=2.0, rho_max=0.3)
    weights = {"a": random_weights(5, 16, 4)}
    state = A.init_admm(weights, config)
    np.testing.assert_array_equal(np.asarray(state.z["a"]),
                                  np.asarray(project_polarized(weights["a"], 4)))
    assert float(A.admm_penalty(weights, state)) == pytest.approx(
        0.05 * float(jnp.sum((weights["a"] - state.z["a"]) ** 2)), rel=1e-5)
    state = A.admm_update(weights, state, config)
    np.testing.assert_allclose(np.asarray(state.u["a"]),
                               np.asarray(weights["a"] - state.z["a"]), atol=1e-7)
    assert float(state.rho) == pytest.approx(0.2)
    state = A.admm_update(weights, state, config)
    assert float(state.rho) == pytest.approx(0.3)  # capped
    assert A.primal_residuals(state.z, state)["a"] == 0.0


def test_masked_updates_and_clamp_never_revive_zeroed_weights():
    m = 4
    weights = {"a": random_weights(6, 16, 5)}
    projected, signs, masks = A.hard_projection(weights, A.ADMMConfig(fragment_rows=m))
    updates = {"a": jnp.ones_like(weights["a"])}
    masked = A.masked_updates(updates, masks)
    assert np.all(np.asarray(masked["a"])[np.asarray(masks["a"]) == 0] == 0)
    pushed = {"a": projected["a"] + 10.0 * random_weights(7, 16, 5)}  # any update at all
    clamped = A.clamp_to_signs(pushed, signs, masks, m)
    assert bool(is_polarized(clamped["a"], m))
    assert np.all(np.asarray(clamped["a"])[np.asarray(masks["a"]) == 0] == 0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", flatten=True)


@pytest.fixture(scope="module")
def trained_mlp(digits):
    model = mlp((64, 64, 10))
    state, history = T.train(model.apply, model.init(jax.random.key(0)), digits,
                             T.TrainConfig(epochs=8, batch_size=32, learning_rate=3e-3),
                             log=None)
    return model, state.params, history


def test_short_baseline_on_digits_reaches_accuracy(trained_mlp, digits):
    model, params, history = trained_mlp
    assert history[-1]["test_acc"] >= 0.93
    assert T.accuracy(model.apply, params, digits.x_test, digits.y_test) == history[-1]["test_acc"]


def test_masked_finetune_keeps_zeroed_weights_zero(trained_mlp, digits):
    model, params, _ = trained_mlp
    config = A.ADMMConfig(fragment_rows=8, finetune_epochs=2)
    view = T.crossbar_view(model.apply, params, digits.x_test[:1])
    projected, signs, masks = A.hard_projection(view.get(params), config)
    start = view.put(params, projected)
    state, _ = T.train(model.apply, start, digits, T.TrainConfig(epochs=2, batch_size=32),
                       log=None, phase="finetune", admm=config, signs=signs, masks=masks)
    final = view.get(state.params)
    for name in final:
        zeroed = np.asarray(masks[name]) == 0
        assert zeroed.any()
        assert np.all(np.asarray(final[name])[zeroed] == 0.0)
        assert bool(is_polarized(final[name], 8))
        assert not np.array_equal(np.asarray(final[name]), np.asarray(projected[name]))


def test_polarize_pipeline_on_digits(trained_mlp, digits, tmp_path):
    """ADMM -> projection -> masked fine-tuning -> 8 bits: exactly polarized, the strict mapping
    accepts it, and it keeps its accuracy in float and read through the emulator."""
    model, params, _ = trained_mlp
    m = 8
    forms = rx.preset("forms", fragment_rows=m)
    config = A.ADMMConfig(fragment_rows=m, rho=1e-2, rho_growth=2.0, epochs=4,
                          updates_per_epoch=2, finetune_epochs=3)
    result = T.polarize(model.apply, params, digits, config, T.TrainConfig(batch_size=32),
                        log=None, check_config=forms, checkpoint_dir=str(tmp_path))
    weights = T.crossbar_view(model.apply, params, digits.x_test[:1]).get(result.params)
    assert list(weights) == ["fc1/w", "fc2/w"]
    assert A.check_polarized(weights, m, forms)
    for w in weights.values():
        rx.map_weights(np.asarray(w), forms)  # on_violation="error" accepts it
        assert np.unique(np.asarray(w)).size <= 255  # 8-bit weights
    history = [h for h in result.history if h["phase"] == "admm"]
    assert history[-1]["test_acc_projected"] > history[0]["test_acc_projected"]
    float_acc = T.accuracy(model.apply, result.params, digits.x_test, digits.y_test)
    assert float_acc >= 0.9
    emulator = forms.replace(adc=ADCConfig(bits=4, range="fixed"), inputs=InputConfig(bits=8))
    scales = T.calibrate_input_scales(model.apply, result.params, digits.x_train, emulator)
    emulated = evaluate_accuracy(analog(model.apply, emulator, nonnegative_inputs=True),
                                 result.params, digits.x_test, digits.y_test, scales=scales,
                                 batch_size=450)
    assert emulated.mean >= float_acc - 0.03
    # the unpolarized model projected at programming loses much more
    with pytest.raises(ValueError, match="oppose their fragment"):  # never projected silently
        evaluate_accuracy(analog(model.apply, emulator, nonnegative_inputs=True), params,
                          digits.x_test, digits.y_test, scales=scales, batch_size=450)
    projecting = emulator.replace(mapping=dataclasses.replace(emulator.mapping,
                                                              on_violation="project"))
    unpolarized = evaluate_accuracy(analog(model.apply, projecting, nonnegative_inputs=True),
                                    params, digits.x_test, digits.y_test, scales=scales,
                                    batch_size=450)
    assert unpolarized.mean < emulated.mean - 0.05
    # with the checkpoints in place, a rerun resumes both phases and ends where it ended
    again = T.polarize(model.apply, params, digits, config, T.TrainConfig(batch_size=32), log=None,
                       checkpoint_dir=str(tmp_path))
    for a, b in zip(jax.tree_util.tree_leaves(result.params),
                    jax.tree_util.tree_leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_interrupted_run_resumes_exactly(digits, tmp_path):
    model = mlp((64, 16, 10))
    params = model.init(jax.random.key(1))
    config = T.TrainConfig(epochs=3, batch_size=64, max_steps_per_epoch=5)
    admm = A.ADMMConfig(fragment_rows=4, updates_per_epoch=2)
    full, _ = T.train(model.apply, params, digits, config, phase="admm", admm=admm, log=None)
    path = str(tmp_path / "admm.npz")
    T.train(model.apply, params, digits, config, phase="admm", admm=admm, log=None,
            checkpoint=path, stop_after=2)
    _, meta = T.load_checkpoint(path, full)
    assert meta["epoch"] == 2 and not meta["done"]
    resumed, history = T.train(model.apply, params, digits, config, phase="admm", admm=admm,
                               log=None, checkpoint=path)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_noise_aware_training_runs_and_learns(digits):
    """A noise-aware baseline (differential mapping: unpolarized weights are not projected)
    under variation, read noise and ADC noise learns about as well as the float one."""
    model = mlp((64, 32, 10))
    noisy = rx.preset("forms", fragment_rows=8).replace(
        device=rx.DeviceConfig(variation_sigma=0.1, read_noise_sigma=0.05),
        adc=ADCConfig(bits=5, range="fixed", noise_lsb=0.5), inputs=InputConfig(bits=8),
        mapping=rx.MappingConfig(scheme="differential"))
    config = T.TrainConfig(epochs=4, batch_size=32, learning_rate=3e-3)
    _, ideal = T.train(model.apply, model.init(jax.random.key(2)), digits, config, log=None)
    _, history = T.train(model.apply, model.init(jax.random.key(2)), digits, config,
                         noise_aware=T.NoiseAware(noisy), log=None)
    assert history[-1]["test_acc"] >= min(0.85, ideal[-1]["test_acc"] - 0.05)


def test_check_polarized_rejects_and_config_validation():
    with pytest.raises(ValueError):
        A.check_polarized({"a": random_weights(8)}, 8, rx.preset("forms", fragment_rows=8))
    with pytest.raises(ValueError):
        A.ADMMConfig(rule="median")
    with pytest.raises(ValueError):
        T.train(mlp((4, 2)).apply, mlp((4, 2)).init(jax.random.key(0)), None, T.TrainConfig(),
                phase="admm")
    assert dataclasses.replace(A.ADMMConfig(), rho=0.5).rho == 0.5
