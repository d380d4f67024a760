"""Write tests/models/fixtures/pistar_training/: pistar's value-model training steps, recorded (not collected by pytest).

`tests/models/test_pistar_training_parity.py` checks that three of our value-model training steps
(`train.step.make_step` with `step.value_loss`, `train.optim.pistar_value_schedule`, `train.state`) move the weights,
the EMA and the metrics as three of pistar-world's `scripts/train_value.py:train_step` do, from a state built by its
own `create_train_state`, in each of its freeze modes. Nothing of pistar is copied into this repository: the two
functions (and the helpers they call) are read from that script with `ast` and run unchanged, as
make_pistar_fixture.py does (importing the script drags in its data pipeline, lerobot, torch, wandb).

How the committed fixture was made (the venv and source tree of make_pistar_fixture.py's docstring; that
script's fixture, tests/models/fixtures/pistar_value/, must exist):

    nice /tmp/s13/venvs/pistar/bin/python tests/interop/make_pistar_training_fixture.py /tmp/s13/v/pw
  (about a minute; rerunning gives bit-identical outputs)

The model: the pistar_value fixture's tiny model in float32, built by create_train_state from the seed that made
that fixture's `params` (checked leaf for leaf against its checkpoint). The batch: that fixture's inputs (two
cameras at 224, one wrist image masked out, scalar targets), augmented as pistar trains: compute_loss(train=True)
runs openpi's preprocess_observation on the step's key fold_in(STEP_SEED, step). The optimizer: pistar's (clip 1,
AdamW b2 0.95, warmup + cosine) over 10 steps (its default warmup: 1 step) to a peak of 1e-2, so the moves are
large beside float32 rounding; EMA 0.99 (pistar's default). Kept per freeze mode: each step's loss, grad_norm, learning rate and
pistar's four kernel norms (siglip, llm, head, trainable), and every parameter leaf's change over the three steps
(and its EMA's) as a norm and PROJECTIONS projections (tests/interop/leaf_moves.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import sys
from pathlib import Path

import make_pistar_fixture as base  # beside this script: pistar's set-up at the tiny size, the stand-ins
from leaf_moves import leaf_moves

FIXTURE = base.OUT_DEFAULT
OUT = FIXTURE.parent / "pistar_training"
FREEZE_MODES = ("all_backbones", "siglip_only", "none")
STEP_SEED, NUM_STEPS, PROJECTIONS = 11, 3, 3
SCHEDULE = {"num_train_steps": 10, "peak_lr": 1e-2, "decay_lr": 1e-3}  # warmup: pistar's default, min(1000, N // 10)
EMA_DECAY = 0.99  # create_train_state's and train_step's default
NORMS = ("siglip_param_norm", "llm_param_norm", "head_param_norm", "trainable_param_norm")
SCRIPT_NAMES = (
    "TrainState", "_is_siglip_path", "_is_llm_path", "_make_trainable_filter", "_make_group_filter",
    "_kernel_param_norm", "create_train_state", "train_step",
)  # fmt: skip


def train_value_functions(pistar_root: Path) -> dict:
    """The training functions of pistar's scripts/train_value.py, run from its unchanged source."""
    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp
    import optax

    from openpi.models import model as _model
    from openpi.shared import array_typing as at
    from openpi.shared import console, nnx_utils

    script = pistar_root / "scripts" / "train_value.py"
    namespace = {
        "__name__": "train_value", "dataclasses": dataclasses, "nnx": nnx, "optax": optax, "jax": jax, "jnp": jnp,
        "at": at, "_model": _model, "nnx_utils": nnx_utils, "console": console, "logging": logging,
        "ValueModelConfig": object, "__file__": str(script),
    }  # fmt: skip
    return base._from_script(script, SCRIPT_NAMES, namespace)


def flat(state) -> dict:
    """An nnx.State as a '/'-keyed dict of numpy arrays."""
    import flax
    import numpy as np

    return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(state.to_pure_dict(), sep="/").items()}


def checkpoint_params() -> dict:
    """The pistar_value fixture's saved `params`, flattened."""
    import flax
    import numpy as np
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(str((FIXTURE / "checkpoint" / f"step_{base.STEP:08d}").resolve()))
    return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(restored["params"], sep="/").items()}


def steps(fns: dict, cfg, freeze_mode: str, obs, target, saved: dict) -> dict:
    """create_train_state, then NUM_STEPS of train_step (jitted, as train_value.py's main jits it)."""
    import jax
    import numpy as np

    state, tx, schedule = fns["create_train_state"](
        cfg, SCHEDULE["num_train_steps"], jax.random.key(base.SEED), peak_lr=SCHEDULE["peak_lr"],
        decay_lr=SCHEDULE["decay_lr"], freeze_mode=freeze_mode,
    )  # fmt: skip
    before = flat(state.params)
    assert sorted(before) == sorted(saved) and all(np.array_equal(before[k], saved[k]) for k in saved), "init"
    model_def = state.model_def

    @jax.jit
    def step(params, opt_state, ema_params, step_number, rng, observation, target):
        state = fns["TrainState"](step_number, params, model_def, opt_state, ema_params)
        new, info = fns["train_step"](state, tx, rng, observation, target, freeze_mode=freeze_mode)
        return new.params, new.opt_state, new.ema_params, new.step, info

    prefix = f"{freeze_mode}_"
    out = {f"{prefix}{k}": [] for k in ("loss", "grad_norm", "learning_rate", *NORMS)}
    params, opt_state, ema, number = state.params, state.opt_state, state.ema_params, state.step
    for _ in range(NUM_STEPS):
        out[f"{prefix}learning_rate"].append(float(schedule(number)))
        params, opt_state, ema, number, info = step(params, opt_state, ema, number, jax.random.key(STEP_SEED), obs, target)  # fmt: skip
        for k in ("loss", "grad_norm", *NORMS):
            out[f"{prefix}{k}"].append(float(info[k]))
    out = {k: np.array(v) for k, v in out.items()}
    for name, after in (("", params), ("ema_", ema)):
        names, norms, dots = leaf_moves(before, flat(after), PROJECTIONS)
        out |= {f"{prefix}{name}names": np.array(names), f"{prefix}{name}norm": norms, f"{prefix}{name}proj": dots}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pistar_root", type=Path, help="pistar-world tree (src/, scripts/, gemma/, packages/)")
    args = parser.parse_args()
    root = args.pistar_root.resolve()
    pistar = base.setup(root)
    import jax
    import jax.numpy as jnp
    import numpy as np

    fns = train_value_functions(root)
    inputs = dict(np.load(FIXTURE / "inputs.npz"))
    images = {cam: inputs[f"image_{cam}"] for cam in base.CAMERAS}
    masks = {cam: inputs[f"mask_{cam}"] for cam in base.CAMERAS}
    obs = base.observation(images, masks, inputs["tokens"], inputs["token_mask"], pistar.cfg32.action_dim)
    target = jnp.asarray(inputs["targets"])
    saved = checkpoint_params()
    out = {}
    for mode in FREEZE_MODES:
        out |= steps(fns, pistar.cfg32, mode, obs, target, saved)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "steps.npz", **out)
    meta = {
        "source": f"ybpy/pistar-world {base.PISTAR_COMMIT} scripts/train_value.py",
        "generator": "tests/interop/make_pistar_training_fixture.py",
        "model": "tests/models/fixtures/pistar_value (float32; checkpoint `params`, inputs.npz, targets)",
        "python": sys.version.split()[0],
        "versions": {p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy")},
        "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "freeze_modes": FREEZE_MODES, "step_seed": STEP_SEED, "num_steps": NUM_STEPS, "projections": PROJECTIONS,
        "schedule": SCHEDULE, "ema_decay": EMA_DECAY, "norms": NORMS,
    }  # fmt: skip
    (OUT / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for k, v in sorted(out.items()):
        if v.dtype.kind == "f" and v.ndim == 1:
            print(k, v)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
