"""One jitted training step, shared by the value model and the policy; their losses.

A loss takes (model, rng, batch) and returns (scalar, aux): aux arrays (per-example values for
histograms) come out with the metrics. The step differentiates it with respect to
the trainable parameters only, clips and applies AdamW, updates the EMA, and reports loss, grad
norm, parameter norm (openpi's: weight matrices only) and learning rate. With the step's key
fold_in(rng, step) it is openpi's train_step, number for number (test_openpi_training_parity.py).
Gradient accumulation splits the batch into interleaved micro-batches (row i goes to micro-batch
i % k), so every micro-batch stays spread over all devices and the mean over micro-batches equals
the mean over the batch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from recap_ray.models import value as value_lib
from recap_ray.models import augment as augment_lib
from recap_ray.models import c51, siglip
from recap_ray.train import state as state_lib

Batch = dict[str, Any]
LossFn = Callable[[nnx.Module, jax.Array, Batch], tuple[jax.Array, dict[str, jax.Array]]]


def micro_batches(batch: Batch, k: int) -> Batch:
    """Leading axis B -> (k, B/k) with micro-batch i = rows i, i+k, i+2k, ..."""

    def one(x: jax.Array) -> jax.Array:
        if x.shape[0] % k:
            raise ValueError(f"batch of {x.shape[0]} does not split into {k} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(one, batch)


NOT_KERNELS = ("bias", "scale", "pos_embedding", "input_embedding")


def kernel_norm(state: nnx.State) -> jax.Array:
    """openpi's `param_norm` of these parameters: the global norm of the weight matrices (leaves of 2+ dims
    not named bias, scale, pos_embedding or input_embedding)."""

    def is_kernel(path: tuple[Any, ...], leaf: jax.Array) -> bool:
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]  # nnx adds a trailing `.value`
        return leaf.ndim > 1 and names[-1] not in NOT_KERNELS

    # summed in float32: a bfloat16 (frozen) base alone would round the norm to bfloat16
    kernels = [x.astype(jnp.float32) for p, x in jax.tree_util.tree_leaves_with_path(state) if is_kernel(p, x)]
    return optax.tree.norm(kernels)


def make_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    lr_schedule: optax.Schedule,
    *,
    ema_decay: float | None,
    grad_accum: int = 1,
    frozen_kernel_norm: float = 0.0,
    norm_groups: Mapping[str, tuple[nnx.filterlib.Filter, float]] | None = None,
) -> Callable[[state_lib.TrainState, Batch], tuple[state_lib.TrainState, dict[str, jax.Array]]]:
    """The (state, batch) -> (state, metrics) step; jit it with the shardings of the caller's mesh.

    param_norm counts the frozen weights as openpi's does; they never move, so the caller measures their part
    once (`kernel_norm(state.frozen)`) instead of every step re-reading the frozen base. `norm_groups` adds a
    `{name}_param_norm` per group as pistar logs them: {name: (filter, the group's frozen kernel norm)}.
    """

    def loss_and_grad(params: nnx.State, frozen: nnx.State, rng: jax.Array, batch: Batch) -> tuple[Any, Any]:
        def loss_of(p: nnx.State) -> tuple[jax.Array, dict[str, jax.Array]]:
            return loss_fn(nnx.merge(graphdef, p, frozen), rng, batch)

        return jax.value_and_grad(loss_of, has_aux=True)(params)

    def step(state: state_lib.TrainState, batch: Batch) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if grad_accum == 1:
            (loss, aux), grads = loss_and_grad(state.params, state.frozen, rng, batch)
        else:
            def accumulate(carry: Any, xs: tuple[jax.Array, Batch]) -> tuple[Any, dict[str, jax.Array]]:
                i, micro = xs
                (loss_i, aux_i), grads_i = loss_and_grad(state.params, state.frozen, jax.random.fold_in(rng, i), micro)
                return jax.tree.map(jnp.add, carry, (loss_i, grads_i)), aux_i

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            (loss, grads), aux = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum), micro_batches(batch, grad_accum)))
            loss, grads = jax.tree.map(lambda x: x / grad_accum, (loss, grads))
            aux = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), aux)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = None if state.ema is None else value_lib.ema_update(state.ema, params, ema_decay)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": jnp.sqrt(kernel_norm(params) ** 2 + frozen_kernel_norm**2),
            "learning_rate": lr_schedule(state.step),
            **{f"{name}_param_norm": jnp.sqrt(kernel_norm(params.filter(group)) ** 2 + frozen**2)
               for name, (group, frozen) in (norm_groups or {}).items()},
            **aux,
        }  # fmt: skip
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
        return new, metrics

    return step


def value_loss(cameras: tuple[str, ...], augment: bool) -> LossFn:
    """C51 cross-entropy on {images (B,C,S,S,3) uint8 (or float in [-1,1]), image_masks, tokens, token_mask, value_label}.

    Augmentation as pistar's compute_loss(train=True): openpi's preprocessing, keyed by the step's RNG itself.
    """

    def loss(model: nnx.Module, rng: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        images = siglip.pixels(batch["images"])
        if augment:
            out = augment_lib.augment(rng, {name: images[:, i] for i, name in enumerate(cameras)})
            images = jnp.stack([out[name] for name in cameras], axis=1)
        logits = model(images, batch["image_masks"], batch["tokens"], batch["token_mask"])
        values = c51.expected_value(logits, model.config.v_min, model.config.v_max)
        return c51.cross_entropy(logits, batch["value_label"]), {"values": values}

    return loss


def policy_loss(augment: bool) -> LossFn:
    """pi0.5 flow matching on an openpi observation batch plus `actions` (B, H, D): openpi's
    compute_loss(rng, train=augment), so one key gives openpi's augmentation, noise and times."""

    def loss(model: nnx.Module, rng: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        obs = {k: v for k, v in batch.items() if k != "actions"}
        return model.compute_loss(rng, obs, batch["actions"], train=augment), {}

    return loss
