"""Optimizers and learning-rate schedules as openpi and pistar build them (optax)."""

from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Global-norm clip, then AdamW (decoupled weight decay) on a warmup + cosine schedule."""

    peak_lr: float = 2.5e-5  # schedule peak
    decay_lr: float = 2.5e-6  # final learning rate
    warmup_steps: int = 1000  # linear warmup from peak/(warmup+1)
    decay_steps: int = 30_000  # cosine horizon, counted from step 0 (includes warmup)
    b1: float = 0.9  # AdamW beta1
    b2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 1e-10  # decoupled weight decay
    clip_gradient_norm: float = 1.0  # global-norm clip before AdamW


def pistar_value_schedule(peak_lr: float, decay_lr: float, num_steps: int) -> OptimizerConfig:
    """pistar's train_value.py: warmup W = min(1000, N//10), decay_steps = max(N - W, 1)."""
    warmup = min(1000, num_steps // 10)
    return OptimizerConfig(peak_lr=peak_lr, decay_lr=decay_lr, warmup_steps=warmup, decay_steps=max(num_steps - warmup, 1))


def schedule(config: OptimizerConfig) -> optax.Schedule:
    """The learning rate as a function of the step (optax.warmup_cosine_decay_schedule)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=config.peak_lr / (config.warmup_steps + 1),
        peak_value=config.peak_lr,
        warmup_steps=config.warmup_steps,
        decay_steps=config.decay_steps,
        end_value=config.decay_lr,
    )


def optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """clip_by_global_norm then AdamW with the schedule."""
    return optax.chain(
        optax.clip_by_global_norm(config.clip_gradient_norm),
        optax.adamw(
            schedule(config), b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay
        ),
    )
