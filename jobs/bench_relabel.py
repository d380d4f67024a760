"""Relabel inference throughput: Ray Data end to end versus the same model called in-process.

    python -m jobs.bench_relabel                                   # real size on a GPU, bf16
    python -m jobs.bench_relabel --config value_tiny --rollouts 4 --batch-size 16 --actors 1 2 --gpus-per-actor 0   # CPU smoke run

Makes a simulated dataset (rollouts with DAgger corrections, three cameras at `--image-size`)
and a checkpoint of randomly initialised weights laid out as training writes it (or takes
`--dataset` / `--value-ckpt`). In-process: the frames are decoded and resized as the pipeline
does, then the estimator is timed alone over the same padded chunks (model frames/s). Ray: the
whole `actors.relabel.infer` pipeline (decode tasks + value actors) for each actor count, timed
from the first finished episode to the last (steady state) and in total (with actor start-up and
compilation). Ray's overhead = 1 - steady Ray frames/s / in-process frames/s at one actor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from actors import relabel as relabel_actors
from jobs import cli, make_dataset
from jobs import relabel as relabel_job
from recap_ray.configs import registry
from recap_ray.data import dataset as dataset_mod
from recap_ray.models import checkpoints, value_config
from recap_ray.sim import world

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Args:
    config: str = "value"
    """Registered value-model config."""
    dataset: Path | None = None
    """Dataset to read (default: a simulated one made here)."""
    value_ckpt: Path | None = None
    """Checkpoint or run directory (default: random weights saved here)."""
    tokenizer: Path | None = None
    """Sentencepiece model, needed with random weights or a checkpoint without assets/tokenizer.model."""
    rollouts: int = 16
    """Simulated rollouts when making the dataset (about 240 frames each)."""
    image_size: int = 224
    """Camera height and width of the simulated dataset."""
    batch_size: int = 64
    """Frames per model call."""
    dtype: str = "bfloat16"
    """Inference dtype."""
    actors: tuple[int, ...] = (1,)
    """Actor counts to time."""
    gpus_per_actor: float | None = None
    """GPUs per actor; default 1 when the cluster has GPUs, else 0."""
    cpus_per_actor: float = 1.0
    """CPUs reserved per actor (keep actors x this + 1 within the cluster's CPUs, or decoding starves)."""
    out: Path | None = None
    """Also write the results as JSON here."""


def random_checkpoint(root: Path, config: str, tokenizer: Path) -> Path:
    """A run directory with one checkpoint of randomly initialised weights (float32, as training saves)."""
    step = checkpoints.checkpoints_dir(root) / "0"
    params = nnx.to_pure_dict(nnx.state(registry.get(config).create(0), nnx.Param))
    ocp.PyTreeCheckpointer().save(checkpoints.params_dir(step).resolve(), {"params": params, "ema_params": params, "step": 0})
    checkpoints.tokenizer_file(step).parent.mkdir(parents=True)
    shutil.copy(tokenizer, checkpoints.tokenizer_file(step))
    (root / checkpoints.RUN_FILE).write_text(json.dumps({"kind": "value", "config": config}))
    return root


def in_process(spec: relabel_actors.InferenceSpec, episodes: list[tuple[int, int]]) -> dict[str, float]:
    """Decode and resize every chunk here, then time the estimator alone over them (after compiling)."""
    t0 = time.perf_counter()
    chunks = [row for e, _ in episodes for row in relabel_actors.decode_chunks({"episode_index": np.array([e])}, spec)]
    decode_s = time.perf_counter() - t0
    actor = relabel_actors.ValueActor(spec)  # loads and compiles once, as a Ray actor does
    frames = sum(int(r["count"][0]) for r in chunks)
    t0 = time.perf_counter()
    for row in chunks:
        actor(row)
    model_s = time.perf_counter() - t0
    return {"frames": frames, "decode_frames_per_s": frames / decode_s, "model_frames_per_s": frames / model_s,
            "padded_frames_per_s": len(chunks) * spec.batch_size / model_s}  # fmt: skip


def through_ray(spec: relabel_actors.InferenceSpec, episodes: list[tuple[int, int]], resources: relabel_actors.Resources) -> dict[str, float]:
    """Time the Ray Data pipeline over `episodes`: total, and from the first finished episode on."""
    t0 = time.perf_counter()
    marks: list[tuple[float, int]] = []
    for _, values in relabel_actors.infer(spec, episodes, resources, fixed_cluster=relabel_job.fixed_cluster()):
        marks.append((time.perf_counter(), values.size))
    total = time.perf_counter() - t0
    frames = sum(n for _, n in marks)
    steady = (frames - marks[0][1]) / (marks[-1][0] - marks[0][0]) if len(marks) > 1 else float("nan")
    return {"actors": resources.num_actors, "gpus_per_actor": resources.gpus_per_actor, "frames": frames,
            "total_s": total, "frames_per_s_total": frames / total, "frames_per_s_steady": steady}  # fmt: skip


def main(args: Args) -> dict[str, Any]:
    """Run the benchmark; returns (and logs, and optionally writes) the results."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the in-process model and the actors share the GPU
    registry.get(args.config, value_config.ValueModelConfig)  # before the dataset is made
    if args.value_ckpt is None and args.tokenizer is None:
        raise ValueError("random weights need --tokenizer (a sentencepiece model) for the prompts")
    work = Path(tempfile.mkdtemp(prefix="bench_relabel_"))
    try:
        data = args.dataset or make_dataset.main(make_dataset.Config(
            output=work / "ds", demos=0, rollouts=args.rollouts, workers=4,
            task=world.TaskConfig(image_height=args.image_size, image_width=args.image_size)))  # fmt: skip
        run = args.value_ckpt or random_checkpoint(work / "run", args.config, args.tokenizer)
        config = relabel_job.Config(dataset=data, value_ckpt=str(run), output=work / "unused", config=args.config,
                                    tokenizer=None if args.tokenizer is None else str(args.tokenizer),
                                    batch_size=args.batch_size, dtype=args.dtype)  # fmt: skip
        step, name, tokenizer = relabel_job.resolve_checkpoint(config)
        spec = relabel_job.inference_spec(config, checkpoints.params_dir(step), name, tokenizer)
        with dataset_mod.open(data) as ds:
            episodes = [(ep.index, ep.length) for ep in ds.meta.episodes]
        base = in_process(spec, episodes)
        logger.info("in-process: %s", json.dumps(base))
        cli.connect_ray()
        gpus = relabel_job.resources(dataclasses.replace(config, gpus_per_actor=args.gpus_per_actor)).gpus_per_actor
        runs = []
        for n in args.actors:
            runs.append(through_ray(spec, episodes, relabel_actors.Resources(num_actors=n, gpus_per_actor=gpus, cpus_per_actor=args.cpus_per_actor)))
            runs[-1]["overhead_vs_in_process"] = 1 - runs[-1]["frames_per_s_steady"] / base["model_frames_per_s"]
            logger.info("ray: %s", json.dumps(runs[-1]))
        import jax

        result = {"config": name, "dtype": args.dtype, "batch_size": args.batch_size, "device": jax.devices()[0].device_kind,
                  "episodes": len(episodes), "in_process": base, "ray": runs}  # fmt: skip
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(cli.parse(Args, __doc__))
