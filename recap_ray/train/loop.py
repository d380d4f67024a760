"""The training loop every worker process runs (no Ray here: `actors/train_worker.py` wraps it).

Each process builds the same model, mesh and jitted step, restores the newest checkpoint of the run
if there is one (train state and loader position), and steps until `num_steps`, saving every
`save_interval` steps, at the end, and when told to stop (a preemption notice). Rank 0 writes
TensorBoard scalars, value histograms, the progress bar and run.json.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any, Callable

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from recap_ray import tracker as tracker_lib
from recap_ray.configs import policy as policy_configs
from recap_ray.configs import registry
from recap_ray.data import dataset as dataset_mod
from recap_ray.data import versions
from recap_ray.models import value_config
from recap_ray.train import batches, checkpointing, initial_state, initial_weights, optim, run_record, samples, sharding, step as step_lib, tasks

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """One training run, as every worker receives it (plain fields: it crosses process boundaries)."""

    kind: str  # "value" or "policy"
    config: str  # registry name of the value-model or policy config
    dataset: str  # dataset version to train on
    run_dir: str  # run directory: a local path or a gs:// URI (see checkpointing.check_storage)
    tokenizer: str  # sentencepiece model the prompts are encoded with (copied into every checkpoint)
    session: str  # id of this job invocation (restarts within it are counted)
    dataset_fingerprint: str | None = None  # the dataset's content fingerprint when the caller has it
    num_steps: int | None = None  # default: the config's
    batch_size: int | None = None  # global batch; default: the config's
    save_interval: int | None = None  # default: the config's
    log_interval: int | None = None  # default: the config's
    init: str | None = None  # initial weights overriding the config's
    norm_stats: str | None = None  # policy: norm_stats.json to use instead of computing it
    augment: bool = True  # train-time image augmentation (policy; the value config has its own switch)
    fsdp_devices: int | None = None  # devices a parameter is split over; None: all
    grad_accum: int = 1  # micro-batches per step
    keep_checkpoints: int = 2  # newest checkpoints kept
    async_save: bool = True  # write checkpoints in the background
    loader_threads: int = 4  # decode threads per process
    prefetch: int = 8  # batches decoded ahead (at least one a thread)
    cameras: tuple[tuple[str, str | None], ...] = ()  # (role, dataset camera or None: masked) over samples.YAM_CAMERA_ROLES


@dataclasses.dataclass
class WorkerContext:
    """What the loop needs from whoever runs it."""

    rank: int = 0
    world_size: int = 1
    report: Callable[[dict[str, Any]], None] = lambda metrics: None  # every rank, same number of calls
    # Asked once per step, the same answer on every rank: None, PREEMPTED (a node is being reclaimed: save, then
    # raise Preempted so Ray Train restarts the group elsewhere) or STOPPED (the driver was interrupted: save, end).
    should_stop: Callable[[], str | None] = lambda: None


PREEMPTED, STOPPED = "preempted", "stopped"  # run.json statuses of a run that saved and stopped early

MAX_IN_FLIGHT = 2  # steps dispatched ahead of the device (enough to keep it busy while the next batch is placed)


class InFlight:
    """Holds the loop at most `limit` steps ahead of the device.

    A jitted call returns as soon as it is queued, so an unbounded loop runs ahead until the next metric read
    (`log_interval` steps). A stop or preemption notice seen there would wait for every queued step before its
    checkpoint (minutes at real size, past a spot VM's 30 s notice); the rate the loop measures between its
    looks for the driver's stop request, its step time and its progress bar would count queued steps as done.
    """

    def __init__(self, limit: int = MAX_IN_FLIGHT, wait: Callable[[Any], Any] = jax.block_until_ready) -> None:
        self.limit, self.wait = limit, wait
        self.queued: collections.deque[Any] = collections.deque()

    def push(self, output: Any) -> None:
        """Add a dispatched step's output; wait for the oldest ones until at most `limit` are queued."""
        self.queued.append(output)
        while len(self.queued) > self.limit:
            self.wait(self.queued.popleft())


class Preempted(RuntimeError):
    """Raised after the checkpoint a preemption notice asked for has been written."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; raised before a checkpoint of the diverged state is written."""


def _check_finite(loss: float, step: int, newest_checkpoint: int | None) -> None:
    if not np.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss} at step {step}; the newest checkpoint is step {newest_checkpoint}")


# absl status codes: an XLA runtime failure's message starts with one, also when it reaches Python as a ValueError
# (a CPU collective whose peer died: "UNKNOWN: Gloo AllGather failed: ... Connection reset by peer")
STATUS_CODES = frozenset({
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED",
})  # fmt: skip


def cannot_heal(error: BaseException) -> bool:
    """Whether a restart from the newest checkpoint would meet `error` again: bad data or configuration, a
    non-finite loss, device memory exhausted. An OS error in its causes (a file system or network hiccup), a
    lost peer and anything else may pass on a retry."""
    chain, seen = [], error
    while seen is not None and not any(seen is e for e in chain):  # a context chain may loop
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(e, OSError) for e in chain):
        return False
    runtime = isinstance(error, ValueError) and str(error).split(":", 1)[0] in STATUS_CODES
    if runtime or isinstance(error, jax.errors.JaxRuntimeError):
        return "RESOURCE_EXHAUSTED" in str(error)
    return isinstance(error, (ValueError, KeyError, TypeError, samples.SampleError, NonFiniteLoss))


def config_for(kind: str, name: str) -> Any:
    """The registered config `name`, checked to be one a `kind` run trains: a value-model config for "value", a
    policy's training config (not its `_infer` twin, which never drops the advantage clause) for "policy"."""
    if kind == "value":
        return registry.get(name, value_config.ValueModelConfig)
    if kind != "policy":
        raise ValueError(f"TrainJob.kind must be 'value' or 'policy', got {kind!r}")
    config = registry.get(name, policy_configs.PolicyConfig)
    if config.is_infer:
        twin = name.removesuffix("_infer")
        raise ValueError(f"config {name!r} is the inference twin of {twin!r} (adv_ind_dropout=False: trained on it, the "
                         "policy never sees a prompt without the advantage clause, which classifier-free guidance "
                         f"needs); train {twin!r} and serve {name!r}")  # fmt: skip
    return config


def make_task(job: TrainJob) -> tasks.Task:
    config = config_for(job.kind, job.config)
    cameras = samples.camera_roles(job.cameras)
    if job.kind == "value":
        return tasks.ValueTask(config, epath.Path(job.tokenizer), job.init, cameras)
    return tasks.PolicyTask(config, epath.Path(job.tokenizer), job.init, job.norm_stats, job.augment, cameras)


def check_dataset(job: TrainJob, task: tasks.Task) -> None:
    """Raise `samples.DatasetMismatch` when the dataset lacks a camera, column or width the task needs, and
    ValueError when a policy's given norm stats are not its training stats for this data."""
    with dataset_mod.open(job.dataset) as ds:
        task.needs().check(job.dataset, ds.features, job.config)
        if isinstance(task, tasks.PolicyTask) and task.norm_stats_path is not None:
            tasks.check_norm_stats(task.norm_stats_path, task.config, job.config, ds.features)


def _defaults(job: TrainJob, config: Any) -> tuple[int, int, int, int]:
    return (
        job.num_steps or config.num_train_steps,
        job.batch_size or config.batch_size,
        job.save_interval or config.save_interval,
        job.log_interval or config.log_interval,
    )


def _initial_weights(task: tasks.Task, resuming: bool) -> initial_weights.InitialWeights:
    """The task's initial weights; a resumed run needs only the frozen ones (and opens nothing when there are
    none: a full fine-tune resumed after a preemption does not read its SFT checkpoint again)."""
    if not resuming:
        return task.initial_weights()
    frozen = initial_state.frozen_paths(task.create_model, task.trainable())
    return task.initial_weights().only(frozen) if frozen else initial_weights.Host()


def train(job: TrainJob, ctx: WorkerContext = WorkerContext(), tracker: tracker_lib.Tracker | None = None) -> dict[str, Any]:
    """Run (or resume) the job to `num_steps`; returns rank 0's last metrics."""
    task = make_task(job)
    check_dataset(job, task)
    num_steps, global_batch, save_interval, log_interval = _defaults(job, task.config)
    lead = ctx.rank == 0
    fingerprint = job.dataset_fingerprint or versions.fingerprint(job.dataset)  # reads every parquet file
    if lead:
        run_record.start(job.run_dir, job.session, kind=job.kind, config=job.config, dataset=str(job.dataset),
                         dataset_fingerprint=fingerprint, init=job.init, global_batch=global_batch,
                         num_steps=num_steps, world_size=ctx.world_size, cameras=task.run_cameras())  # fmt: skip
    mesh = sharding.make_mesh(job.fsdp_devices)
    if global_batch % (jax.device_count() * job.grad_accum):
        raise ValueError(f"global batch {global_batch} does not split over {jax.device_count()} devices x {job.grad_accum} micro-batches")
    opt_config = task.optimizer(num_steps)
    tx = optim.optimizer(opt_config)
    mngr = checkpointing.manager(job.run_dir, checkpointing.CheckpointOptions(
        keep=job.keep_checkpoints, keep_period=task.keep_period, async_save=job.async_save))
    metrics: dict[str, Any] = {}
    loader = bar = None
    try:  # from here on, a failure still closes what was opened
        position = None
        latest = mngr.latest_step()
        resuming = latest is not None
        graphdef, state, shardings = initial_state.program(task.create_model, _initial_weights(task, resuming), task.trainable(),
                                                           tx, use_ema=task.ema_decay is not None, seed=task.config.seed,
                                                           mesh=mesh, frozen_only=resuming).build()  # fmt: skip
        if resuming:  # the frozen weights come from the init; everything else from the checkpoint
            restored = checkpointing.restore_train_state(mngr, latest, state.replace(frozen=None), shardings.replace(frozen=None))
            state = restored.replace(frozen=state.frozen)
            position = checkpointing.restore_data_position(mngr, latest)
            logger.info("resumed %s at step %d", job.run_dir, latest)
        start = int(state.step)
        if lead:
            run_record.update(job.run_dir, start_step=start)

        with dataset_mod.open(job.dataset) as ds:
            maker = task.sample_maker(ds)
            assets = task.assets(ds)
        norm_of = jax.jit(step_lib.kernel_norm, out_shardings=sharding.replicated(mesh))  # frozen parts: measured once
        groups = {name: (f, float(norm_of(state.frozen.filter(f)))) for name, f in task.norm_groups().items()}
        train_step = jax.jit(
            step_lib.make_step(graphdef, tx, task.loss(), optim.schedule(opt_config), ema_decay=task.ema_decay,
                               grad_accum=job.grad_accum, frozen_kernel_norm=float(norm_of(state.frozen)),
                               norm_groups=groups),  # fmt: skip
            in_shardings=(shardings, sharding.data_sharding(mesh)),
            out_shardings=(shardings, sharding.replicated(mesh)),
            donate_argnums=0,
        )
        tracker = tracker or (tracker_lib.TensorBoardTracker(epath.Path(job.run_dir) / "tensorboard") if lead else tracker_lib.NullTracker())

        def save(step: int) -> None:
            params = task.params_item(graphdef, state)
            checkpointing.save(mngr, step, params=params, train_state=state.replace(frozen=None),
                               data_position=loader.position.to_dict(), assets=assets)  # fmt: skip
            if lead:
                run_record.update(job.run_dir, checkpoints=sorted({*mngr.all_steps(), step}))

        loader = batches.BatchLoader(job.dataset, maker, global_batch=global_batch, seed=task.config.seed,
                                     process_index=ctx.rank, process_count=ctx.world_size, position=position,
                                     threads=job.loader_threads, prefetch=max(job.prefetch, job.loader_threads),
                                     fingerprint=fingerprint)  # fmt: skip
        bar = tqdm(total=num_steps, initial=start, desc=f"train {job.kind}", disable=not lead)
        window_start, window_steps, input_wait = time.perf_counter(), 0, 0.0
        in_flight = InFlight()
        for step in range(start, num_steps):
            asked = time.perf_counter()
            host_batch = next(loader)  # blocks only when the loader is behind: the device then waits for input
            input_wait += time.perf_counter() - asked
            batch = sharding.global_batch(host_batch, mesh)
            state, out = train_step(state, batch)
            in_flight.push(out["loss"])
            done, window_steps = step + 1, window_steps + 1
            bar.update(1)
            if done % log_interval == 0 or done == num_steps:
                out = jax.device_get(out)
                elapsed = time.perf_counter() - window_start
                metrics = {k: float(v) for k, v in out.items() if np.ndim(v) == 0}
                _check_finite(metrics["loss"], done, mngr.latest_step())
                metrics.update(step=done, step_time=elapsed / window_steps, examples_per_s=global_batch * window_steps / elapsed,
                               input_wait_share=input_wait / elapsed)  # > 0.1 or so: more --loader-threads (bench_loader)
                tracker.scalars(done, {f"train/{k}": v for k, v in metrics.items() if k != "step"})
                if "values" in out:
                    tracker.histogram(done, "train/predicted_value", out["values"])
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                ctx.report(metrics)
                if lead:
                    run_record.update(job.run_dir, step=done, metrics=metrics)
                window_start, window_steps, input_wait = time.perf_counter(), 0, 0.0
            stop = ctx.should_stop()
            if done % save_interval == 0 or done == num_steps or stop:
                _check_finite(float(jax.device_get(out["loss"])), done, mngr.latest_step())
                save(done)
            if stop and done < num_steps:  # a notice at the last step: the run is finished, not stopped
                mngr.wait_until_finished()
                if lead:
                    run_record.update(job.run_dir, step=done, status=stop, checkpoints=list(mngr.all_steps()))
                if stop == PREEMPTED:
                    raise Preempted(f"stopped at step {done} after a preemption notice; checkpoint saved")
                return metrics
        mngr.wait_until_finished()
        if lead:
            run_record.update(job.run_dir, step=num_steps, status="finished", checkpoints=list(mngr.all_steps()))
    finally:
        for part in (bar, loader, mngr, tracker):
            if part is not None:
                part.close()
    return metrics
