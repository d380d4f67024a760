"""What `jobs.train_value` and `jobs.train_policy` share: flags, run-directory checks, the Ray run."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

from etils import epath

from jobs import cli
from recap_ray import checks
from recap_ray.data import dataset as dataset_mod
from recap_ray.data import versions
from recap_ray.models import checkpoints
from recap_ray.train import checkpointing, loop, run_record, samples

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: Path
    """Dataset version to train on."""
    config: str
    """Registry name of the config (value: value, value_tiny; policy: pi06_*)."""
    run_dir: str
    """Run directory: run.json, checkpoints/, tensorboard/ (a local path or gs://bucket/path)."""
    tokenizer: str | None = None
    """sentencepiece model, a local path or gs://... (default: $RECAP_TOKENIZER); copied into every checkpoint's assets."""
    num_workers: int = 1
    """Worker processes, one per host (the most when elastic)."""
    min_workers: int | None = None
    """Elastic: fewest workers the run continues on (global batch kept)."""
    gpus_per_worker: int = 0
    """GPUs each worker owns (all of its host's); 0 trains on CPU."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (and the loader's decode threads by default)."""
    num_steps: int | None = None
    """Optimizer steps (default: the config's)."""
    save_interval: int | None = None
    """Steps between checkpoints (default: the config's)."""
    log_interval: int | None = None
    """Steps between metric logs (default: the config's)."""
    batch_size: int | None = None
    """Global batch (default: the config's)."""
    init: str | None = None
    """Initial weights: openpi params/ dir, pi05_base, a value bundle, or one of our run/step dirs."""
    resume: bool = False
    """Continue the run in RUN_DIR from its newest checkpoint."""
    overwrite: bool = False
    """Delete RUN_DIR first."""
    max_failures: int = 3
    """Worker-group restarts before giving up (-1: unlimited)."""
    fsdp_devices: int | None = None
    """Devices each parameter is split over (default: all)."""
    grad_accum: int = 1
    """Micro-batches per step (gradient accumulation)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept."""
    loader_threads: int | None = None
    """Decode threads per worker (default: --cpus-per-worker, at least 4; jobs.bench_loader sizes it)."""
    cameras: tuple[str, ...] = ()
    """Dataset cameras as ROLE=KEY: roles base, wrist (left), right_wrist, as relabel's --base-camera etc.; KEY none: masked; default YAM's."""

    def __post_init__(self) -> None:
        """Numbers that cannot be meant and flags that exclude each other, refused as the command line is parsed."""
        if self.overwrite and self.resume:
            raise ValueError("--resume and --overwrite exclude each other")
        checks.at_least(self, num_workers=1, gpus_per_worker=0, cpus_per_worker=0, num_steps=1, save_interval=1,
                        log_interval=1, batch_size=1, min_workers=1, max_failures=-1, fsdp_devices=1, grad_accum=1,
                        keep_checkpoints=1, loader_threads=1)  # fmt: skip
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(f"--min-workers {self.min_workers} exceeds --num-workers {self.num_workers} (the most workers)")


class TrainingFailed(cli.JobFailed):
    """A worker met a failure a restart would meet again (`loop.cannot_heal`); the run stopped."""


class TrainingStopped(cli.JobFailed):
    """The driver was interrupted (Ctrl-C, SIGTERM); the workers saved the step they were at and ended."""


def parse_cameras(entries: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    """`--cameras ROLE=KEY ...` -> (role, dataset camera or None) pairs, roles checked."""
    pairs = []
    for entry in entries:
        role, sep, key = entry.partition("=")
        if not sep or not key:
            raise ValueError(f"--cameras {entry!r}: expected ROLE=KEY, e.g. base=observation.images.cam_high")
        pairs.append((role, None if key.lower() == "none" else key))
    samples.camera_roles(pairs)
    return tuple(pairs)


def relabel_cameras(entries: tuple[str, ...]) -> dict[str, str | None]:
    """The value model's base and wrist cameras of `--cameras` as jobs.relabel's flags."""
    roles = samples.camera_roles(parse_cameras(entries))
    return {"base_camera": roles["base"], "wrist_camera": roles["wrist"]}


def resolve_tokenizer(path: str | None, flag: str = "--tokenizer") -> str:
    """The tokenizer to train with (`flag`, else $RECAP_TOKENIZER), checked to exist: a local path or a
    bucket URI, which every worker reads itself (a local path must be on every host)."""
    path = path or os.environ.get("RECAP_TOKENIZER") or None
    if path is None:
        raise FileNotFoundError(f"no tokenizer: pass {flag} or set $RECAP_TOKENIZER to a sentencepiece .model file")
    if not epath.Path(path).is_file():
        raise FileNotFoundError(f"tokenizer {path}: pass {flag} or set $RECAP_TOKENIZER to a sentencepiece .model file")
    return str(path)


def check_inputs(config: Config, kind: str) -> None:
    """What is checked before the dataset is read in full and Ray starts, in the order a user would fix it: the
    config (registered, of this kind), the dataset (a LeRobot dataset), the tokenizer, the cameras, the initial
    weights, the batch."""
    model_config = loop.config_for(kind, config.config)
    with dataset_mod.open(config.dataset):
        pass
    tokenizer = resolve_tokenizer(config.tokenizer)
    cameras = parse_cameras(config.cameras)
    if kind == "value":  # a value config may read fewer cameras than the three roles: a mapping it never reads is a mistake
        roles = [role for role, slot in samples.VALUE_SLOTS.items() if slot in model_config.cameras]
        unread = [f"{role}={key}" for role, key in cameras if key is not None and role not in roles]
        if unread:
            raise ValueError(f"--cameras {' '.join(unread)}: value config {config.config!r} reads no such camera (its "
                             f"roles: {', '.join(roles)}); drop the mapping")  # fmt: skip
    job = loop.TrainJob(kind=kind, config=config.config, dataset=str(config.dataset), run_dir=config.run_dir,
                        tokenizer=tokenizer, session="check", init=config.init, cameras=cameras)  # fmt: skip
    loop.make_task(job).check_init()
    batch = config.batch_size or model_config.batch_size
    if batch % config.grad_accum:
        raise ValueError(f"global batch {batch} does not split into --grad-accum {config.grad_accum} micro-batches")


def prepare_run_dir(config: Config, kind: str, fingerprint: str, cameras: dict[str, str | None] | None = None) -> None:
    """Refuse to mix runs: an existing run needs --resume (same config and dataset) or --overwrite.

    RUN_DIR may be a bucket (`gs://...`); one orbax cannot checkpoint to is refused here, before Ray starts.
    """
    if config.overwrite and config.resume:
        raise ValueError("--resume and --overwrite exclude each other")
    checkpointing.check_storage(config.run_dir)
    run_dir = epath.Path(config.run_dir)
    if config.overwrite and run_dir.exists():
        run_dir.rmtree()
    existing = run_record.read(run_dir)
    if not existing and not checkpoints.steps(run_dir):
        return
    if not config.resume:
        done = f"at step {existing['step']}" if existing.get("step") is not None else "that finished no step"
        raise FileExistsError(f"{run_dir} already holds a run {done} (status {existing.get('status')}); pass --resume to "
                              "continue it or --overwrite to start over")  # fmt: skip
    mismatch = {
        field: (existing.get(field), want)
        for field, want in (("kind", kind), ("config", config.config), ("dataset_fingerprint", fingerprint),
                            ("cameras", cameras))
        if want is not None and existing.get(field) not in (None, want)  # cameras None: not checked
    }
    if mismatch:
        raise ValueError(f"{run_dir}: cannot resume, the run differs: " + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in mismatch.items()))


def loader_threads(config: Config) -> int:
    """--loader-threads, else one decode thread per CPU the worker reserves, at least 4. A policy example at YAM's
    640x480 costs 19-28 ms of CPU, a value example 13-17 ms (BENCHMARKS.md, "Training input"), so an 8-GPU host
    needs 4-6 cores to feed pi0.6 and 30-40 to feed the value model: a fixed 4 threads starved the latter."""
    return config.loader_threads or max(4, int(config.cpus_per_worker))


def make_job(config: Config, kind: str, fingerprint: str, **extra: Any) -> loop.TrainJob:
    """The job every worker runs; local paths made absolute (Ray Train runs workers in a directory of its own)."""
    extra = {k: checkpoints.absolute_if_here(v) if k == "norm_stats" else v for k, v in extra.items()}
    return loop.TrainJob(
        kind=kind, config=config.config, dataset=str(checkpoints.absolute(config.dataset)),
        run_dir=str(checkpoints.absolute(config.run_dir)), tokenizer=checkpoints.absolute_if_here(resolve_tokenizer(config.tokenizer)),
        session=uuid.uuid4().hex[:12], dataset_fingerprint=fingerprint,
        num_steps=config.num_steps, batch_size=config.batch_size, save_interval=config.save_interval,
        log_interval=config.log_interval, init=checkpoints.absolute_if_here(config.init), fsdp_devices=config.fsdp_devices,
        grad_accum=config.grad_accum, keep_checkpoints=config.keep_checkpoints, loader_threads=loader_threads(config),
        cameras=parse_cameras(config.cameras), **extra,
    )  # fmt: skip


def run(config: Config, kind: str, **extra: Any) -> dict[str, Any]:
    """Train on Ray; returns the final run.json."""
    from actors import train_worker

    check_inputs(config, kind)
    fingerprint = versions.fingerprint(config.dataset)  # reads every file of the dataset
    job = make_job(config, kind, fingerprint, **extra)
    task = loop.make_task(job)
    loop.check_dataset(job, task)  # here, not in the workers: Ray Train would retry a mismatch max_failures times
    prepare_run_dir(config, kind, fingerprint, task.run_cameras())
    cli.connect_ray()
    resources = train_worker.Resources(
        num_workers=config.num_workers, min_workers=config.min_workers, gpus_per_worker=config.gpus_per_worker,
        cpus_per_worker=config.cpus_per_worker, max_failures=config.max_failures,
    )  # fmt: skip
    storage = f"{config.run_dir.rstrip('/')}/ray" if "://" in config.run_dir else None
    result = fit_interruptible(train_worker.trainer(job, resources, storage_path=storage), config.run_dir, job.session)
    failure = run_record.failure(config.run_dir, job.session)
    if failure is not None:
        record = run_record.update(config.run_dir, status="failed", error=failure["error"])
        at = f"after step {record['step']}" if record.get("step") else "in its first step"
        raise TrainingFailed(f"training run {config.run_dir} failed {at} on rank {failure['rank']} "
                             f"(not retried: a restart would fail the same way): {failure['error']}. Fix the cause and rerun: --resume "
                             "continues from the newest checkpoint (same dataset), --overwrite starts over")  # fmt: skip
    if result.error is not None:
        raise RuntimeError(f"training run {config.run_dir} failed") from result.error
    record, interrupted = run_record.read(config.run_dir), run_record.stop_requested(config.run_dir, job.session)
    run_record.clear_stop(config.run_dir)
    if record.get("status") == loop.STOPPED:
        raise TrainingStopped(f"training run {config.run_dir} stopped at step {record['step']} as asked, its checkpoint "
                              "saved; --resume continues it")  # fmt: skip
    if interrupted:  # the interrupt came as the last step ended
        raise TrainingStopped(f"training run {config.run_dir} finished (step {record['step']}) as the interrupt "
                              "came; stopping here")  # fmt: skip
    return record


def fit_interruptible(trainer: Any, run_dir: str, session: str) -> Any:
    """`trainer.fit()`, where Ctrl-C or SIGTERM (`ray job stop`, a pod's deletion) asks the workers to save the
    step they are at and end; a second one gives up at once.

    Ray Train's own Ctrl-C handler aborts the workers without a checkpoint, and Ray's core worker turns SIGTERM
    into a stack dump and an abort: so fit runs in a thread, and the main thread takes both signals and writes
    the request the workers look for (`run_record.request_stop`, `actors.train_worker.StepSync`).
    """
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()  # signals reach the main thread only: its owner handles them

    outcome: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: an interrupted join can mark the thread finished (Python < 3.13)

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # re-raised on the main thread
            outcome["error"] = err
        finally:
            done.set()

    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        threading.Thread(target=fit, name="fit", daemon=True).start()
        stopping = False
        while not done.is_set():
            try:
                done.wait(0.5)
            except KeyboardInterrupt:
                if stopping:
                    raise
                stopping = True
                run_record.request_stop(run_dir, session)
                logger.warning("interrupted: the workers save the step they are at, then end (interrupt again to "
                               "abort at once, losing the steps since the last checkpoint)")  # fmt: skip
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: not set from Python
                signal.signal(sig, handler)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
