"""Learning-rate schedules and the optimizer chain against openpi's and pistar's published settings (hand-computed)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax

from recap_ray.train import optim


def test_openpi_cosine_schedule_hand_computed():
    """openpi CosineDecaySchedule defaults: warmup 1000 from peak/1001, peak 2.5e-5, cosine to 2.5e-6 at 30000."""
    lr = optim.schedule(optim.OptimizerConfig())
    peak, end = 2.5e-5, 2.5e-6
    np.testing.assert_allclose(float(lr(0)), peak / 1001, rtol=1e-4)
    np.testing.assert_allclose(float(lr(500)), peak / 1001 + (peak - peak / 1001) * 0.5, rtol=1e-4)
    np.testing.assert_allclose(float(lr(1000)), peak, rtol=1e-4)
    mid = 1000 + (30000 - 1000) // 2  # half-way through the cosine: (peak + end) / 2
    np.testing.assert_allclose(float(lr(mid)), (peak + end) / 2, rtol=1e-4)
    np.testing.assert_allclose(float(lr(30000)), end, rtol=1e-4)
    np.testing.assert_allclose(float(lr(50000)), end, rtol=1e-4)


def test_pistar_value_schedule_warmup_and_horizon():
    """pistar's train_value.py: warmup min(1000, N // 10); the cosine runs N - warmup steps after it."""
    long, short = optim.pistar_value_schedule(1e-4, 1e-5, 30000), optim.pistar_value_schedule(1e-4, 1e-5, 500)
    assert (long.warmup_steps, long.decay_steps) == (1000, 29000)
    assert (short.warmup_steps, short.decay_steps) == (50, 450)
    lr = optim.schedule(short)
    np.testing.assert_allclose(float(lr(50)), 1e-4, rtol=1e-4)
    # optax counts decay_steps from step 0, so pistar's cosine reaches its end at step 450, not 500
    np.testing.assert_allclose(float(lr(450)), 1e-5, rtol=1e-4)
    half = 50 + (450 - 50) / 2
    np.testing.assert_allclose(float(lr(int(half))), 1e-5 + (1e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)), rtol=1e-4)


def test_gradients_are_clipped_to_global_norm_one_before_adamw():
    """One step from zero moments: AdamW's update is -lr * g_hat / (|g_hat| + eps) per element, whatever the
    clip did to the gradient's size; the clip shows in the moments, which hold the clipped gradient."""
    config = optim.OptimizerConfig(warmup_steps=0, peak_lr=1e-3, decay_lr=1e-3, weight_decay=0.0)
    tx = optim.optimizer(config)
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.array([3.0, 4.0, 0.0, 0.0])}  # global norm 5 -> clipped to norm 1
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), [-1e-3, -1e-3, 0.0, 0.0], rtol=1e-4)
    adam_state = state[1][0]
    assert isinstance(adam_state, optax.ScaleByAdamState)
    np.testing.assert_allclose(np.asarray(adam_state.mu["w"]), 0.1 * np.array([0.6, 0.8, 0.0, 0.0]), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(adam_state.nu["w"]), 0.05 * np.array([0.36, 0.64, 0.0, 0.0]), rtol=1e-4)
