"""Write tests/models/fixtures/openpi_training/: openpi's training augmentation, loss and step, recorded (not collected by pytest).

`tests/models/test_openpi_training_parity.py` checks that `recap_ray.models.augment` turns the same images and key
into the same images as openpi's `preprocess_observation(rng, obs, train=True)` (augmax 0.4.1 underneath); that
our `Pi05.compute_loss(rng, obs, actions, train=...)` gives openpi's `Pi0.compute_loss` for the same key (the same
split of the key into augmentation, noise and time); and that three of our training steps (`train.step.make_step`)
move the weights, the EMA and the metrics as three of openpi's `scripts/train.py:train_step` do, full fine-tune
and LoRA, from a state built by openpi's own `init_train_state`. pistar's value model trains through the same
openpi augmentation (its copy is unchanged in ybpy/pistar and pistar-world). Nothing of openpi or augmax is
copied into this repository.

How the committed fixture was made (the venv and source tree of make_openpi_fixture.py's docstring; that
script's tiny pi0.5 checkpoint, tests/models/fixtures/openpi_pi05/params, must exist):

    OPENPI_COMMIT=15a9616a00943ada6c20a0f158e3adb39df2ccac JAX_PLATFORMS=cpu nice \
        /tmp/s13/venvs/openpi/bin/python tests/interop/make_openpi_training_fixture.py /tmp/s13/p/openpi
  (about a minute; rerunning gives bit-identical outputs)

Cases: random uint8 images of three cameras (one non-wrist, two wrist) at 42 x 42 (the crop 0.95 x 42 = 39.9
truncates to 39) and 40 x 48 (not square: height and width must not be swapped), converted to [-1, 1] as
openpi's Observation.from_dict does, each augmented with two or one keys. Loss: the openpi_pi05 fixture's model
and inputs, `compute_loss(jax.random.key(seed), ..., train=True)` and `train=False`, per sample and step. Steps:
that model (full: EMA 0.99; LoRA: the fixture's "dummy_lora" with its recorded adapters, frozen leaves bfloat16,
no EMA, as openpi's pi05 LoRA configs), AdamW with a 1-step warmup to 1e-2 (large moves, so float32 rounding is
small beside them), three steps on that batch with key STEP_SEED. Kept: each step's loss, grad_norm and
param_norm, and for every parameter leaf the change over the three steps (and the EMA's) as its norm and its dot
products with PROJECTIONS fixed random vectors (default_rng([leaf index, j])), a few kB instead of the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np

import make_openpi_fixture as base  # beside this script: its stand-ins, patches and the tiny model's inputs
from leaf_moves import leaf_moves

OUT = base.REPO / "tests" / "models" / "fixtures" / "openpi_training"
CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
CASES = {"square": ((42, 42), 4, (0, 1)), "wide": ((40, 48), 2, (2,))}  # (height, width), batch, key seeds
LOSS_SEEDS = (3, 4)
STEP_SEED, NUM_STEPS, PROJECTIONS = 11, 3, 3
SCHEDULE = {"warmup_steps": 1, "peak_lr": 1e-2, "decay_steps": 4, "decay_lr": 1e-3}


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


def leaf_changes(before: dict, after: dict, prefix: str) -> dict[str, np.ndarray]:
    """Per leaf of two pure dicts: how far it moved (`leaf_moves`), as arrays named with `prefix`."""
    import flax

    flat_b, flat_a = (flax.traverse_util.flatten_dict(t, sep="/") for t in (before, after))
    names, norms, dots = leaf_moves(flat_b, flat_a, PROJECTIONS)
    return {f"{prefix}names": np.array(names), f"{prefix}norm": norms, f"{prefix}proj": dots}


def step_cases(train_py: Path, lora: bool) -> dict[str, np.ndarray]:
    """openpi's init_train_state then NUM_STEPS of its train_step, jitted as its main() does."""
    import functools
    import importlib.util
    import types

    import flax
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from openpi.models import pi0_config
    from openpi.training import optimizer as _optimizer
    from openpi.training import sharding, weight_loaders

    sys.modules["wandb"] = types.ModuleType("wandb")  # imported by train.py, used only in its main()
    sys.modules["openpi.training.config"] = types.SimpleNamespace(TrainConfig=object)  # tyro etc.; annotations only
    spec = importlib.util.spec_from_file_location("openpi_train_script", train_py)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)

    model_config = pi0_config.Pi0Config(pi05=True, **base.model_kwargs("dummy_lora" if lora else "dummy"))
    freeze = model_config.get_freeze_filter()
    config = types.SimpleNamespace(
        model=model_config, optimizer=_optimizer.AdamW(), lr_schedule=_optimizer.CosineDecaySchedule(**SCHEDULE),
        freeze_filter=freeze, trainable_filter=nnx.All(nnx.Param, nnx.Not(freeze)), ema_decay=None if lora else 0.99,
        weight_loader=weight_loaders.CheckpointWeightLoader(str(base.FIXTURE / "params")),
    )  # fmt: skip
    state, _ = train.init_train_state(config, jax.random.key(0), sharding.make_mesh(1), resume=False)
    if lora:  # the adapters the openpi_pi05 fixture recorded, instead of this init's
        pure = flax.traverse_util.flatten_dict(state.params.to_pure_dict(), sep="/")
        pure.update({k: jnp.asarray(v) for k, v in np.load(base.FIXTURE / "lora_leaves.npz").items()})
        state.params.replace_by_pure_dict(flax.traverse_util.unflatten_dict(pure, sep="/"))
        state = dataclasses.replace(state, opt_state=state.tx.init(state.params.filter(config.trainable_filter)))
    inputs = dict(np.load(base.FIXTURE / "inputs.npz"))
    batch = (base.observation(inputs), jnp.asarray(inputs["actions"]))
    before = state.params.to_pure_dict()
    step = jax.jit(functools.partial(train.train_step, config))
    prefix = "lora_" if lora else "full_"
    out = {f"{prefix}{k}": [] for k in ("loss", "grad_norm", "param_norm")}
    for _ in range(NUM_STEPS):
        state, info = step(jax.random.key(STEP_SEED), state, batch)
        for k in ("loss", "grad_norm", "param_norm"):
            out[f"{prefix}{k}"].append(float(info[k]))
    out = {k: np.array(v) for k, v in out.items()}
    out.update(leaf_changes(before, state.params.to_pure_dict(), prefix))
    if state.ema_params is not None:
        out.update(leaf_changes(before, state.ema_params.to_pure_dict(), f"{prefix}ema_"))
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
    steps = {**step_cases(args.openpi / "scripts" / "train.py", lora=False),
             **step_cases(args.openpi / "scripts" / "train.py", lora=True)}  # fmt: skip
    np.savez(OUT / "steps.npz", **steps)
    meta = {
        "openpi_commit": os.environ.get("OPENPI_COMMIT"), "augmax": augmax.__version__, "jax": jax.__version__,
        "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable), "numpy": np.__version__,
        "cameras": CAMERAS, "cases": {k: {"size": v[0], "batch": v[1], "seeds": v[2]} for k, v in CASES.items()},
        "loss_seeds": LOSS_SEEDS, "model": "tests/models/fixtures/openpi_pi05 (params, inputs.npz, lora_leaves.npz)",
        "step_seed": STEP_SEED, "num_steps": NUM_STEPS, "projections": PROJECTIONS, "schedule": SCHEDULE,
        "ema_decay": 0.99, "optimizer": "openpi AdamW() defaults",
    }  # fmt: skip
    (OUT / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for k, v in sorted({**losses, **steps}.items()):
        print(k, v.shape, v.ravel()[:3] if v.dtype.kind != "f" else float(np.abs(v).mean()))


if __name__ == "__main__":
    main()
