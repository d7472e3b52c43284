"""Crossbar-aware structured pruning (reram_emu.pruning) and the FORMS flow prune -> polarize ->
quantize (reram_emu.training.prune_polarize_quantize)."""

from __future__ import annotations

import numpy as np
import pytest
import jax.numpy as jnp

import reram_emu as rx
from reram_emu import admm as A
from reram_emu import pruning as P
from reram_emu import training as T
from reram_emu.datasets import load_dataset
from reram_emu.models import mlp


def _weights(k=24, n=10, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(k, n)), jnp.float32)


@pytest.mark.parametrize("structure,k", [("rows", 5), ("columns", 3), ("fragments", 7)])
def test_projection_keeps_exactly_k_structures_of_largest_norm_and_is_idempotent(structure, k):
    w = _weights()
    projected, mask = P.project_structures(w, structure, k, fragment_rows=4)
    norms = np.asarray(P.structure_norms(projected, structure, 4))
    assert np.count_nonzero(norms) == k
    # the kept ones are the k largest of the original
    before = np.asarray(P.structure_norms(w, structure, 4)).ravel()
    kept = np.flatnonzero(norms.ravel())
    assert set(kept) == set(np.argsort(-before)[:k])
    # kept weights untouched, the others zero, and the mask says which
    assert np.array_equal(np.asarray(projected), np.asarray(w) * np.asarray(mask))
    again, mask2 = P.project_structures(projected, structure, k, fragment_rows=4)
    assert np.array_equal(np.asarray(again), np.asarray(projected))
    assert np.array_equal(np.asarray(mask2), np.asarray(mask))


def test_projection_is_the_euclidean_one_against_brute_force():
    # the best k rows to keep, by exhaustive search over all subsets
    from itertools import combinations
    w = np.asarray(_weights(6, 3, seed=3))
    best = min(combinations(range(6), 2),
               key=lambda rows: np.sum(np.delete(w, rows, axis=0) ** 2))
    projected, _ = P.project_structures(jnp.asarray(w), "rows", 2)
    assert set(np.flatnonzero(np.any(np.asarray(projected) != 0, axis=1))) == set(best)


def test_combined_pruning_satisfies_every_bound_and_is_idempotent():
    w = _weights(32, 12)
    ratios = {"rows": 4.0, "columns": 3.0, "fragments": 2.0}
    projected, mask = P.project_pruned(w, ratios, fragment_rows=4)
    p = np.asarray(projected)
    assert np.count_nonzero(np.any(p != 0, axis=1)) <= 8
    assert np.count_nonzero(np.any(p != 0, axis=0)) <= 4
    assert np.count_nonzero(np.asarray(P.structure_norms(projected, "fragments", 4))) <= 48
    again, _ = P.project_pruned(projected, ratios, fragment_rows=4)
    assert np.array_equal(np.asarray(again), p)
    assert np.array_equal(p, np.asarray(w) * np.asarray(mask))


def test_keep_count_and_bad_input():
    assert P.keep_count(10, 1) == 10 and P.keep_count(10, 3) == 4 and P.keep_count(10, 2.5) == 4
    assert P.keep_count(400, 20) == 20
    with pytest.raises(ValueError, match="k=11 rows to keep.*has 10 rows"):
        P.project_structures(_weights(10, 4), "rows", 11)
    with pytest.raises(ValueError, match="k must be in"):
        P.project_structures(_weights(10, 4), "columns", -1)
    with pytest.raises(ValueError, match="prune ratio >= 1"):
        P.PruneConfig(rows=0.5)
    with pytest.raises(ValueError, match="prune ratio >= 1"):
        P.keep_count(10, 0.9)
    with pytest.raises(ValueError, match="prune ratio >= 1"):
        P.PruneConfig(columns=float("nan"))
    with pytest.raises(TypeError, match="number"):
        P.PruneConfig(rows="4")
    with pytest.raises(ValueError, match="unknown structure"):
        P.PruneConfig(layers={"fc1/w": {"filters": 2}})
    with pytest.raises(ValueError, match="unknown structure"):
        P.project_structures(_weights(), "filters", 2)
    config = P.PruneConfig(rows=2, layers={"fc1/*": {"columns": 4}})
    assert config.ratios("fc1/w") == {"rows": 2.0, "columns": 4.0, "fragments": 1.0}
    assert config.ratios("fc2/w") == {"rows": 2.0, "columns": 1.0, "fragments": 1.0}
    hash(config)  # a jit static / cache key
    with pytest.raises(ValueError, match="matches no crossbar layer"):
        config.check_layers(["fc2/w"])


def test_crossbar_count_of_a_hand_worked_pruned_layer():
    # A (300, 100) layer on 128x128 FORMS crossbars (8-bit weights on 2-bit cells: 7 magnitude
    # bits -> 4 slices; 128 / 4 = 32 weights per tile). Dense: ceil(300/128)=3 row tiles x
    # ceil(100/32)=4 column tiles = 12 crossbars.
    forms = rx.preset("forms", fragment_rows=8)
    prime = rx.preset("prime")
    assert forms.weight_slices == 4 and forms.weights_per_tile == 32
    rng = np.random.default_rng(0)
    cols = np.sort(rng.choice(100, 40, replace=False))
    # (a) rows 0..129 kept: FORMS keeps whole fragments of 8 rows -> 17 fragment rows = 136
    # rows -> 2 row tiles x ceil(40/32)=2 column tiles = 4 crossbars.
    w = np.zeros((300, 100), np.float32)
    w[np.ix_(np.arange(130), cols)] = rng.uniform(0.1, 1.0, (130, 40))
    usage = P.crossbar_usage(w, forms)
    assert (usage.rows_kept, usage.rows_stored, usage.columns_kept) == (130, 136, 40)
    assert (usage.crossbars_dense, usage.crossbars) == (12, 4)
    assert usage.nonzero == 130 * 40 and usage.prune_ratio == pytest.approx(30000 / 5200)
    assert usage.fragments == 17 * 40 and usage.fragments_live == 17 * 40
    # (b) every other row kept (150): every fragment row is live, FORMS stores all 300 rows
    # (3 x 2 = 6 crossbars); PRIME (256x256 pairs, 128 weights per tile) drops the zero rows
    # freely: dense 2 row tiles x 1 column tile x 2 = 4, pruned 1 x 1 x 2 = 2.
    w = np.zeros((300, 100), np.float32)
    w[np.ix_(np.arange(0, 300, 2), cols)] = rng.uniform(0.1, 1.0, (150, 40))
    usage = P.crossbar_usage(w, forms)
    assert (usage.rows_kept, usage.rows_stored, usage.crossbars) == (150, 300, 6)
    usage = P.crossbar_usage(w, prime)
    assert (usage.rows_stored, usage.crossbars_dense, usage.crossbars) == (150, 4, 2)
    compacted, kr, kc = P.compact(w)
    assert compacted.shape == (150, 40) and np.array_equal(np.flatnonzero(kr),
                                                           np.arange(0, 300, 2))
    assert np.array_equal(compacted, w[0::2][:, cols])
    assert P.compact(w, fragment_rows=8)[0].shape == (300, 40)


def test_paper_crossbar_reduction():
    assert P.paper_crossbar_reduction(23.18) == pytest.approx(185.44)
    assert P.paper_crossbar_reduction(50.85) == pytest.approx(406.8)
    assert P.paper_crossbar_reduction(41.2) == pytest.approx(329.6)
    with pytest.raises(ValueError, match="prune ratio"):
        P.paper_crossbar_reduction(0.5)


@pytest.fixture(scope="module")
def digits_flow():
    import jax
    data = load_dataset("digits", seed=0)
    net = mlp((64, 128, 64, 10))
    baseline = T.TrainConfig(epochs=10, batch_size=32, learning_rate=3e-3)
    state, _ = T.train(net.apply, net.init(jax.random.key(0)), data, baseline, log=None)
    # fc1 and fc2 keep half their rows and half their columns (4x fewer weights each), fc3
    # half its rows and all 10 outputs
    prune = A.ADMMConfig(fragment_rows=8, epochs=12, finetune_epochs=12, weight_bits=None,
                         rho=1e-3, rho_growth=1.6, finetune_learning_rate=3e-3,
                         prune=P.PruneConfig(rows=2, columns=2,
                                             layers={"fc3/w": {"columns": 1}}))
    polar = A.ADMMConfig(fragment_rows=8, epochs=12, finetune_epochs=12, rho=1e-3,
                         rho_growth=1.6, finetune_learning_rate=3e-3)
    config = T.TrainConfig(batch_size=32, learning_rate=1e-3)
    flow = T.prune_polarize_quantize(net.apply, state.params, data, prune, polar, config,
                                     log=None, check_config=rx.preset("forms",
                                                                      fragment_rows=8))
    return data, net, state.params, flow


def test_a_short_flow_on_digits_prunes_polarizes_quantizes_and_stays_accurate(digits_flow):
    data, net, baseline, flow = digits_flow
    base_acc = T.accuracy(net.apply, baseline, data.x_test, data.y_test)
    final = flow.polarized.params
    acc = T.accuracy(net.apply, final, data.x_test, data.y_test)
    view = T.crossbar_view(net.apply, final, data.x_test[:1])
    weights = view.get(final)
    # pruned: half the rows and columns of fc1, fc2 (fc3 keeps its 10 outputs)
    for name, (k, n) in {"fc1/w": (64, 128), "fc2/w": (128, 64)}.items():
        usage = P.crossbar_usage(weights[name], rx.preset("forms"))
        assert usage.rows_kept <= k // 2 and usage.columns_kept <= n // 2, name
    assert np.count_nonzero(np.any(np.asarray(weights["fc3/w"]) != 0, axis=0)) == 10
    assert A.check_polarized(weights, 8, rx.preset("forms", fragment_rows=8))
    # 8-bit: every layer is integers times one scale
    for w in weights.values():
        w = np.asarray(w)
        step = np.abs(w).max() / 127
        assert np.allclose(w / step, np.round(w / step), atol=1e-3)
    # stated accuracies (measured on a 2-core CPU: float 97.1 %, pruned 91.6 %, final 92.7 %
    # on the 450 test images)
    assert base_acc > 0.95
    assert T.accuracy(net.apply, flow.pruned.params, data.x_test, data.y_test) > 0.88
    assert acc > 0.88, (base_acc, acc)


def test_masks_never_revive_a_pruned_weight_across_stages(digits_flow):
    data, net, _, flow = digits_flow
    prune_masks = flow.pruned.masks
    view = T.crossbar_view(net.apply, flow.polarized.params, data.x_test[:1])
    final = view.get(flow.polarized.params)
    pruned = view.get(flow.pruned.params)
    for name, m in prune_masks.items():
        m = np.asarray(m)
        assert np.all(np.asarray(pruned[name])[m == 0] == 0)
        assert np.all(np.asarray(final[name])[m == 0] == 0), name
        # the accumulated masks include the pruning's
        assert np.all(np.asarray(flow.polarized.masks[name])[m == 0] == 0)


def test_flow_rejects_misconfigured_stages():
    data = load_dataset("digits", seed=0)
    net = mlp((64, 10))
    polar = A.ADMMConfig()
    prune = A.ADMMConfig(weight_bits=None, prune=P.PruneConfig(rows=2))
    config = T.TrainConfig()
    params = net.init(__import__("jax").random.key(0))
    with pytest.raises(ValueError, match="prune must be"):
        T.prune_polarize_quantize(net.apply, params, data, polar, polar, config, log=None)
    with pytest.raises(ValueError, match="polarize_admm must be"):
        T.prune_polarize_quantize(net.apply, params, data, prune, prune, config, log=None)
    with pytest.raises(ValueError, match="weight_bits=None"):
        T.prune_polarize_quantize(net.apply, params, data,
                                  A.ADMMConfig(prune=P.PruneConfig(rows=2)), polar, config,
                                  log=None)
    with pytest.raises(TypeError, match="PruneConfig"):
        A.ADMMConfig(prune={"rows": 2})


def test_nn_polarize_prunes_any_model_with_a_prune_config():
    import jax
    from reram_emu.nn import analog, polarize
    data = load_dataset("digits", seed=0)
    net = mlp((64, 32, 10))
    f = analog(net.apply, rx.preset("forms"), nonnegative_inputs=True)
    admm = A.ADMMConfig(epochs=2, finetune_epochs=1, weight_bits=None,
                        prune=P.PruneConfig(columns=4, layers={"fc2/w": {"columns": 1}}))
    result = polarize(f, net.init(jax.random.key(1)), data.x_train, data.y_train, admm,
                      batch_size=64, log=None)
    assert result.signs == {}
    w = np.asarray(result.params["fc1"]["w"])
    assert np.count_nonzero(np.any(w != 0, axis=0)) <= 8  # 32 columns / 4
    assert np.all(w[np.asarray(result.masks["fc1/w"]) == 0] == 0)
