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
    remat: bool = True,
) -> tuple[Any, Any]:
    """Run `body(layer, carry, x) -> (carry, y)` over the stack; returns (carry, stacked ys).

    With `remat`, each layer's activations are recomputed in the backward pass (openpi's
    `nothing_saveable` policy); it changes nothing without differentiation.
    """
    graphdef, state = nnx.split(stacked)

    def step(c: Any, inputs: tuple[Any, Any]) -> tuple[Any, Any]:
        layer_state, x = inputs
        return body(nnx.merge(graphdef, layer_state), c, x)

    if remat:
        step = jax.checkpoint(step, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
    return jax.lax.scan(step, carry, (state, xs))


def depth_of(stacked: nnx.Module) -> int:
    """Number of layers in a stack (the shared leading axis of its leaves)."""
    leaves = jax.tree.leaves(nnx.state(stacked))
    return int(leaves[0].shape[0])
