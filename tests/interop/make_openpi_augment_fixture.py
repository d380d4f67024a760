"""Write tests/models/fixtures/openpi_augment/: openpi's training augmentation and loss, recorded (not collected by pytest).

`tests/models/test_openpi_augment_parity.py` checks that `recap_ray.models.augment` turns the same images and key
into the same images as openpi's `preprocess_observation(rng, obs, train=True)` (augmax 0.4.1 underneath), and
that our `Pi05.compute_loss(rng, obs, actions, train=...)` gives openpi's `Pi0.compute_loss` for the same key: the
same split of the key into augmentation, noise and time, the same augmented images. pistar's value model trains
through that same openpi function (its copy is unchanged in ybpy/pistar and pistar-world), so one fixture covers
both. Nothing of openpi or augmax is copied into this repository.

How the committed fixture was made (the venv and source tree of make_openpi_fixture.py's docstring; that
script's tiny pi0.5 checkpoint, tests/models/fixtures/openpi_pi05/params, must exist):

    OPENPI_COMMIT=15a9616a00943ada6c20a0f158e3adb39df2ccac JAX_PLATFORMS=cpu nice \
        /tmp/s13/venvs/openpi/bin/python tests/interop/make_openpi_augment_fixture.py /tmp/s13/p/openpi
  (about 20 s; rerunning gives bit-identical outputs)

Cases: random uint8 images of three cameras (one non-wrist, two wrist) at 42 x 42 (the crop 0.95 x 42 = 39.9
truncates to 39) and 40 x 48 (not square: height and width must not be swapped), converted to [-1, 1] as
openpi's Observation.from_dict does, each augmented with two or one keys. Loss: the openpi_pi05 fixture's model
and inputs, `compute_loss(jax.random.key(seed), ..., train=True)` and `train=False`, per sample and step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

import make_openpi_fixture as base  # beside this script: its stand-ins, patches and the tiny model's inputs

OUT = base.REPO / "tests" / "models" / "fixtures" / "openpi_augment"
CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
CASES = {"square": ((42, 42), 4, (0, 1)), "wide": ((40, 48), 2, (2,))}  # (height, width), batch, key seeds
LOSS_SEEDS = (3, 4)


def augment_cases(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """openpi's preprocess_observation(train=True) on each case's images, per key seed."""
    import jax
    import jax.numpy as jnp
    from openpi.models import model as _model

    out = {}
    for name, ((height, width), batch, seeds) in CASES.items():
        images = rng.integers(0, 256, (len(CAMERAS), batch, height, width, 3), dtype=np.uint8)
        out[f"{name}_images"] = images
        obs = _model.Observation(
            images={k: jnp.asarray(base.images_float(images[i])) for i, k in enumerate(CAMERAS)},
            image_masks={}, state=jnp.zeros((batch, 2), jnp.float32),
        )  # fmt: skip
        for seed in seeds:
            res = _model.preprocess_observation(jax.random.key(seed), obs, train=True, image_keys=CAMERAS,
                                                image_resolution=(height, width))  # fmt: skip
            out[f"{name}_seed{seed}"] = np.stack([np.asarray(res.images[k]) for k in CAMERAS])
    return out


def loss_cases() -> dict[str, np.ndarray]:
    """The openpi_pi05 fixture's model and inputs: compute_loss per sample and step, with and without training."""
    import jax
    import jax.numpy as jnp
    from openpi.models import model as _model
    from openpi.models import pi0_config

    config = pi0_config.Pi0Config(pi05=True, **base.model_kwargs("dummy"))
    model = config.load(_model.restore_params(base.FIXTURE / "params", restore_type=np.ndarray))
    inputs = dict(np.load(base.FIXTURE / "inputs.npz"))
    obs, actions = base.observation(inputs), jnp.asarray(inputs["actions"])
    out = {}
    for seed in LOSS_SEEDS:
        for train in (True, False):
            loss = model.compute_loss(jax.random.key(seed), obs, actions, train=train)
            out[f"loss_seed{seed}_{'train' if train else 'eval'}"] = np.asarray(loss)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("openpi", type=Path, help="openpi source tree (its src/ goes on sys.path)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.openpi / "src"))
    base.install_stand_ins()
    import augmax
    import jax

    meta_pi05 = json.loads((base.FIXTURE / "meta.json").read_text())
    base.patch_openpi(meta_pi05["vocab_size"])
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "augment.npz", **augment_cases(np.random.default_rng(0)))
    losses = loss_cases()
    np.savez(OUT / "loss.npz", **losses)
    meta = {
        "openpi_commit": os.environ.get("OPENPI_COMMIT"), "augmax": augmax.__version__, "jax": jax.__version__,
        "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable), "numpy": np.__version__,
        "cameras": CAMERAS, "cases": {k: {"size": v[0], "batch": v[1], "seeds": v[2]} for k, v in CASES.items()},
        "loss_seeds": LOSS_SEEDS, "model": "tests/models/fixtures/openpi_pi05 (params, inputs.npz)",
    }  # fmt: skip
    (OUT / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for k, v in sorted(losses.items()):
        print(k, v.shape, float(v.mean()))


if __name__ == "__main__":
    main()
