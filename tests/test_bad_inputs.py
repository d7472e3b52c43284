"""Issue 11: every bad input at the API boundary raises a ValueError or TypeError that names
the argument, says what was given and what is allowed (never a raw IndexError, AttributeError,
MLIR error, KeyError, ZeroDivisionError, broadcast error, nor a silent wrong answer).

One parametrized case per bad input. Cases already tested elsewhere are not repeated here:
non-finite, negative and wrongly shaped float inputs to ``read`` and bad configurations
(test_config.py), NaN/0/negative scales and out-of-range integers under ``jit``
(test_presets.py), unknown and negative ``noise_grid`` values (test_sweeps.py), unpolarized
weights in ``map_weights`` (test_crossbar.py) and in ``nn.evaluate_accuracy`` (test_admm.py). The
output folder checks run in process on a fake experiment in test_resume_robustness.py; here
the real command runs in a subprocess, for its exit status and stderr.
"""

import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reram_emu as rx
from reram_emu import sweeps
from reram_emu.datasets import load_dataset
from reram_emu.experiments import runner
from reram_emu.models import mlp
from reram_emu.nn import analog, evaluate_accuracy

ROOT = Path(__file__).resolve().parent.parent
CONFIG = rx.preset("forms")
RNG = np.random.default_rng(11)
WEIGHTS = np.abs(RNG.normal(size=(16, 8))).astype(np.float32)  # polarized: all positive
MAPPED = rx.map_weights(WEIGHTS, CONFIG)
LAYER = rx.program(MAPPED, key=jax.random.key(0))
X = np.abs(RNG.normal(size=(3, 16))).astype(np.float32)
X_INT = np.ones((3, 16), np.int32)
KEY = jax.random.key(1)
NOISE = CONFIG.noise_parameters()

# ---------------------------------------------------------------- keys

KEY_CASES = {
    "plain int": (0, TypeError, "must be a jax.random key .* got int 0"),
    "string": ("0", TypeError, "must be a jax.random key .* got str"),
    "float": (1.5, TypeError, "must be a jax.random key .* got float 1.5"),
    "batch of typed keys": (jax.random.split(jax.random.key(0)), ValueError,
                            r"must be one key \(shape \(\)\), got a batch of keys of shape \(2,\)"),
    "batch of legacy keys": (jax.random.split(jax.random.PRNGKey(0)), ValueError,
                             r"must be one key, got a batch of legacy keys of shape \(2, 2\)"),
}
KEY_CALLS = {
    "program": (lambda key: rx.program(MAPPED, key=key), "program key"),
    "read": (lambda key: rx.read(LAYER, X, key=key), "read key"),
    "read_integers": (lambda key: rx.read_integers(LAYER, X_INT, key=key), "read key"),
}


@pytest.mark.parametrize("call", list(KEY_CALLS))
@pytest.mark.parametrize("case", list(KEY_CASES))
def test_bad_key(call, case):
    key, error, message = KEY_CASES[case]
    function, name = KEY_CALLS[call]
    with pytest.raises(error, match=f"{name} {message}"):
        function(key)


# ---------------------------------------------------------------- what program() is given

@pytest.mark.parametrize("given,name", [
    (WEIGHTS, "ndarray"),
    (CONFIG, "CrossbarConfig"),
    (LAYER, "ProgrammedLayer"),
], ids=["numpy array", "config", "programmed layer"])
def test_program_needs_mapped_weights(given, name):
    with pytest.raises(TypeError, match=f"program\\(\\) needs the MappedWeights of "
                                        f"map_weights\\(weights, config\\), got {name}"):
        rx.program(given, key=KEY)


def test_effective_weights_before_programming():
    with pytest.raises(TypeError, match="needs a ProgrammedLayer: program the mapped weights"):
        rx.effective_weights(MAPPED)


# ---------------------------------------------------------------- noise=

NOISE_CASES = {
    "tuple": (tuple(NOISE), TypeError, "noise must be a reram_emu.NoiseParameters .* got tuple"),
    "dict": (NOISE._asdict(), TypeError, "noise must be a reram_emu.NoiseParameters .* got dict"),
    "holding a string": (NOISE._replace(variation_sigma="0.1"), TypeError,
                         "noise.variation_sigma must be a real number, got str '0.1'"),
    "holding None": (NOISE._replace(stuck_on_rate=None), TypeError,
                     "noise.stuck_on_rate must be a real number, got NoneType"),
    "un-vmapped vector": (NOISE._replace(read_noise_sigma=jnp.zeros(3)), ValueError,
                          r"noise.read_noise_sigma must be a scalar \(one noise point\), got "
                          r"shape \(3,\); for many points use jax.vmap"),
    "NaN rate": (NOISE._replace(stuck_off_rate=float("nan")), ValueError,
                 "noise.stuck_off_rate must be finite, got nan"),
    "negative sigma": (NOISE._replace(read_noise_sigma=-0.1), ValueError,
                       r"noise.read_noise_sigma must be in \[0.0, inf\], got -0.1"),
    "rate above 1": (NOISE._replace(stuck_on_rate=2.0), ValueError,
                     r"noise.stuck_on_rate must be in \[0.0, 1.0\], got 2.0"),
    "rates summing above 1": (NOISE._replace(stuck_on_rate=0.6, stuck_off_rate=0.6), ValueError,
                              "noise.stuck_on_rate \\+ stuck_off_rate must be <= 1"),
    "negative wire": (NOISE._replace(wire_row_ohms=-1.0), ValueError,
                      r"noise.wire_row_ohms must be in \[0.0, inf\], got -1.0"),
}
NOISE_CALLS = {
    "program": lambda noise: rx.program(MAPPED, key=KEY, noise=noise),
    "read": lambda noise: rx.read(LAYER, X, key=KEY, noise=noise),
    "read_integers": lambda noise: rx.read_integers(LAYER, X_INT, key=KEY, noise=noise),
}


@pytest.mark.parametrize("call", list(NOISE_CALLS))
@pytest.mark.parametrize("case", list(NOISE_CASES))
def test_bad_noise(call, case):
    noise, error, message = NOISE_CASES[case]
    with pytest.raises(error, match=message):
        NOISE_CALLS[call](noise)


def test_noise_vector_under_jit_is_refused_not_broadcast():
    """Shapes are checked under jit too: an un-vmapped (3,) sigma would broadcast silently."""
    with pytest.raises(ValueError, match="noise.read_noise_sigma must be a scalar"):
        jax.jit(lambda noise: rx.read(LAYER, X, key=KEY, noise=noise).outputs)(
            NOISE._replace(read_noise_sigma=jnp.zeros(3)))


# ---------------------------------------------------------------- read(..., scale=)

@pytest.mark.parametrize("scale,error,message", [
    (np.ones(3), ValueError, r"scale must be a scalar or shaped \(3, 1\) .* got \(3,\)"),
    (np.ones((2, 1)), ValueError, r"scale must be a scalar or shaped \(3, 1\) .* got \(2, 1\)"),
    (np.ones((1, 3)), ValueError, r"scale must be a scalar or shaped \(3, 1\) .* got \(1, 3\)"),
    (0.0, ValueError, r"scale \(the input quantization step\) must be finite and > 0, got \[0\.\]"),
    (float("nan"), ValueError, r"scale \(the input quantization step\) must be finite and > 0"),
    (-1.0, ValueError, r"scale \(the input quantization step\) must be finite and > 0"),
    (np.array([[1.0], [0.0], [1.0]]), ValueError, r"scale .* must be finite and > 0, got \[1\. 0"),
    ("1", TypeError, "scale must be a real number or array .* got str '1'"),
    (1j, TypeError, "scale must be a real number or array .* dtype complex"),
    (True, TypeError, "scale must be a real number or array .* got bool"),
], ids=["shape (3,)", "shape (2, 1)", "shape (1, 3)", "zero", "nan", "negative",
        "one row zero", "string", "complex", "bool"])
def test_bad_scale(scale, error, message):
    with pytest.raises(error, match=message):
        rx.read(LAYER, X, scale=scale)


# ---------------------------------------------------------------- read_integers inputs

@pytest.mark.parametrize("x_int,error,message", [
    (np.ones((3, 15), np.int32), ValueError, r"x_int must have shape \(batch, 16\), got \(3, 15\)"),
    (np.ones((3, 17), np.int32), ValueError, r"x_int must have shape \(batch, 16\), got \(3, 17\)"),
    (np.ones(16, np.int32), ValueError, r"x_int must have shape \(batch, 16\), got \(16,\); add "
                                        r"a batch axis"),
    (np.ones((0, 16), np.int32), ValueError,
     r"x_int: the input batch is empty \(shape \(0, 16\)\)"),
    (np.full((2, 16), 70000), ValueError,
     r"x_int values must lie in the configured input range \[0, 65535\], got \[70000, 70000\]"),
    (np.full((2, 16), -1), ValueError,
     r"x_int values must lie in the configured input range \[0, 65535\], got \[-1, -1\]"),
    (np.full((2, 16), 0.5), TypeError, "x_int must hold integers, got dtype float64 with "
                                       "non-integer values; use read"),
    (np.full((2, 16), np.nan), TypeError, "x_int must hold integers"),
    (np.ones((2, 16), bool), TypeError, "x_int must hold real numbers, got dtype bool"),
    ("1234", TypeError, r"x_int must be an array of shape \(batch, 16\), got str"),
], ids=["narrow", "wide", "1-D", "empty batch", "70000 in 16 bits", "-1 unsigned", "float",
        "nan", "bool", "string"])
def test_bad_integer_inputs(x_int, error, message):
    with pytest.raises(error, match=message):
        rx.read_integers(LAYER, x_int)


def test_empty_float_batch():
    with pytest.raises(ValueError, match=r"inputs: the input batch is empty"):
        rx.read(LAYER, np.ones((0, 16), np.float32))


# ---------------------------------------------------------------- presets

@pytest.mark.parametrize("build,error,message", [
    (lambda: rx.preset("prime", adc=rx.ADCConfig(bits=1, range="calibrated")), ValueError,
     r"the differential mapping needs a signed ADC of at least 2 bits .* got ADCConfig\(bits=1"),
    (lambda: rx.preset("prime").replace(adc=rx.ADCConfig(bits=1)), ValueError,
     "the differential mapping needs a signed ADC of at least 2 bits"),
    (lambda: rx.preset("forms", foo=1), TypeError,
     r"preset\(\) got unknown keyword\(s\) \['foo'\]; allowed: fragment_rows"),
    (lambda: rx.preset("forms", signed_inputs="yes"), TypeError, "signed_inputs must be a bool"),
    (lambda: rx.preset("forms", adc="4"), TypeError, "adc must be a ADCConfig, got str"),
], ids=["prime 1-bit ADC", "prime 1-bit ADC by replace", "unknown keyword", "signed_inputs str",
        "adc str"])
def test_bad_preset(build, error, message):
    with pytest.raises(error, match=message):
        build()


# ---------------------------------------------------------------- sweeps

@pytest.mark.parametrize("build,message", [
    (lambda: sweeps.noise_points(CONFIG, [{"variation_sigma": float("nan")}]),
     r"variation_sigma values must be finite, got \[nan\]"),
    (lambda: sweeps.noise_points(CONFIG, [{"read_noise_sigma": -1.0}]),
     r"read_noise_sigma values must be >= 0.0, got \[-1.0\]"),
    (lambda: sweeps.noise_points(CONFIG, [{"stuck_on_rate": 2.0}]),
     r"stuck_on_rate values must be <= 1.0, got \[2.0\]"),
    (lambda: sweeps.noise_points(CONFIG, [{"stuck_on_rate": 0.7, "stuck_off_rate": 0.7}]),
     "stuck_on_rate \\+ stuck_off_rate must be <= 1 at every point"),
    (lambda: sweeps.noise_grid(CONFIG, variation_sigma=[0.0, float("nan")]),
     r"variation_sigma values must be finite, got \[0.0, nan\]"),
    (lambda: sweeps.noise_grid(CONFIG, stuck_on_rate=[2.0]),
     r"stuck_on_rate values must be <= 1.0, got \[2.0\]"),
    (lambda: sweeps.noise_grid(CONFIG, stuck_off_rate=[-0.5]),
     r"stuck_off_rate values must be >= 0.0, got \[-0.5\]"),
], ids=["points nan", "points negative", "points rate 2", "points rates sum", "grid nan",
        "grid rate 2", "grid negative rate"])
def test_bad_noise_points_and_grid(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def _evaluate(noise, key):
    return rx.read(rx.program(MAPPED, key=key, noise=noise), X, key=key, noise=noise).outputs.sum()


SWEEP_KEYS = jax.random.split(jax.random.key(2), 2)
GOOD_BATCH = sweeps.noise_points(CONFIG, [{}, {}])


@pytest.mark.parametrize("noise,error,message", [
    (NOISE, ValueError, r"noise must be a batch of points, every field shaped \(points,\)"),
    (tuple(GOOD_BATCH), TypeError, "noise must be a batch of NoiseParameters .* got tuple"),
    # a hand-built batch is checked like noise_points: traced inside the sweep, a rate of 2
    # would read as zeros and NaN as NaN, silently
    (GOOD_BATCH._replace(stuck_on_rate=jnp.asarray([0.0, 2.0])), ValueError,
     r"noise.stuck_on_rate values must be <= 1.0, got \[0.0, 2.0\]"),
    (GOOD_BATCH._replace(read_noise_sigma=jnp.asarray([0.0, jnp.nan])), ValueError,
     r"noise.read_noise_sigma values must be finite"),
    (GOOD_BATCH._replace(stuck_on_rate=jnp.asarray([0.6, 0.6]),
                         stuck_off_rate=jnp.asarray([0.0, 0.6])), ValueError,
     "noise.stuck_on_rate \\+ stuck_off_rate must be <= 1 at every point"),
    (GOOD_BATCH._replace(adc_noise_lsb=["a", "b"]), TypeError,
     "noise.adc_noise_lsb must hold real numbers"),
], ids=["one point", "tuple", "rate 2 in a batch", "nan in a batch", "rates sum in a batch",
        "strings in a batch"])
def test_bad_sweep_noise(noise, error, message):
    with pytest.raises(error, match=message):
        sweeps.sweep(_evaluate, noise, SWEEP_KEYS)


# ---------------------------------------------------------------- evaluate_accuracy

MODEL = mlp((16, 8, 4))
PARAMS = MODEL.init(jax.random.key(0))
LABELS = np.arange(5) % 4
IMAGES = np.abs(RNG.normal(size=(5, 16))).astype(np.float32)
PROJECTING = CONFIG.replace(mapping=rx.MappingConfig(on_violation="project"))


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(keys=-1), ValueError, "keys must be a number of keys >= 1 .* got -1"),
    (dict(keys=0), ValueError, "keys must be a number of keys >= 1 .* got 0"),
    (dict(keys=jax.random.key(0)), ValueError, r"keys must be .* a \(n,\) array of typed jax"),
    (dict(layers={"fc9/w": PROJECTING}), ValueError,
     r"no crossbar product uses parameter 'fc9/w'; the products' parameters are: fc1/w, fc2/w"),
    (dict(layers={"fc1/w": PROJECTING, "fc2/w": "forms"}), TypeError,
     r"layers\['fc2/w'\] must be a CrossbarConfig or None \(digital\), got str"),
    (dict(y=np.eye(4, dtype=np.int32)[LABELS]), ValueError,
     r"need x \(N, ...\) and integer labels y \(N,\) .* got shapes \(5, 16\) and \(5, 4\); "
     r"for one-hot labels"),
    (dict(y=LABELS.astype(np.float32)), TypeError, "y must hold integer class labels"),
    (dict(y=LABELS + 4), ValueError, r"labels must lie in \[0, 3\] \(the model has 4 outputs\)"),
    (dict(seed=-1), ValueError, "seed must be an integer >= 0, got -1"),
    (dict(noise=(0.0,) * 6), TypeError, "noise must be a reram_emu.NoiseParameters"),
    (dict(scales={"fc1": 0.1}), ValueError, r"scales must be a dict \{layer name: input step\}"),
], ids=["keys -1", "keys 0", "one key", "per-layer config for no layer",
        "per-layer config str", "one-hot labels", "float labels", "labels out of range",
        "seed -1", "noise tuple", "scales by an unknown name"])
def test_bad_evaluate_accuracy(kwargs, error, message):
    arguments = {"y": LABELS, "layers": None, **kwargs}
    y, layers = arguments.pop("y"), arguments.pop("layers")
    with pytest.raises(error, match=message):
        f = analog(MODEL.apply, PROJECTING, layers=layers, nonnegative_inputs=True)
        evaluate_accuracy(f, PARAMS, IMAGES, y, **arguments)


# ---------------------------------------------------------------- datasets

def test_load_dataset_negative_seed():
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        load_dataset("digits", seed=-1)


# ---------------------------------------------------------------- the experiments command

def _command(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reram_emu.experiments", "run",
                           "noise_sensitivity", "--quick", "--no-progress", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_command_out_is_an_existing_file(tmp_path):
    blocker = tmp_path / "somefile"
    blocker.write_text("keep me")
    result = _command(blocker)
    assert result.returncode == 2, result.stderr
    assert f"error: the output folder {blocker} is an existing file; choose another --out" \
        in result.stderr
    assert "Traceback" not in result.stderr
    assert blocker.read_text() == "keep me"


def test_command_out_under_a_file_is_unwritable(tmp_path):
    blocker = tmp_path / "somefile"
    blocker.write_text("")
    result = _command(blocker / "report")
    assert result.returncode == 2, result.stderr
    assert f"error: cannot write to the output folder {blocker / 'report'}" in result.stderr
    assert "choose another --out" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_command_out_in_a_read_only_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = _command(locked / "report")
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert f"error: cannot write to the output folder {locked / 'report'}: Permission denied" \
        in result.stderr


def test_resume_after_an_interrupt_before_the_first_point(tmp_path):
    """Regression (Ctrl-C during training, before any point finished): results.csv was left
    holding an empty header line, and --resume then refused it as damaged."""
    def interrupted(*args):
        raise KeyboardInterrupt

    module = types.SimpleNamespace(
        NAME="early", DESCRIPTION="d", points=lambda quick: [{"i": 0}, {"i": 1}],
        prepare=interrupted, report=lambda rows, out, quick: f"{len(rows)} rows",
        evaluate=lambda context, batch, seed: [{"a": p["i"] + 0.5} for p in batch])
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment(module, tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "results.csv").read_text().strip() == "point"
    module.prepare = lambda *args: None
    record = runner.run_experiment(module, tmp_path / "r", resume=True, progress=False)
    assert record["rows"] == [{"i": 0, "a": 0.5}, {"i": 1, "a": 1.5}]
