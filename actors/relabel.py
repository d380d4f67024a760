"""Ray Data value inference for relabelling: episode rows -> CPU decode tasks -> GPU value actors.

One row per episode enters; a decode task (a plain function, so Ray runs it as CPU tasks) reads the
episode's task indices and decodes its camera frames a chunk of `batch_size` frames at a time,
resized to the tower's size on the CPU and padded to exactly `batch_size` by repeating the last
frame. Each chunk is one row, so a value actor (one per GPU slot, from an `ActorPoolStrategy`)
makes one model call per row at one fixed shape: one compile per actor, done in its constructor,
and a frame's value never depends on which other frames shared its batch. The driver puts chunks
back together per episode and yields an episode only when all its frames are in, so episodes stay
whole for the advantage step; nothing holds more than a few chunks of frames at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import ray

from recap_ray.configs import registry
from recap_ray.data import dataset as dataset_mod
from recap_ray.data import features as feats
from recap_ray.models import value_infer, value_preprocess

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """Everything a decode task or a value actor needs (plain, picklable)."""

    dataset: str  # dataset root, readable from every node
    config: str  # registered value-model config
    params: str  # orbax params item ({params, ema_params, step}), local or gs://, readable from every node
    tokenizer: str | None  # sentencepiece model, local or gs:// (None: $OPENPI_VALUE_TOKENIZER_PATH and friends)
    cameras: tuple[tuple[str, str], ...]  # (model camera, dataset video/image key)
    batch_size: int  # frames per model call (chunks are padded to it)
    dtype: str | None = "bfloat16"  # compute dtype (None: pistar's f32 Gemma / bf16 SigLIP)
    use_ema: bool = True  # EMA params when the checkpoint has them

    @property
    def image_size(self) -> int:
        return registry.get(self.config).image_size


@dataclasses.dataclass(frozen=True)
class Resources:
    """Ray resources of the pipeline."""

    num_actors: int = 1  # value actors (fixed pool)
    gpus_per_actor: float = 1.0  # 0 runs the model on CPU (tests, smoke runs)
    cpus_per_actor: float = 1.0
    cpus_per_decode: float = 1.0  # per decode task


_opened: tuple[tuple[str, int, int], dataset_mod.Dataset] | None = None  # this worker process's dataset


def _open(root: str) -> dataset_mod.Dataset:
    """The dataset, opened once per worker process (decoders stay open between chunks), and again
    when a dataset was rewritten at the same path (Ray reuses workers; keyed by info.json's inode and mtime)."""
    global _opened
    info = os.stat(os.path.join(root, "meta", "info.json"))
    key = (root, info.st_ino, info.st_mtime_ns)
    if _opened is not None and _opened[0] != key:
        _opened[1].close()  # its video readers
        _opened = None
    if _opened is None:
        _opened = (key, dataset_mod.open(root))
    return _opened[1]


def decode_chunks(batch: dict[str, np.ndarray], spec: InferenceSpec) -> Iterator[dict[str, np.ndarray]]:
    """Episode rows -> chunk rows: episode_index, start, count, task_index (B,), one (B,S,S,3) per camera."""
    ds, size, b = _open(spec.dataset), spec.image_size, spec.batch_size
    for e in np.asarray(batch["episode_index"]).tolist():
        n = ds.meta.episode(e).length
        tasks = feats.column_to_numpy(ds.episode_table(e).column("task_index")).astype(np.int64).reshape(-1)
        for start in range(0, n, b):
            idx = np.arange(start, min(start + b, n))
            fill = np.minimum(np.arange(b), idx.size - 1)  # pad by repeating the last frame
            row = {
                "episode_index": np.array([e], np.int64),
                "start": np.array([start], np.int64),
                "count": np.array([idx.size], np.int64),
                "task_index": tasks[idx][fill][None],
            }
            for camera, key in spec.cameras:
                row[camera] = value_preprocess.resize_with_pad(ds.frames(e, key, idx), size, size)[fill][None]
            yield row


class ValueActor:
    """Loads the value model once, compiles its one batch shape, then V per frame of each chunk."""

    def __init__(self, spec: InferenceSpec):
        config = registry.get(spec.config)
        self.estimator = value_infer.ValueEstimator.from_checkpoint(
            config, spec.params, tokenizer_path=spec.tokenizer, use_ema=spec.use_ema, dtype=spec.dtype, batch_size=spec.batch_size
        )
        with dataset_mod.open(spec.dataset) as ds:
            self.tasks = list(ds.meta.tasks)
        self.cameras = tuple(camera for camera, _ in spec.cameras)
        size = spec.image_size
        blank = np.zeros((spec.batch_size, size, size, 3), np.uint8)
        self.estimator({c: blank for c in self.cameras}, [""] * spec.batch_size)  # the one compile

    def values(self, frames: dict[str, np.ndarray], task_index: np.ndarray) -> np.ndarray:
        """(B,) float32 V of one padded chunk."""
        prompts = [self.tasks[int(k)] for k in np.asarray(task_index).reshape(-1)]
        return np.asarray(self.estimator(frames, prompts), np.float32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(batch["start"])
        values = [self.values({c: batch[c][i] for c in self.cameras}, batch["task_index"][i]) for i in range(rows)]
        return {k: batch[k] for k in ("episode_index", "start", "count")} | {"value": np.stack(values)}


def _actor_env(gpus_per_actor: float) -> dict | None:
    """Actors sharing a GPU must not each preallocate most of its memory."""
    if 0 < gpus_per_actor < 1:
        return {"env_vars": {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 * gpus_per_actor:.3f}"}}
    return None


# Resident memory of a decode worker before any frame (Python, pyarrow, PyAV, numpy, JAX imports).
_DECODE_WORKER_BYTES = 384 << 20


def decode_memory(spec: InferenceSpec) -> int:
    """Bytes a decode task needs: the worker plus one chunk (decoded and resized frames, twice over).

    Requesting it also keeps Ray from fusing decode into the value actors when they need no GPU.
    """
    with dataset_mod.open(spec.dataset) as ds:
        source = sum(int(np.prod(feats.image_hwc(ds.features[key]))) for _, key in spec.cameras)
    return _DECODE_WORKER_BYTES + 2 * spec.batch_size * (source + len(spec.cameras) * spec.image_size**2 * 3)


def check_fits(resources: Resources, fixed_cluster: bool) -> None:
    """The actor pool and one decode task must fit the cluster's CPUs at once, or decoding never runs.

    On a cluster that cannot grow (a local Ray this job started) that is an error; elsewhere a warning,
    as an autoscaler may add nodes.
    """
    cpus = ray.cluster_resources().get("CPU", 0.0)
    need = resources.num_actors * resources.cpus_per_actor + resources.cpus_per_decode
    if need <= cpus:
        return
    message = (f"relabel: {resources.num_actors} actors x {resources.cpus_per_actor:g} CPU + a decode task "
               f"({resources.cpus_per_decode:g} CPU) need {need:g} CPUs, the cluster has {cpus:g}")
    if fixed_cluster:
        raise ValueError(f"{message}; decoding would wait forever: use fewer actors (--num-actors)")
    logger.warning("%s now; decoding waits for an autoscaler to add nodes", message)


def infer(spec: InferenceSpec, episodes: Sequence[tuple[int, int]], resources: Resources,
          fixed_cluster: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Values of `episodes` ((index, length) pairs), yielded (index, (T,) float32) as each completes.

    `fixed_cluster`: the cluster cannot grow, so a pipeline that does not fit is refused (`check_fits`).
    """
    if not episodes:
        return
    if spec.batch_size < 1 or resources.num_actors < 1:
        raise ValueError(f"relabel: batch size {spec.batch_size} and actors {resources.num_actors} must be >= 1")
    check_fits(resources, fixed_cluster)
    rows = ray.data.from_items([{"episode_index": e} for e, _ in episodes], override_num_blocks=len(episodes))
    chunks = rows.map_batches(
        decode_chunks,
        fn_kwargs={"spec": spec},
        batch_size=1,
        num_cpus=resources.cpus_per_decode,
        memory=decode_memory(spec),
        batch_format="numpy",
    )
    values = chunks.map_batches(
        ValueActor,
        fn_constructor_kwargs={"spec": spec},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=resources.num_actors),
        num_gpus=resources.gpus_per_actor,
        num_cpus=resources.cpus_per_actor,
        batch_format="numpy",
        runtime_env=_actor_env(resources.gpus_per_actor),
    )
    lengths = dict(episodes)
    buffers: dict[int, np.ndarray] = {}
    filled: dict[int, int] = {}
    for batch in values.iter_batches(batch_size=None, batch_format="numpy"):
        for e, start, count, v in zip(batch["episode_index"].tolist(), batch["start"].tolist(), batch["count"].tolist(), batch["value"]):
            buf = buffers.setdefault(e, np.full(lengths[e], np.nan, np.float32))
            buf[start : start + count] = v[:count]
            filled[e] = filled.get(e, 0) + count
            if filled[e] == lengths[e]:
                del filled[e]
                yield e, buffers.pop(e)
    if buffers:
        raise RuntimeError(f"relabel: value inference ended with episodes {sorted(buffers)} incomplete")
