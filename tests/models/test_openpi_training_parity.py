"""Numerical parity of training with openpi's own code: augmentation, loss and optimizer steps.

The fixture (tests/models/fixtures/openpi_training/, ~0.8 MB) was written by
tests/interop/make_openpi_training_fixture.py running openpi 15a9616 (augmax 0.4.1, jax 0.5.3, CPU; see meta.json
and that script's docstring):
- augment.npz: random images of one non-wrist and two wrist cameras, 42 x 42 and 40 x 48, each through openpi's
  `preprocess_observation(key, train=True)`. Ours must give the same images for the same keys: the same random
  stream (one key per sample, shared by all cameras; augmax's splits and draws) and the same crop, resize,
  rotation and colour jitter. Measured max |diff| 1.6e-5 on values in [-1, 1] (bilinear sampling at coordinates
  rounded differently: augmax multiplies a 3x3 matrix, we expand it); allowed 1e-4. A crop centre off by 0.01
  pixel, a rotation of the other sign, a swapped height and width or another key split fail by 0.05 to 1.9.
- loss.npz: openpi's `compute_loss(key, train=True / False)` of the openpi_pi05 fixture's model: ours, from the
  same key, augments, draws noise and times as openpi does.
- steps.npz: three of openpi's `train_step`s from its `init_train_state` (full fine-tune with EMA; LoRA with
  bfloat16 frozen weights): ours (`train.step.make_step`, `train.optim`, `train.state`) must move every leaf as
  openpi does and report the same loss, grad_norm and param_norm.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recap_ray.models import augment, gemma, weights
from recap_ray.train import optim
from recap_ray.train import state as state_lib
from recap_ray.train import step as step_lib
from tests.interop.leaf_moves import assert_moves_match
from tests.models.test_openpi_parity import CONFIG, DUMMY_LORA, FIXTURE as PI05, _close, _load, load_lora_model, make_obs

FIXTURE = Path(__file__).parent / "fixtures" / "openpi_training"
META = json.loads((FIXTURE / "meta.json").read_text())
DATA = dict(np.load(FIXTURE / "augment.npz"))
STEPS = dict(np.load(FIXTURE / "steps.npz"))
ATOL = 1e-4


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return dict(np.load(PI05 / "inputs.npz"))


@pytest.fixture(scope="module")
def obs(inputs) -> dict:
    return make_obs(inputs)


@pytest.fixture(scope="module")
def model():
    return _load(CONFIG)


def _augment(name: str, seed: int) -> np.ndarray:
    images = DATA[f"{name}_images"].astype(np.float32) / 255.0 * 2.0 - 1.0  # openpi's uint8 -> [-1, 1]
    out = augment.augment(jax.random.key(seed), {k: jnp.asarray(images[i]) for i, k in enumerate(META["cameras"])})
    return np.stack([np.asarray(out[k]) for k in META["cameras"]])


@pytest.mark.parametrize("name,seed", [(name, seed) for name, case in META["cases"].items() for seed in case["seeds"]])
def test_same_images_as_openpi_for_the_same_key(name, seed):
    ref = DATA[f"{name}_seed{seed}"]
    ours = _augment(name, seed)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_fixture_exercises_every_branch():
    """The recorded cases must show what the test claims to check: geometry on the base camera only, the jitter
    on some samples and not others, and the two wrist cameras sharing their draws."""
    images = DATA["square_images"].astype(np.float32) / 255.0 * 2.0 - 1.0
    ref = DATA["square_seed0"]
    changed = np.abs(ref - images).max(axis=(2, 3, 4)) > 1e-3  # (camera, sample)
    assert changed[0].all()  # base: crop and rotation always
    assert changed[1].any() and not changed[1].all()  # wrist: jitter with p = 0.5
    np.testing.assert_array_equal(changed[1], changed[2])  # both wrists: one key per sample


@pytest.mark.parametrize("seed", META["loss_seeds"])
@pytest.mark.parametrize("train", [True, False])
def test_training_loss_as_openpi(model, obs, inputs, seed, train):
    """The same key gives our loss openpi's augmented images (train=True), noise and times."""
    ref = np.load(FIXTURE / "loss.npz")[f"loss_seed{seed}_{'train' if train else 'eval'}"]
    _close(model.compute_loss(jax.random.key(seed), obs, jnp.asarray(inputs["actions"]), train=train), ref.mean())


ZERO_GRADIENT = ("MultiHeadDotProductAttention_0/key/bias",)  # see leaf_moves.assert_moves_match


def _check_changes(prefix: str, before: dict, after: dict) -> None:
    # measured: norms to 1.1e-4 of the leaf's move, projections to 2.8e-3 (random vectors of the leaf's size)
    assert_moves_match(STEPS, prefix, weights.flatten(before), weights.flatten(after), META["projections"], ZERO_GRADIENT)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_three_training_steps_as_openpi(lora, monkeypatch, obs, inputs):
    monkeypatch.setitem(gemma.VARIANTS, "dummy_lora", DUMMY_LORA)
    config = dataclasses.replace(CONFIG, paligemma_variant="dummy_lora", action_expert_variant="dummy_lora") if lora else CONFIG  # fmt: skip
    net = state_lib.cast_frozen(load_lora_model() if lora else _load(CONFIG), config.frozen_filter())
    opt = optim.OptimizerConfig(**{k: META["schedule"][k] for k in ("warmup_steps", "peak_lr", "decay_steps", "decay_lr")})
    tx = optim.optimizer(opt)
    graphdef, state = state_lib.create(net, config.trainable_filter(), tx, use_ema=not lora, seed=0)
    state = state.replace(rng=jax.random.key_data(jax.random.key(META["step_seed"])))
    step = jax.jit(step_lib.make_step(graphdef, tx, step_lib.policy_loss(augment=True), optim.schedule(opt),
                                      ema_decay=None if lora else META["ema_decay"],
                                      frozen_kernel_norm=float(step_lib.kernel_norm(state.frozen))))  # fmt: skip
    batch = {**obs, "actions": jnp.asarray(inputs["actions"])}
    before = state_lib.full_params(graphdef, state)
    prefix = "lora_" if lora else "full_"
    for i in range(META["num_steps"]):
        state, metrics = step(state, batch)
        np.testing.assert_allclose(float(metrics["loss"]), STEPS[f"{prefix}loss"][i], rtol=1e-4)
        np.testing.assert_allclose(float(metrics["grad_norm"]), STEPS[f"{prefix}grad_norm"][i], rtol=1e-3)
        np.testing.assert_allclose(float(metrics["param_norm"]), STEPS[f"{prefix}param_norm"][i], rtol=1e-3)
    _check_changes(prefix, before, state_lib.full_params(graphdef, state))
    if not lora:
        _check_changes(f"{prefix}ema_", before, state_lib.full_params(graphdef, state, ema=True))
