"""The step-0 train state, built on the device mesh already split: no device ever holds all of it.

Building the model on one device and then sharding it needs the whole state there first: pi0.6's
full fine-tune is 3.35B f32 parameters, two AdamW moments and an EMA, ~54 GB on the first GPU of
every host before FSDP splits it, more than a 40 GB A100 holds although its 1/8 share would fit.
Here each device is given only its shard of the initial weights (`initial_weights`: read from a
checkpoint straight into the shardings, or placed from host arrays), and one jitted function with
FSDP `out_shardings` draws the random leaves, builds the optimizer state and the EMA on the mesh;
XLA drops the random draws of the leaves the checkpoint replaces. Per device: the loaded weights' share plus the state's share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from recap_ray.models import weights
from recap_ray.train import sharding, state as state_lib
from recap_ray.train.initial_weights import InitialWeights

Flat = Mapping[str, Any]  # {"a/b/c": array}: parameter leaves by their openpi path


@dataclasses.dataclass(frozen=True)
class Program:
    """The step-0 build: `build()` runs it; `memory()` is what it needs per device, before any of it runs."""

    graphdef: nnx.GraphDef
    abstract: state_lib.TrainState  # ShapeDtypeStruct leaves
    shardings: state_lib.TrainState  # NamedSharding leaves
    run: Any  # jitted: placed initial weights -> the state (`frozen_only`: its frozen part)
    initial: InitialWeights  # read by `build` only
    leaf_shardings: dict[str, NamedSharding]
    frozen_only: bool

    def build(self) -> tuple[nnx.GraphDef, state_lib.TrainState, state_lib.TrainState]:
        """(graphdef, state, shardings). With `frozen_only` the state's other leaves stay ShapeDtypeStructs for a
        checkpoint restore to fill (a resumed run needs no fresh optimizer state)."""
        out = self.run(self.initial.place(self.leaf_shardings))
        return self.graphdef, self.abstract.replace(frozen=out) if self.frozen_only else out, self.shardings

    def memory(self) -> dict[str, int]:
        """XLA's account of one device's bytes for the build: the placed initial weights (arguments), the state's
        share (output), scratch (temp), the arguments reused as outputs (aliased) and the total the device needs
        (arguments + output + temp - aliased). Compiles, allocates nothing."""
        given = {p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.leaf_shardings[p]) for p, s in self.initial.specs.items()}
        stats = self.run.lower(given).compile().memory_analysis()
        parts = {"arguments": stats.argument_size_in_bytes, "output": stats.output_size_in_bytes,
                 "temp": stats.temp_size_in_bytes, "aliased": stats.alias_size_in_bytes}  # fmt: skip
        return {**parts, "total": parts["arguments"] + parts["output"] + parts["temp"] - parts["aliased"]}


def program(
    create: Callable[[], nnx.Module],
    initial: InitialWeights,
    trainable: nnx.filterlib.Filter,
    tx: optax.GradientTransformation,
    *,
    use_ema: bool,
    seed: int,
    mesh: Mesh,
    frozen_only: bool = False,
    min_bytes: int = sharding.MIN_SHARD_BYTES,
) -> Program:
    """The build of `state_lib.create`'s step-0 state for a model from `create` with the weights `initial` (in the
    model's dtypes) in place, laid out with FSDP shardings. frozen_only: the program computes the frozen part
    alone."""
    specs = initial.specs

    def init(given: Flat) -> state_lib.TrainState:
        return state_lib.create(weights.with_leaves(create(), given), trainable, tx, use_ema=use_ema, seed=seed)[1]

    graphdef = state_lib.split(nnx.eval_shape(create), trainable)[0]
    abstract = jax.eval_shape(init, specs)
    shardings = sharding.fsdp_shardings(abstract, mesh, min_bytes)
    given_shardings = sharding.fsdp_shardings(specs, mesh, min_bytes)  # the same rule: a leaf's shape and dtype
    # donated: each placed weight becomes its state leaf in place instead of beside it
    if frozen_only:
        run = jax.jit(lambda given: init(given).frozen, in_shardings=(given_shardings,), out_shardings=shardings.frozen,
                      donate_argnums=0)  # fmt: skip
    else:
        run = jax.jit(init, in_shardings=(given_shardings,), out_shardings=shardings, donate_argnums=0)
    return Program(graphdef, abstract, shardings, run, initial, given_shardings, frozen_only)


def frozen_paths(create: Callable[[], nnx.Module], trainable: nnx.filterlib.Filter) -> set[str]:
    """The parameters `trainable` leaves out: all a resumed run takes from its initial weights, the rest coming
    from its checkpoint (none in a full fine-tune)."""
    frozen = nnx.state(nnx.eval_shape(create), nnx.All(nnx.Param, nnx.Not(trainable)))
    return set(weights.flatten(nnx.to_pure_dict(frozen)))
