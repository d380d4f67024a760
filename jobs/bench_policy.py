"""Benchmark the pi0.6 policy: action-chunk latency, sampling throughput, one training step and MFU.

    python -m jobs.bench_policy --config pi06_yam_vial_30fps_infer       # real size, on a GPU
    python -m jobs.bench_policy --config pi06_tiny --train-batch 2       # smoke run on CPU

Weights are random (initialised on device inside jit); inference runs with bf16 parameters as
openpi serves them, training with f32 parameters and AdamW on the config's trainable leaves.
MFU = XLA's counted FLOPs of the compiled step / step time / `peak_tflops`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro
from flax import nnx

from recap_ray.configs import registry

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to measure."""

    config: str = "pi06_yam_vial_30fps_infer"  # registered policy config
    latency_batch: int = 1  # batch of the one-chunk latency measurement
    throughput_batch: int = 32  # batch of the throughput measurement
    num_steps: int = 10  # flow-matching Euler steps per chunk
    train_batch: int = 32  # batch of the training step (0: skip training)
    iters: int = 10  # timed repetitions (after one warm-up)
    peak_tflops: float = 989.0  # accelerator dense bf16 peak (H200/H100 SXM: 989)


def _obs(model_config: Any, batch: int, seed: int = 0) -> dict[str, Any]:
    """Random inputs of the model's shapes (images in [-1, 1], token ids, full masks): never zeros,
    which can time faster than real data."""
    obs, _ = model_config.fake_inputs(batch)
    rng = np.random.default_rng(seed)

    def one(s: jax.ShapeDtypeStruct) -> jax.Array:
        if s.dtype == jnp.bool_:
            return jnp.ones(s.shape, bool)
        if jnp.issubdtype(s.dtype, jnp.integer):
            return jnp.asarray(rng.integers(1, min(model_config.vocab_size, 32_000), s.shape), s.dtype)
        return jnp.asarray(rng.uniform(-1, 1, s.shape), s.dtype)

    return jax.tree.map(one, obs)


def _time(fn: Any, *args: Any, iters: int) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / iters


def _flops(jitted: Any, *args: Any) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", 0.0))


def main(bench: BenchConfig) -> dict[str, float]:
    """Run the measurements; returns them (seconds, actions/s, TFLOP/s, MFU)."""
    model_config = registry.get(bench.config).model
    graphdef, state = nnx.split(nnx.jit(lambda: model_config.create(nnx.Rngs(0)))())
    results: dict[str, float] = {}
    logger.info("device %s, config %s", jax.devices()[0].device_kind, bench.config)

    infer_state = jax.tree.map(lambda x: x.astype(jnp.bfloat16), state)

    @jax.jit
    def sample(st: Any, obs: dict[str, Any]) -> jax.Array:
        return nnx.merge(graphdef, st).sample_actions(jax.random.key(0), obs, num_steps=bench.num_steps)

    for name, batch in (("latency", bench.latency_batch), ("throughput", bench.throughput_batch)):
        if batch <= 0:
            continue
        seconds = _time(sample, infer_state, _obs(model_config, batch), iters=bench.iters)
        results[f"chunk_s_b{batch}"] = seconds
        results[f"chunks_per_s_b{batch}"] = batch / seconds
        logger.info("%s: batch %d, %.4f s per chunk call, %.1f chunks/s", name, batch, seconds, batch / seconds)
    del infer_state

    if bench.train_batch > 0:
        model = nnx.merge(graphdef, state)
        trainable = model_config.trainable_filter()
        optimizer = nnx.Optimizer(model, optax.adamw(2.5e-5, b1=0.9, b2=0.95, weight_decay=1e-10), wrt=trainable)
        _, act = model_config.fake_inputs(bench.train_batch)
        obs = _obs(model_config, bench.train_batch)
        actions = jnp.asarray(np.random.default_rng(1).standard_normal(act.shape), act.dtype)

        @nnx.jit
        def train_step(model: Any, optimizer: Any, obs: dict[str, Any], actions: jax.Array) -> jax.Array:
            grad_fn = nnx.value_and_grad(lambda m: m.compute_loss(jax.random.key(0), obs, actions),
                                         argnums=nnx.DiffState(0, trainable))  # fmt: skip
            loss, grads = grad_fn(model)
            optimizer.update(model, grads)
            return loss

        flops = _flops(train_step, model, optimizer, obs, actions)
        seconds = _time(train_step, model, optimizer, obs, actions, iters=bench.iters)
        results["train_step_s"] = seconds
        results["train_tflops"] = flops / seconds / 1e12
        results["mfu"] = flops / seconds / (bench.peak_tflops * 1e12)
        logger.info("train step: batch %d, %.4f s, %.1f TFLOP/s, MFU %.3f", bench.train_batch, seconds,
                    results["train_tflops"], results["mfu"])  # fmt: skip
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = main(tyro.cli(BenchConfig))
    print(json.dumps({"device": jax.devices()[0].device_kind, **out}, indent=2))  # noqa: T201
