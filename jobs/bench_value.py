"""Value-model inference throughput: frames/s, FLOPs per frame and MFU at a registered config.

    python -m jobs.bench_value                          # real size, bf16, batches 8/32/128
    python -m jobs.bench_value --config value_tiny --batch-sizes 2 4 --iters 3   # CPU smoke run

Random weights in the compute dtype (or real ones: `--vlm-bundle DIR` / `--checkpoint DIR`), two cameras at the tower's size given as uint8, full
48-token prompts. Timed: the jitted step (normalise, SigLIP over every camera, fusion, Gemma3,
C51 readout) on inputs already on the device, plus once more with the uint8 frames sent from the
host each call. FLOPs: counted from the architecture (2 per multiply-add, attention over the full
masked sequence as computed) and XLA's own cost analysis. MFU = counted FLOP/s / `peak_tflops`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jobs import cli
from recap_ray.configs import registry
from recap_ray.models import value_infer, value_weights
from recap_ray.models.value_config import ValueModelConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Args:
    """Command line of `jobs.bench_value`."""

    config: str = "value"  # registered value-model config
    dtype: str = "bfloat16"  # compute and parameter dtype for inference
    batch_sizes: tuple[int, ...] = (8, 32, 128)  # frames per call
    iters: int = 20  # timed calls per batch size
    warmup: int = 3  # untimed calls after compiling
    peak_tflops: float = 989.0  # dense bf16 peak of the accelerator (H100/H200 SXM datasheet)
    out: str | None = None  # also write the results as JSON here
    vlm_bundle: str | None = None  # time real weights from a vlm_ckpt bundle (default: random weights)
    checkpoint: str | None = None  # time real weights from a pistar value checkpoint (EMA params)


def flops_per_frame(config: ValueModelConfig) -> dict[str, float]:
    """Forward FLOPs of one frame by part (2 per multiply-add), as the code computes them."""
    s, g, cams = config.siglip, config.llm, len(config.cameras)
    n, d, f = s.num_patches, s.width, s.mlp_dim
    siglip = cams * (
        2 * n * s.patch_size**2 * 3 * d  # patch embedding
        + s.depth * (2 * n * d * d * 4 + 2 * 2 * n * n * d + 2 * 2 * n * d * f)
    )
    w, t, img = g.width, config.max_token_len, cams * n
    projection = 2 * img * d * w
    cross = 2 * t * w * w * 2 + 2 * img * w * w * 2 + 2 * 2 * t * img * w
    length = img + t
    qdim, kvdim = g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim
    gemma = g.depth * (
        2 * length * w * (qdim + 2 * kvdim)  # q, k, v
        + 2 * 2 * length * length * qdim  # logits and weighted values
        + 2 * length * qdim * w  # output projection
        + 2 * length * w * g.mlp_dim * 3  # gate, up, down
    )
    head = 2 * w * (w // 2) + 2 * (w // 2) * config.num_atoms
    parts = {"siglip": siglip, "projection": projection, "cross_attention": cross, "gemma3": gemma, "head": head}
    return {k: float(v) for k, v in parts.items()} | {"total": float(sum(parts.values()))}


def random_state(config: ValueModelConfig, dtype: str, seed: int = 0) -> tuple[nnx.GraphDef, Any]:
    """Graph of `config` and random parameters made on the device in `dtype` (nothing in f32)."""
    graphdef, abstract = nnx.split(config.abstract_model())
    leaves, treedef = jax.tree.flatten(abstract)

    @jax.jit
    def make(key: jax.Array) -> list[jax.Array]:
        keys = jax.random.split(key, len(leaves))
        return [0.02 * jax.random.normal(k, x.shape, jnp.dtype(dtype)) for k, x in zip(keys, leaves)]

    return graphdef, jax.tree.unflatten(treedef, make(jax.random.key(seed)))


def _xla_flops(compiled: Any) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def bench(args: Args) -> list[dict[str, Any]]:
    """Run the benchmark; one result dict per batch size."""
    base = registry.get(args.config)
    config = value_infer.inference_config(base, args.dtype)
    if args.vlm_bundle or args.checkpoint:
        model = value_weights.load_model(base, checkpoint=args.checkpoint, bundle_dir=args.vlm_bundle)
        graphdef = nnx.graphdef(config.abstract_model())
        state = jax.device_put(value_infer.cast_params(nnx.state(model), args.dtype))
        del model
    else:
        graphdef, state = random_state(config, args.dtype)
    step = value_infer.value_step(graphdef)
    counted = flops_per_frame(config)
    cams, size, length = len(config.cameras), config.image_size, config.max_token_len
    device = jax.devices()[0]
    results = []
    for batch in args.batch_sizes:
        rng = np.random.default_rng(batch)
        host = (
            rng.integers(0, 256, (batch, cams, size, size, 3), dtype=np.uint8),
            np.ones((batch, cams), bool),
            rng.integers(4, config.llm.vocab_size, (batch, length)).astype(np.int32),
            np.ones((batch, length), bool),
        )
        on_device = jax.device_put(host)
        t0 = time.perf_counter()
        compiled = step.lower(state, *on_device).compile()
        compile_s = time.perf_counter() - t0
        for _ in range(args.warmup):
            compiled(state, *on_device).block_until_ready()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            out = compiled(state, *on_device)
        out.block_until_ready()
        device_s = (time.perf_counter() - t0) / args.iters
        t0 = time.perf_counter()
        for _ in range(args.iters):
            np.asarray(compiled(state, *jax.device_put(host)))
        transfer_s = (time.perf_counter() - t0) / args.iters
        v = np.asarray(out)
        xla = _xla_flops(compiled)
        fps = batch / device_s
        results.append({
            "config": args.config, "dtype": args.dtype, "device": device.device_kind, "batch": batch,
            "ms_per_call": 1e3 * device_s, "frames_per_s": fps, "frames_per_s_with_transfer": batch / transfer_s,
            "gflops_per_frame": counted["total"] / 1e9,
            "xla_gflops_per_frame": None if xla is None else xla / batch / 1e9,
            "achieved_tflops": counted["total"] * fps / 1e12,
            "mfu": counted["total"] * fps / (args.peak_tflops * 1e12),
            "compile_s": compile_s, "v_in_range": bool(np.all((v >= -1) & (v <= 0))),
        })
        logger.info("%s", json.dumps(results[-1]))
    return results


def main(args: Args) -> list[dict[str, Any]]:
    """Benchmark, log a table, optionally write JSON to `args.out`."""
    results = bench(args)
    parts = flops_per_frame(value_infer.inference_config(registry.get(args.config), args.dtype))
    logger.info("counted GFLOPs per frame by part: %s", {k: round(v / 1e9, 2) for k, v in parts.items()})
    for r in results:
        logger.info(
            "batch %4d: %8.1f frames/s (%7.1f with host transfer), %.1f ms/call, %.1f GFLOP/frame "
            "(XLA %s), %.0f TFLOP/s, MFU %.1f%%",
            r["batch"], r["frames_per_s"], r["frames_per_s_with_transfer"], r["ms_per_call"],
            r["gflops_per_frame"], r["xla_gflops_per_frame"] and f"{r['xla_gflops_per_frame']:.1f}",
            r["achieved_tflops"], 100 * r["mfu"],
        )  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"flops_per_frame": parts, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main(cli.parse(Args, __doc__))
