"""Ray Train glue for `recap_ray.train.loop`: a JaxTrainer whose workers run the same loop.

One worker process per host owns all of that host's GPUs; `JaxConfig(use_gpu=True)` makes Ray call
`jax.distributed.initialize` on every worker before the loop starts (on CPU too when
`JAX_PLATFORMS=cpu`, which is how the tests run two processes on one machine). A failed worker
tears the group down and Ray starts a new one, which resumes from the run's newest checkpoint.
With `min_workers < num_workers` the group is elastic: it runs on whatever fits in between, with
the same global batch. A preemption costs at most one checkpoint interval (see `_stop_flag`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from typing import Any

import ray.train
from absl import logging as absl_logging
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.v2.jax import JaxConfig, JaxTrainer

from recap_ray.train import loop

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Resources:
    """The worker group a run asks Ray for."""

    num_workers: int = 1  # worker processes (hosts); the most when elastic
    min_workers: int | None = None  # fewest workers an elastic run continues on; None: fixed size
    gpus_per_worker: int = 0  # GPUs each worker owns (all of its host's)
    cpus_per_worker: float = 1.0  # CPUs reserved per worker (the loader threads use them)
    max_failures: int = 3  # worker-group restarts before the run fails (-1: unlimited)
    env: tuple[tuple[str, str], ...] = ()  # extra environment variables for the workers


def _stop_flag() -> threading.Event:
    """An event set on SIGTERM, when this function runs on the main thread (Ray Train's local mode).

    In a Ray Train worker process the loop runs on a training thread, where Python cannot install
    signal handlers, and Ray's worker main loop owns SIGTERM (it exits the process; a
    `worker_process_setup_hook` handler is replaced by it, checked on Ray 2.60). There the event
    never fires and a preempted worker loses at most one checkpoint interval.
    """
    flag = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        logger.warning("SIGTERM: saving a checkpoint before exiting")
        flag.set()
        if callable(previous) and previous not in (signal.SIG_IGN, signal.SIG_DFL):
            previous(signum, frame)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
    else:
        logger.info("train loop is not on the main thread; SIGTERM handler not installed")
    return flag


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point Ray runs on every worker."""
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every array it writes at INFO
    ctx = ray.train.get_context()
    job = loop.TrainJob(**config)
    flag = _stop_flag()
    loop.train(
        job,
        loop.WorkerContext(
            rank=ctx.get_world_rank(),
            world_size=ctx.get_world_size(),
            report=lambda metrics: ray.train.report(metrics),
            should_stop=flag.is_set,
        ),
    )


def trainer(job: loop.TrainJob, resources: Resources, *, storage_path: str | None = None) -> JaxTrainer:
    """A JaxTrainer for `job` (Ray's own run state goes under `storage_path`, default RUN_DIR/ray)."""
    on_gpu = resources.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if on_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    workers: int | tuple[int, int] = resources.num_workers
    if resources.min_workers is not None and resources.min_workers < resources.num_workers:
        workers = (resources.min_workers, resources.num_workers)
    env = dict(resources.env)
    # CPU as well on GPU hosts: the loader augments value-model images on the host.
    env.setdefault("JAX_PLATFORMS", "cuda,cpu" if on_gpu else "cpu")
    for key in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR"):
        if key in os.environ:
            env.setdefault(key, os.environ[key])
    return JaxTrainer(
        train_loop_per_worker,
        train_loop_config=dataclasses.asdict(job),
        jax_config=JaxConfig(use_gpu=True),  # initializes jax.distributed; JAX_PLATFORMS picks CPU or CUDA
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=on_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"{job.kind}-{job.session}",
            storage_path=storage_path or os.path.join(os.path.abspath(job.run_dir), "ray"),
            failure_config=FailureConfig(max_failures=resources.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            worker_runtime_env={"env_vars": env},
        ),
    )
