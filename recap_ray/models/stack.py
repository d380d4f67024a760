"""Scanned layer stacks: one module whose parameters carry a leading depth axis.

openpi (via linen `nn.scan`) stores every repeated block once, with its leaves stacked along a new
first axis (`layers/...` (18, ...), `encoderblock/...` (27, ...)). These helpers build such a stack
in NNX and run it with `jax.lax.scan`, so checkpoint paths and shapes match.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
from flax import nnx

M = TypeVar("M", bound=nnx.Module)

# What each layer keeps for the backward pass (names of `jax.checkpoint_policies`, or "none": keep
# everything, no recomputation). openpi: nothing_saveable (least memory, the forward runs twice).
# The dots policies keep matrix-product outputs: less recomputation for more activation memory.
REMAT_POLICIES = ("nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable", "none")


def check_remat(policy: str) -> str:
    """`policy` if it is one of REMAT_POLICIES, else ValueError naming the known ones."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {policy!r}; known: {', '.join(REMAT_POLICIES)}")
    return policy


def create(factory: Callable[[nnx.Rngs], M], depth: int, rngs: nnx.Rngs) -> M:
    """Build `depth` independently initialised copies of `factory`'s module, stacked on axis 0."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: factory(nnx.Rngs(0))))
    keys = jax.random.split(rngs.params(), depth)
    state = jax.vmap(lambda key: nnx.state(factory(nnx.Rngs(params=key))))(keys)
    return nnx.merge(graphdef, state)


def scan(
    stacked: nnx.Module,
    body: Callable[[Any, Any, Any], tuple[Any, Any]],
    carry: Any,
    xs: Any = None,
    *,
    remat: str = "nothing_saveable",
) -> tuple[Any, Any]:
    """Run `body(layer, carry, x) -> (carry, y)` over the stack; returns (carry, stacked ys).

    `remat` (one of REMAT_POLICIES) says which of each layer's activations the backward pass keeps
    and which it recomputes; it changes no value, only memory and time, and nothing without
    differentiation.
    """
    graphdef, state = nnx.split(stacked)

    def step(c: Any, inputs: tuple[Any, Any]) -> tuple[Any, Any]:
        layer_state, x = inputs
        return body(nnx.merge(graphdef, layer_state), c, x)

    if check_remat(remat) != "none":
        step = jax.checkpoint(step, prevent_cse=False, policy=getattr(jax.checkpoint_policies, remat))
    return jax.lax.scan(step, carry, (state, xs))


