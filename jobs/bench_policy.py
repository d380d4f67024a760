"""Benchmark pi0.6 inference: action-chunk latency and sampling throughput.

    python -m jobs.bench_policy --config pi06_yam_vial_30fps_infer       # real size, on a GPU
    python -m jobs.bench_policy --config pi06_tiny --iters 2             # smoke run on CPU

Weights are random (initialised on device inside jit), cast to bf16 as openpi serves them.
Training steps and their MFU are `jobs/bench_train.py`'s (the trainers' own step).
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
from flax import nnx

from jobs import cli
from recap_ray.configs import registry

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to measure."""

    config: str = "pi06_yam_vial_30fps_infer"  # registered policy config
    latency_batch: int = 1  # batch of the one-chunk latency measurement
    throughput_batch: int = 32  # batch of the throughput measurement
    num_steps: int = 10  # flow-matching Euler steps per chunk
    iters: int = 10  # timed repetitions (after one warm-up)


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


def main(bench: BenchConfig) -> dict[str, float]:
    """Run the measurements; returns them (seconds per chunk call, chunks/s)."""
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

    return results


if __name__ == "__main__":
    out = main(cli.parse(BenchConfig, __doc__))
    print(json.dumps({"device": jax.devices()[0].device_kind, **out}, indent=2))  # noqa: T201
