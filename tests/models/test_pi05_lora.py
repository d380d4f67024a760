"""LoRA: one training step leaves every frozen leaf bit-identical and moves the LoRA leaves."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from recap_ray.configs import policy
from recap_ray.models import weights

CONFIG = dataclasses.replace(
    policy.TINY_MODEL, paligemma_variant="tiny_lora", action_expert_variant="tiny_expert_lora",
    max_token_len=8, action_horizon=4,
)  # fmt: skip


def test_real_size_freeze_selection_matches_openpi():
    config = policy.PI06_YAM_LORA.model
    flat = weights.flatten(config.abstract_params())
    frozen = [p for p in flat if config.is_frozen(p)]
    assert len(frozen) == 20 and all(p.startswith("PaliGemma/llm/") and "lora" not in p for p in frozen)
    trainable = sum(int(np.prod(v.shape)) for p, v in flat.items() if not config.is_frozen(p))
    assert trainable == 414_803_696 + 49_987_584 + 2_165_792  # SigLIP + LoRA + projections (~467M)
    full = policy.PI06_YAM.model
    assert not any(full.is_frozen(p) for p in weights.flatten(full.abstract_params()))


def test_one_lora_step_changes_only_trainable_leaves():
    model = CONFIG.create(nnx.Rngs(jax.random.key(0, impl="rbg")))
    # openpi casts frozen leaves to bfloat16 at init
    frozen = nnx.state(model, CONFIG.frozen_filter())
    nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.bfloat16), frozen))
    before = {p: np.asarray(v) for p, v in weights.flatten(weights.model_params(model)).items()}

    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=CONFIG.trainable_filter())
    obs, act = CONFIG.fake_inputs(2)
    obs = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype) * (0.5 if s.dtype == jnp.float32 else 1), obs)
    actions = jnp.linspace(-1, 1, np.prod(act.shape)).reshape(act.shape)

    @nnx.jit
    def step(model, optimizer, obs, actions):
        def loss_fn(m):
            return m.compute_loss(jax.random.key(1), obs, actions)

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, CONFIG.trainable_filter()))(model)
        optimizer.update(model, grads)
        return loss

    assert np.isfinite(float(step(model, optimizer, obs, actions)))
    after = {p: np.asarray(v) for p, v in weights.flatten(weights.model_params(model)).items()}
    frozen_paths = [p for p in before if CONFIG.is_frozen(p)]
    lora_paths = weights.lora_paths(weights.model_params(model))
    assert len(frozen_paths) == 20 and len(lora_paths) == 20
    for p in frozen_paths:
        assert after[p].dtype == jnp.bfloat16 and after[p].tobytes() == before[p].tobytes(), p
    for p in lora_paths:
        assert not np.array_equal(after[p], before[p]), p
