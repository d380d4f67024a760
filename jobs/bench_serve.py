"""Benchmark the served policy against calling it in-process: chunk latency and throughput.

    python -m jobs.bench_serve --config pi06_yam_vial_30fps_infer --tokenizer paligemma_tokenizer.model  # GPU
    python -m jobs.bench_serve --config pi06_tiny_infer --tokenizer T.model --num-gpus 0 --clients 1 2 4 8
    python -m jobs.bench_serve --config pi06_tiny_infer --tokenizer T.model --num-gpus 0 --num-steps 200 --clients 1  # CPU ratio

In-process: `Policy.infer` (batch 1) p50/p99, and `Policy.infer_batch` of c observations for each
c in `--clients`. Served, for each `--ingress` mode (behind Serve's proxy; `direct`: the ingress
replica takes connections itself), each on a local Ray of its own (`jobs.serve.start`): one websocket
client for p50/p99 of the round trip, then c concurrent clients (threads, one connection each) for
chunks/s. Without `--checkpoint`, random weights (bf16) are written as a checkpoint to a temporary
directory with unit norm stats and the given tokenizer. Prints JSON.

Where the served time goes, at batch 1 (medians): `model_p50_ms` is the jitted call alone and
`prepare_p50_ms` the observation's input transforms (both sides); the in-process p50 adds the output
transforms; the served `replica_p50_ms` is the model replica's time on a request (adds its queue and the
hand-off to the model's thread), `handle_p50_ms` the ingress's wait on the model deployment (adds the
ingress <-> model transport), and the served p50 adds the proxy (not with direct ingress), the websocket
and the msgpack codec on both ends.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jobs import cli
from jobs import serve as serve_job
from recap_ray.data import norm_stats
from recap_ray.models import checkpoints, weights
from recap_ray.serve import app_config, policy, ws_client

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    config: str = "pi06_yam_vial_30fps_infer"
    """Registered `_infer` policy config."""
    checkpoint: Path | None = None
    """Run or step directory; None: random weights in a temporary checkpoint."""
    tokenizer: Path | None = None
    """Sentencepiece model (required with random weights, or when the checkpoint has none)."""
    requests: int = 50
    """Timed batch-1 requests for p50/p99 (after warm-up)."""
    clients: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """Concurrent clients (in-process: batch sizes) of the throughput runs."""
    requests_per_client: int = 10
    """Requests each client sends in a throughput run."""
    max_batch_size: int = 32
    """Largest batch of the served model (and of the in-process runs)."""
    batch_wait_timeout_s: float = 0.0
    """Serve's wait for a batch to fill (0: batches form from requests queued while one runs)."""
    num_gpus: float | None = None
    """GPUs of the model replica; None: 1 when JAX sees a GPU, else 0."""
    port: int = 8000
    """Local port of the endpoint."""
    image_side: int = 224
    """Side of the three square uint8 CHW cameras sent."""
    ingress: tuple[Literal["proxy", "direct"], ...] = ("proxy", "direct")
    """Served through Serve's proxy, and/or with the ingress replica taking connections itself (--direct-ingress)."""
    num_steps: int = 10
    """Euler steps per chunk on both sides; more steps make a longer model call (on CPU, ~200 give the tiny
    model a chunk time like pi0.6's on an H200, so the served/in-process ratio means the same thing)."""


def random_checkpoint(config_name: str, tokenizer: Path, root: Path) -> Path:
    """A step directory with random bf16 weights, unit norm stats (14 dims) and `tokenizer`."""
    config = policy.infer_config(config_name)
    step = checkpoints.checkpoints_dir(root) / "0"
    model = nnx.jit(lambda: config.model.create(nnx.Rngs(0)))()
    weights.save(checkpoints.params_dir(step), jax.tree.map(lambda x: x.astype(jnp.bfloat16), weights.model_params(model)))
    del model
    unit = norm_stats.NormStats(mean=np.zeros(14), std=np.ones(14), q01=-np.ones(14), q99=np.ones(14))
    norm_stats.save(checkpoints.norm_stats_file(step, config.asset_id), {"state": unit, "actions": unit})
    shutil.copy(tokenizer, checkpoints.tokenizer_file(step))
    return step


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def in_process(bench: BenchConfig, checkpoint: Path, obs: dict[str, Any]) -> dict[str, Any]:
    """Latency and throughput of the policy called directly."""
    local = policy.Policy.load(checkpoint, bench.config, tokenizer_path=bench.tokenizer,
                               options=policy.PolicyOptions(max_batch_size=bench.max_batch_size,
                                                            num_steps=bench.num_steps))  # fmt: skip
    local.warmup()
    timings: list[dict[str, float]] = []
    result: dict[str, Any] = {"batch1": _percentiles(_timed(lambda: timings.append(local.infer(obs)["policy_timing"]),
                                                            bench.requests))}  # fmt: skip
    for name, key in (("prepare_p50_ms", "prepare_ms"), ("model_p50_ms", "infer_ms")):
        result["batch1"][name] = float(np.median([t[key] for t in timings]))
    for c in bench.clients:
        seconds = sum(_timed(lambda c=c: local.infer_batch([obs] * c), bench.requests_per_client))
        result[f"chunks_per_s_c{c}"] = c * bench.requests_per_client / seconds
        logger.info("in-process batch %d: %.1f chunks/s", c, result[f"chunks_per_s_c{c}"])
    return result


def _clients(uri: str, n: int, requests: int, obs: dict[str, Any]) -> tuple[float, list[float], list[dict[str, Any]]]:
    """n concurrent sessions, `requests` each: (wall seconds, per-request seconds, replies without actions)."""
    ready = threading.Barrier(n + 1)
    times: list[float] = []
    replies: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def robot() -> None:
        try:
            with ws_client.WebsocketClientPolicy(uri) as client:
                client.infer(obs)  # the session's first round trip is not timed
                ready.wait()
                for _ in range(requests):
                    start = time.perf_counter()
                    reply = client.infer(obs)
                    times.append(time.perf_counter() - start)
                    replies.append({k: v for k, v in reply.items() if k != "actions"})
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            errors.append(err)
            ready.abort()

    threads = [threading.Thread(target=robot, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start, times, replies


def _hops(replies: list[dict[str, Any]]) -> dict[str, float]:
    """Medians of the times the replies carry, outermost first: the ingress's wait on the model handle
    (`server_timing`), the model replica's time on the request (the handle's transport is the difference), the
    observation's input transforms and the model call alone (`policy_timing`; the replica's queue, thread hand-off
    and output transforms are the rest)."""
    fields = {"handle_p50_ms": ("server_timing", "infer_ms"), "replica_p50_ms": ("policy_timing", "replica_ms"),
              "prepare_p50_ms": ("policy_timing", "prepare_ms"), "model_p50_ms": ("policy_timing", "infer_ms")}  # fmt: skip
    return {name: float(np.median([r[a][b] for r in replies])) for name, (a, b) in fields.items()}


def served(bench: BenchConfig, checkpoint: Path, obs: dict[str, Any], num_gpus: float, direct: bool) -> dict[str, Any]:
    """Latency and throughput through the Serve application over websockets, on a local Ray of its own
    (direct ingress is a cluster-wide setting): behind Serve's proxy, or with `direct` ingress."""
    import ray
    from ray import serve

    app = app_config.AppConfig(checkpoint=str(checkpoint), config=bench.config,
                               tokenizer=str(bench.tokenizer) if bench.tokenizer else None,
                               max_batch_size=bench.max_batch_size, batch_wait_timeout_s=bench.batch_wait_timeout_s,
                               num_steps=bench.num_steps,
                               num_gpus=num_gpus, model_num_cpus=1.0 if num_gpus else 0.5, ingress_num_cpus=0.25,
                               model_autoscaling=app_config.Autoscaling(1, 1, 2.0 * bench.max_batch_size),
                               max_sessions_per_ingress=max(bench.clients) + 8, direct_ingress=direct)  # fmt: skip
    saved_env = dict(os.environ)
    # its own port: the other mode's proxy may hold its port for a while after shutting down
    uri, _ = serve_job.start(serve_job.Config(app=app, host="127.0.0.1", port=bench.port + int(direct)))
    try:
        _, times, replies = _clients(uri, 1, bench.requests, obs)
        result: dict[str, Any] = {"batch1": {**_percentiles(times), **_hops(replies)}}
        for c in bench.clients:
            wall, times, replies = _clients(uri, c, bench.requests_per_client, obs)
            sizes = [r["policy_timing"]["batch_size"] for r in replies]
            result[f"chunks_per_s_c{c}"] = c * bench.requests_per_client / wall
            result[f"p50_ms_c{c}"] = _percentiles(times)["p50_ms"]
            result[f"mean_batch_c{c}"] = float(np.mean(sizes))
            logger.info("served, %d clients: %.1f chunks/s, mean batch %.1f", c, result[f"chunks_per_s_c{c}"],
                        result[f"mean_batch_c{c}"])  # fmt: skip
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved_env)
    return result


def main(bench: BenchConfig) -> dict[str, Any]:
    """Run both sides; returns the figures (ms, chunks/s) and the served/in-process p50 ratio."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # in-process and replica share the GPU
    config = policy.infer_config(bench.config)
    if bench.tokenizer is not None and not bench.tokenizer.is_file():
        raise FileNotFoundError(f"--tokenizer {bench.tokenizer}: no such file")
    num_gpus = bench.num_gpus if bench.num_gpus is not None else float(jax.default_backend() == "gpu")
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        checkpoint = bench.checkpoint
        if checkpoint is None:
            if bench.tokenizer is None:
                raise ValueError("random weights need --tokenizer (a sentencepiece model matching the config's vocab)")
            checkpoint = random_checkpoint(bench.config, bench.tokenizer, Path(tmp))
        stats = norm_stats.load(checkpoints.norm_stats_file(checkpoints.resolve(checkpoint), config.asset_id))
        obs = policy.example_observation(len(stats["state"].q01), config.default_prompt, side=bench.image_side)
        local = in_process(bench, checkpoint, obs)
        gc.collect()
        remote = {mode: served(bench, checkpoint, obs, num_gpus, mode == "direct") for mode in bench.ingress}
    return {"device": jax.devices()[0].device_kind, "config": bench.config, "in_process": local, "served": remote,
            "p50_ratio": {mode: r["batch1"]["p50_ms"] / local["batch1"]["p50_ms"] for mode, r in remote.items()}}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(main(cli.parse(BenchConfig, __doc__)), indent=2))  # noqa: T201
