"""Numerical parity of value-model training with pistar-world's own `scripts/train_value.py:train_step`.

The fixture (tests/models/fixtures/pistar_training/, ~0.2 MB) was written by
tests/interop/make_pistar_training_fixture.py: pistar's `create_train_state` (float32 tiny model of the
pistar_value fixture, its AdamW and warmup + cosine schedule over 10 steps, EMA 0.99) and three of its jitted
`train_step`s on that fixture's batch, with augmentation (compute_loss(train=True)), in each freeze mode
(`all_backbones`, pistar's default: the heads train; `siglip_only`; `none`). Ours starts from the same weights
(loaded from that fixture's pistar checkpoint), through `tasks.ValueTask` (loss with augmentation, freeze filter,
EMA decay, the norms it logs), and must report the same loss, grad norm and learning rate at each step, the same
four kernel norms pistar logs (SigLIP, Gemma, heads, trainable; frozen weights included), and move every leaf
and its EMA as pistar does.

Measured (jax 0.10 here, 0.5.3 there, CPU): loss to 6e-6 and grad norm to 1.3e-4 relative, the four norms to
2.1e-6, each leaf's move to 1.8e-4 of its size and its projections to 3.6e-3; allowed 1e-4, 1e-3, 1e-4, 1e-3,
1e-2. Each of these slips fails here: EMA decay 0.999, no augmentation, the augmentation keyed by a split of the
step key, pistar's warmup off by one step, no gradient clipping, siglip_only training the SigLIP tower.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from recap_ray.models import value_weights, weights
from recap_ray.train import optim, tasks
from recap_ray.train import state as state_lib
from recap_ray.train import step as step_lib
from tests.interop.leaf_moves import assert_moves_match
from tests.models.test_pistar_parity import FIXTURE as PISTAR, model_inputs, parity_config

FIXTURE = Path(__file__).parent / "fixtures" / "pistar_training"
META = json.loads((FIXTURE / "meta.json").read_text())
STEPS = dict(np.load(FIXTURE / "steps.npz"))
ZERO_GRADIENT = ("key/bias",)  # SigLIP's and the cross-attention's (see leaf_moves.assert_moves_match)


def _check_moves(prefix: str, before: dict, after: dict) -> None:
    assert_moves_match(STEPS, prefix, weights.flatten(before), weights.flatten(after), META["projections"], ZERO_GRADIENT)


@pytest.fixture(scope="module")
def pistar_meta() -> dict:
    return json.loads((PISTAR / "meta.json").read_text())


@pytest.fixture(scope="module")
def batch(pistar_meta) -> dict:
    inputs = dict(np.load(PISTAR / "inputs.npz"))
    images, masks, tokens, token_mask = model_inputs(pistar_meta, inputs)
    return {"images": images, "image_masks": masks, "tokens": tokens, "token_mask": token_mask,
            "value_label": inputs["targets"]}  # fmt: skip


@pytest.mark.parametrize("freeze_mode", META["freeze_modes"])
def test_three_value_training_steps_as_pistar(freeze_mode, pistar_meta, batch):
    config = dataclasses.replace(parity_config(pistar_meta), freeze_mode=freeze_mode)
    net = value_weights.load_model(config, checkpoint=PISTAR / "checkpoint", use_ema=False)
    schedule = META["schedule"]
    opt = optim.pistar_value_schedule(schedule["peak_lr"], schedule["decay_lr"], schedule["num_train_steps"])
    tx = optim.optimizer(opt)
    task = tasks.ValueTask(config, PISTAR / "tokenizer.model", init=None)
    graphdef, state = state_lib.create(net, task.trainable(), tx, use_ema=True, seed=0)
    state = state.replace(rng=jax.random.key_data(jax.random.key(META["step_seed"])))
    groups = {name: (f, float(step_lib.kernel_norm(state.frozen.filter(f)))) for name, f in task.norm_groups().items()}
    assert {f"{name}_param_norm" for name in groups} == set(META["norms"])
    step = jax.jit(step_lib.make_step(graphdef, tx, task.loss(), optim.schedule(opt), ema_decay=task.ema_decay,
                                      frozen_kernel_norm=float(step_lib.kernel_norm(state.frozen)),
                                      norm_groups=groups))  # fmt: skip
    before = state_lib.full_params(graphdef, state)
    ref = {k: STEPS[f"{freeze_mode}_{k}"] for k in ("loss", "grad_norm", "learning_rate", *META["norms"])}
    for i in range(META["num_steps"]):
        state, metrics = step(state, batch)
        np.testing.assert_allclose(float(metrics["learning_rate"]), ref["learning_rate"][i], rtol=1e-6)
        np.testing.assert_allclose(float(metrics["loss"]), ref["loss"][i], rtol=1e-4)
        np.testing.assert_allclose(float(metrics["grad_norm"]), ref["grad_norm"][i], rtol=1e-3)
        for name in META["norms"]:
            np.testing.assert_allclose(float(metrics[name]), ref[name][i], rtol=1e-4, err_msg=f"step {i} {name}")
        # openpi's param_norm (what we log) is pistar's three group norms together
        parts = [ref[name][i] for name in ("siglip_param_norm", "llm_param_norm", "head_param_norm")]
        np.testing.assert_allclose(float(metrics["param_norm"]), np.linalg.norm(parts), rtol=1e-4)
    _check_moves(f"{freeze_mode}_", before, state_lib.full_params(graphdef, state))
    _check_moves(f"{freeze_mode}_ema_", before, state_lib.full_params(graphdef, state, ema=True))


def test_fixture_covers_each_freeze_mode():
    """The recorded modes differ as their names say: all_backbones moves no img/ or llm/ leaf, siglip_only moves
    llm/ but no img/ leaf, none moves both; the input embedding never moves (pistar stops its gradient)."""
    for mode, img, llm in (("all_backbones", False, False), ("siglip_only", False, True), ("none", True, True)):
        names, norm = STEPS[f"{mode}_names"], STEPS[f"{mode}_norm"]
        moved = {str(n).split("/")[0] for n, x in zip(names, norm) if x > 0}
        assert ("img" in moved, "llm" in moved) == (img, llm), (mode, moved)
        assert {"cross_attention", "value_head"} <= moved, (mode, moved)
        assert norm[list(names).index("llm/embedder/input_embedding")] == 0, mode
