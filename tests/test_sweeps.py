"""Sweeps: one compilation for many numeric values, grouping by structure, sharding."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import reram_emu as rx
from reram_emu.config import ADCConfig, DeviceConfig
from reram_emu.sweeps import group_by_structure, noise_grid, noise_points, sweep


def make_evaluate(config, seed=0):
    rng = np.random.default_rng(seed)
    m = config.geometry.fragment_rows
    signs = np.repeat(rng.choice([-1.0, 1.0], size=(48 // m, 8)), m, axis=0)
    weights = (np.abs(rng.normal(size=(48, 8))) * signs).astype(np.float32)
    x = rng.random((6, 48)).astype(np.float32)
    mapped = rx.map_weights(weights, config)
    exact = x @ weights
    traces = []

    def evaluate(noise, key):
        traces.append(1)
        program_key, read_key = jax.random.split(key)
        layer = rx.program(mapped, program_key, noise)
        outputs = rx.read(layer, x, read_key, noise).outputs
        return jax.numpy.linalg.norm(outputs - exact) / np.linalg.norm(exact)

    return evaluate, traces


def test_sweep_compiles_once_and_matches_single_evaluations():
    # a wide ADC, so that device variation dominates the error
    config = rx.preset("forms").replace(inputs=rx.InputConfig(bits=8), adc=ADCConfig(bits=12))
    evaluate, traces = make_evaluate(config)
    keys = jax.random.split(jax.random.key(0), 3)
    grid = noise_grid(config, variation_sigma=np.linspace(0, 0.2, 12))
    errors = sweep(evaluate, grid, keys, chunk_size=4)
    assert errors.shape == (12, 3)
    assert len(traces) == 1
    errors_again = sweep(evaluate, noise_grid(config, variation_sigma=np.linspace(0.3, 0.5, 12)),
                         keys, chunk_size=4)
    assert len(traces) == 1  # new values, same compilation
    assert np.asarray(errors_again).mean() > np.asarray(errors).mean()
    # spot-check against one evaluation outside the sweep
    point = jax.tree_util.tree_map(lambda v: v[7], grid)
    single = jax.jit(evaluate)(point, keys[2])
    np.testing.assert_allclose(float(errors[7, 2]), float(single), rtol=1e-5)
    # more variation, more error (averaged over keys)
    means = np.asarray(errors).mean(axis=1)
    assert means[-1] > means[1] > 0


def test_noise_grid_and_points_validate():
    config = rx.preset("forms")
    grid = noise_grid(config, variation_sigma=[0, 0.1], read_noise_sigma=[0, 0.01, 0.02])
    assert grid.variation_sigma.shape == (6,)
    np.testing.assert_allclose(grid.read_noise_sigma, [0, 0.01, 0.02] * 2)
    with pytest.raises(ValueError, match="unknown noise parameter"):
        noise_grid(config, sigma=[0.1])
    with pytest.raises(ValueError, match=">= 0"):
        noise_grid(config, variation_sigma=[-0.1])
    with pytest.raises(ValueError, match="at least one point"):
        noise_points(config, [])


def test_group_by_structure():
    configs = [rx.preset("forms").replace(device=DeviceConfig(variation_sigma=s))
               for s in (0.0, 0.1)]
    configs.append(rx.preset("forms", fragment_rows=4))
    configs.append(rx.preset("forms").replace(adc=ADCConfig(bits=4, range="fixed",
                                                            noise_lsb=0.5)))
    groups = group_by_structure(configs)
    assert [indices for _, indices, _ in groups] == [[0, 1, 3], [2]]
    np.testing.assert_allclose(groups[0][2].variation_sigma, [0, 0.1, 0])
    np.testing.assert_allclose(groups[0][2].adc_noise_lsb, [0, 0, 0.5])


def test_sweep_shards_over_four_host_devices():
    code = textwrap.dedent("""
        import jax, numpy as np
        import reram_emu as rx
        from reram_emu.sweeps import noise_grid, sweep
        from tests.test_sweeps import make_evaluate
        assert jax.local_device_count() == 4
        config = rx.preset("forms").replace(inputs=rx.InputConfig(bits=8))
        evaluate, traces = make_evaluate(config)
        keys = jax.random.split(jax.random.key(0), 2)
        grid = noise_grid(config, variation_sigma=np.linspace(0, 0.2, 10))
        errors = sweep(evaluate, grid, keys, chunk_size=2)
        assert errors.shape == (10, 2) and len(traces) == 1
        assert len(errors.sharding.device_set) >= 1
        print(np.asarray(errors).tolist())
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = np.asarray(eval(done.stdout.strip().splitlines()[-1]))
    config = rx.preset("forms").replace(inputs=rx.InputConfig(bits=8))
    evaluate, _ = make_evaluate(config)
    local = sweep(evaluate, noise_grid(config, variation_sigma=np.linspace(0, 0.2, 10)),
                  jax.random.split(jax.random.key(0), 2), chunk_size=2)
    np.testing.assert_allclose(sharded, np.asarray(local), rtol=1e-5)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_sweep_over_two_processes_equals_the_single_process_sweep():
    """Two processes on localhost (jax.distributed with a local coordinator, gloo CPU
    collectives), one device each: one sweep sharded over both, every process gets the whole
    result, equal to this process's sweep of the same points and keys."""
    code = textwrap.dedent("""
        import sys
        import jax
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{sys.argv[1]}",
                                   num_processes=2, process_id=int(sys.argv[2]),
                                   initialization_timeout=120)
        import numpy as np
        import reram_emu as rx
        from reram_emu.sweeps import noise_grid, sweep
        from tests.test_sweeps import make_evaluate
        assert jax.process_count() == 2 and jax.device_count() == 2
        config = rx.preset("forms").replace(inputs=rx.InputConfig(bits=8))
        evaluate, traces = make_evaluate(config)
        keys = jax.random.split(jax.random.key(0), 3)
        grid = noise_grid(config, variation_sigma=np.linspace(0, 0.2, 7),
                          read_noise_sigma=[0.0, 0.03])
        errors = sweep(evaluate, grid, keys, chunk_size=4, devices=jax.devices())
        assert errors.shape == (14, 3) and len(traces) == 1
        print(repr(np.asarray(errors).tolist()))
        jax.distributed.shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", code, port, str(i)], env=env, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            outputs.append(np.asarray(eval(out.strip().splitlines()[-1])))
    finally:
        for p in procs:
            p.kill()
    config = rx.preset("forms").replace(inputs=rx.InputConfig(bits=8))
    evaluate, _ = make_evaluate(config)
    grid = noise_grid(config, variation_sigma=np.linspace(0, 0.2, 7), read_noise_sigma=[0.0, 0.03])
    # one device here: chunks of 4 points as on each of the two processes, same program
    local = np.asarray(sweep(evaluate, grid, jax.random.split(jax.random.key(0), 3),
                             chunk_size=4))
    assert outputs[0].shape == (14, 3)
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], local)
    # the first point is noise-free (every key reads the same), the second has read noise
    assert np.ptp(local[0]) == 0 and np.ptp(local[1]) > 0
