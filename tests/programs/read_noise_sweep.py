"""The program that crashed jaxlib 0.10.2 on CPUs with AVX2 but no AVX-512 (issue 11).

It is the compiled sweep of point 5 of the default study (``noise_sensitivity --quick``: the
digits MLP 64-128-64-10 read on FORMS m = 8 with read noise swept over 4 sigmas and 4 keys,
450 images): one jit of vmapped reads whose dots and reductions jaxlib 0.10.2 hands to YNNPACK
fusions, one of which segfaulted (``YnnFusionThunk`` -> ``make_transpose_impl`` ->
``slinky::fuse_contiguous_dims``). Measured under ``qemu-x86_64 -cpu Haswell-v4`` (AVX2, no
AVX-512): the full default study segfaulted at point 5 of 24 with YNNPACK fusions on and
finished with reram_emu's default option (YNNPACK fusions off). This extract, with random
polarized weights and YNNPACK fusions on, did NOT crash there (40 min under qemu), nor did a
single-layer noisy read: it is not yet a minimal reproducer, so the guard that is known to
catch the crash is CI running the default study itself (.ci/run). Kept as the closest
candidate for the next session to minimize.

Run as a script (the test suite runs it in a subprocess, so a crash fails one test instead
of killing the suite); prints ``ok <accuracies>``.
"""

import jax
import numpy as np

import reram_emu as rx
from reram_emu.datasets import load_dataset
from reram_emu.experiments import noise_sensitivity as ns
from reram_emu.models import mlp


def main() -> None:
    model = mlp((64, 128, 64, 10))
    params = model.init(jax.random.key(0))
    params = {name: {**layer, "w": rx.project_polarized(layer["w"], 8)}
              for name, layer in params.items()}
    data = load_dataset("digits", seed=0, flatten=True)
    setting = ns.SETTINGS[True]
    context = ns.build_context(model, {"FORMS m=8": params}, data.x_test[:setting["images"]],
                               data.y_test[:setting["images"]], data.x_train[:500],
                               setting["keys"])
    batch = [{"mapping": "FORMS m=8", "noise": "read noise", "sigma": float(s)}
             for s in setting["sigmas"]["read noise"]]
    rows = ns.evaluate(context, batch, seed=0)
    print("ok", [round(r["accuracy"], 4) for r in rows], flush=True)


if __name__ == "__main__":
    main()
