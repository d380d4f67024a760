"""The train state: trainable and frozen parameters, optimizer state, EMA, step and RNG.

The model's graph definition stays outside (static); the state is a pytree that `jax.jit` shards
and orbax saves. Only trainable parameters get optimizer state and an EMA: frozen leaves never
move, so their EMA is themselves and `full_params(..., ema=True)` reassembles the EMA model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from recap_ray.models import weights


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: nnx.State  # trainable parameters
    frozen: nnx.State  # everything else in the model (frozen parameters, other variables)
    opt_state: optax.OptState  # optimizer state of `params`
    ema: nnx.State | None  # EMA of `params`, or None when the run keeps none
    rng: jax.Array  # base key; step keys are fold_in(rng, step)


def split(model: nnx.Module, trainable: nnx.filterlib.Filter) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable state, the rest)."""
    return nnx.split(model, trainable, ...)


def create(
    model: nnx.Module,
    trainable: nnx.filterlib.Filter,
    tx: optax.GradientTransformation,
    *,
    use_ema: bool,
    seed: int,
) -> tuple[nnx.GraphDef, TrainState]:
    """A step-0 state around `model`'s current weights (EMA starts at the weights, as pistar)."""
    graphdef, params, frozen = split(model, trainable)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=frozen,
        opt_state=tx.init(params),
        ema=jax.tree.map(jnp.copy, params) if use_ema else None,
        rng=jax.random.key_data(jax.random.key(seed)),
    )
    return graphdef, state


def cast_frozen(model: nnx.Module, frozen: nnx.filterlib.Filter) -> nnx.Module:
    """Cast the parameters `frozen` selects to bfloat16 in place, as openpi's init_train_state does (LoRA runs:
    the frozen base costs half the memory; the trainable leaves keep their precision)."""
    nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(model, frozen)))
    return model


def model(graphdef: nnx.GraphDef, state: TrainState, *, ema: bool = False) -> nnx.Module:
    """The model with the state's weights (the EMA weights when `ema` and the run keeps them)."""
    params = state.ema if ema and state.ema is not None else state.params
    return nnx.merge(graphdef, params, state.frozen)


def full_params(graphdef: nnx.GraphDef, state: TrainState, *, ema: bool = False) -> dict[str, Any]:
    """The whole model's parameters as the checkpoint's pure dict."""
    return weights.model_params(model(graphdef, state, ema=ema))

