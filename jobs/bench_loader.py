"""Training input throughput: the batches the trainers' loader makes, against the rate a GPU takes them.

    python -m jobs.bench_loader --height 480 --width 640 --threads 0 1 2 --batches 4   # YAM's cameras
    python -m jobs.bench_loader --configs pi06_tiny --height 24 --width 32 --batch 4    # smoke run

`bench_train` times the step on batches already on the device; this times what feeds it: one process's
`train.batches.BatchLoader` with each config's own sample maker (the task's, as the trainer builds it:
three cameras decoded from AV1 at the size asked, resized with pad to the model's 224, state, action chunk,
norm stats, the prompt with adv_ind tokenized; the value model's images, prompt and value_label) on a
generated YAM-like v3.0 dataset (`bench_data.make_dataset`: smooth moving gradients, which decode faster
than camera images, with `--noise` levels of noise for camera-like detail; `--root` keeps it). Each run is a fresh loader, timed from its first `next()` (opening
decoders and the first batch are timed, with one batch in flight a thread); thread counts alternate
`repeats` times and the medians are reported, side by side against the synchronous loader (`threads` 0) of
the same run. From the synchronous loader's CPU time per example and the examples/s one GPU consumes (`--step-examples-per-s`, default the H200 figures
of BENCHMARKS.md) the report gives the loader cores one GPU needs. Also: the share of a batch's time spent
decoding frames (the rest is the sample transforms), and the speed a pure-Python thread keeps beside the
synchronous loader (how long the loader holds the GIL, so how far its threads can scale on a host with more
cores than this one). The tokenizer is a small one trained here unless
`--tokenizer` names the real one (tokenizing is a small share either way). Prints JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jobs import bench_data, cli
from recap_ray import demo_assets
from recap_ray.configs import registry
from recap_ray.data import dataset as dataset_mod
from recap_ray.data import versions
from recap_ray.models.value_config import ValueModelConfig
from recap_ray.train import batches, samples, tasks

# examples/s one H200 consumes (BENCHMARKS.md, "Training steps"): pi0.6 full fine-tune at batch 64 and the value
# model at batch 32
STEP_RATES = {"policy": 27.5, "value": 275.0}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to measure."""

    configs: tuple[str, ...] = ("pi06_yam_vial_30fps_from_sft_recap", "value")
    threads: tuple[int, ...] = (0, 1, 2)  # loader threads; 0 decodes in next(), the synchronous baseline
    batch: int = 32  # examples per batch (one process's share of the global batch)
    batches: int = 4  # timed batches per run
    repeats: int = 2  # alternating runs per thread count
    episodes: int = 6
    frames: int = 150
    height: int = 480  # YAM records 640x480
    width: int = 640
    noise: int = 0  # +- levels of uniform noise on the frames: camera-like detail decodes slower than smooth gradients
    root: str = ""  # keep the generated dataset here: reused with the same arguments, refused otherwise (never overwritten)
    tokenizer: Path | None = None  # default: a small sentencepiece model trained here
    step_examples_per_s: float | None = None  # one GPU's consumption; default STEP_RATES by kind
    seed: int = 0


def _task(name: str, tokenizer: Path) -> tasks.Task:
    config = registry.get(name)
    if isinstance(config, ValueModelConfig):
        return tasks.ValueTask(config, tokenizer_path=tokenizer, init=None)
    return tasks.PolicyTask(config, tokenizer_path=tokenizer, init="none", norm_stats_path=None)


def _run(root: Path, maker: samples.SampleMaker, bench: BenchConfig, threads: int, epoch: int, fingerprint: str) -> tuple[float, float]:
    """Wall and CPU seconds from a fresh loader to its `bench.batches`-th batch (one batch in flight a thread, the
    decoders' opening included); `epoch` picks other samples for each run. The CPU time is exact only without
    threads (with them it also holds the batches still in flight at the end)."""
    with batches.BatchLoader(root, maker, global_batch=bench.batch, seed=bench.seed + epoch, threads=threads,
                             prefetch=max(threads, 1), fingerprint=fingerprint) as loader:  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(bench.batches):
            batch = next(loader)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sizes = {len(x) for x in _arrays(batch)}
    if sizes != {bench.batch}:
        raise RuntimeError(f"the loader made batches of {sorted(sizes)}, not {bench.batch}")
    return wall, cpu


def _arrays(batch: Mapping[str, Any]) -> list[np.ndarray]:
    return [a for v in batch.values() for a in (_arrays(v) if isinstance(v, Mapping) else [v])]


@dataclasses.dataclass(frozen=True)
class _DecodeOnly:
    """A sample maker that keeps nothing: `samples.make_batch` with it decodes the frames and does no more."""

    video_keys: tuple[str, ...]
    column_keys: tuple[str, ...]

    def __call__(self, key: samples.SampleKey, images: Any, columns: Any) -> dict[str, Any]:
        return {}


def _decode_share(root: Path, maker: samples.SampleMaker, bench: BenchConfig) -> float:
    """CPU time of decoding a batch's frames (`samples.make_batch` with `_DecodeOnly`) over that of making the whole
    batch, synchronously on the same keys."""
    decode_only = _DecodeOnly(maker.video_keys, maker.column_keys)
    with batches.BatchLoader(root, maker, global_batch=bench.batch, seed=bench.seed, threads=0) as loader:
        keys = [loader.keys(0, b) for b in range(1, 1 + bench.batches)]
        with dataset_mod.open(root) as ds:
            samples.make_batch(ds, loader.columns, maker, loader.keys(0, 0))  # warm: decoders open
            seconds = {}
            for name, use in (("decode", decode_only), ("whole", maker)):
                start = time.process_time()
                for ks in keys:
                    samples.make_batch(ds, loader.columns, use, ks)
                seconds[name] = time.process_time() - start
    return seconds["decode"] / seconds["whole"]


def _spin_rate(seconds: float, during: Callable[[], Any] | None = None) -> float:
    """Iterations/s of a pure-Python loop in a thread of its own, over `seconds` or while `during()` runs."""
    stop, count = threading.Event(), [0]

    def spin() -> None:
        while not stop.is_set():
            for _ in range(1000):
                count[0] += 1

    thread = threading.Thread(target=spin, daemon=True)
    start = time.perf_counter()
    thread.start()
    if during is None:
        time.sleep(seconds)
    else:
        during()
    stop.set()
    thread.join()
    return count[0] / (time.perf_counter() - start)


def _python_thread_speed(root: Path, maker: samples.SampleMaker, bench: BenchConfig, fingerprint: str) -> float:
    """The share of its speed a pure-Python thread keeps while the synchronous loader runs beside it (needs a free
    core: the measure of how long the loader holds the GIL, i.e. how far its threads can scale on a many-core
    host; 1.0: never)."""
    alone = _spin_rate(2.0)
    beside = _spin_rate(0.0, lambda: _run(root, maker, bench, 0, 0, fingerprint))
    return beside / ((alone + _spin_rate(2.0)) / 2)


def measure(name: str, root: Path, tokenizer: Path, bench: BenchConfig) -> dict[str, Any]:
    """One config's loader at every thread count, side by side, and what its CPU cost means for one GPU."""
    task = _task(name, tokenizer)
    with dataset_mod.open(root) as ds:
        maker = task.sample_maker(ds)
    fingerprint = versions.fingerprint(root)
    runs: dict[int, list[tuple[float, float]]] = {n: [] for n in bench.threads}
    for r in range(bench.repeats):
        for n in bench.threads:
            runs[n].append(_run(root, maker, bench, n, r, fingerprint))
    examples = bench.batches * bench.batch
    rate = bench.step_examples_per_s or STEP_RATES[task.kind]
    rows = {}
    for n, timings in runs.items():
        wall = float(np.median([w for w, _ in timings]))
        rows[n] = {"examples_per_s": round(examples / wall, 2), "frames_per_s": round(examples * len(maker.video_keys) / wall, 1),
                   "gpus_fed": round(examples / wall / rate, 2)}  # fmt: skip
    result = {"config": name, "kind": task.kind, "cameras": len(maker.video_keys), "threads": rows, "gpu_examples_per_s": rate,
              "decode_share_of_cpu": round(_decode_share(root, maker, bench), 3),
              "python_thread_speed_beside_loader": round(_python_thread_speed(root, maker, bench, fingerprint), 3)}  # fmt: skip
    if 0 in runs:  # the synchronous loader: its CPU time is exactly the batches'
        for row in rows.values():
            row["speedup_vs_sync"] = round(row["examples_per_s"] / rows[0]["examples_per_s"], 2)
        cpu_per_example = float(np.median([c for _, c in runs[0]])) / examples
        result["cpu_ms_per_example"] = round(1e3 * cpu_per_example, 2)
        result["cores_per_gpu"] = round(cpu_per_example * rate, 2)
    return result


def main(bench: BenchConfig) -> dict[str, Any]:
    """Write (or reuse) the dataset and measure every config; returns the report."""
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        size = (bench.episodes, bench.frames, bench.height, bench.width)
        root = Path(bench.root) if bench.root else tmp / "bench_ds"
        if not bench_data.reusable(root, *size, seed=bench.seed, noise=bench.noise):
            bench_data.make_dataset(root, *size, seed=bench.seed, noise=bench.noise)
        tokenizer = bench.tokenizer or demo_assets.tokenizer(tmp / "tokenizer")
        report: dict[str, Any] = {"config": {k: str(v) for k, v in dataclasses.asdict(bench).items()},
                                  "cpu_count": os.cpu_count(), "load_before": os.getloadavg()}  # fmt: skip
        report["results"] = [measure(name, root, tokenizer, bench) for name in bench.configs]
        report["load_after"] = os.getloadavg()
        return report


if __name__ == "__main__":
    print(json.dumps(main(cli.parse(BenchConfig, __doc__)), indent=2))  # noqa: T201
