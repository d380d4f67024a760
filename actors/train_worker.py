"""Ray Train glue for `recap_ray.train.loop`: a JaxTrainer whose workers run the same loop.

One worker process per host owns all of that host's GPUs; `JaxConfig(use_gpu=True)` makes Ray call
`jax.distributed.initialize` on every worker before the loop starts (on CPU too when
`JAX_PLATFORMS=cpu`, which is how the tests run two processes on one machine). A failed worker
tears the group down and Ray starts a new one, which resumes from the run's newest checkpoint.
With `min_workers < num_workers` the group is elastic: it runs on whatever fits in between, with
the same global batch (which every world size in between must divide). Ray 2.60 sizes a (re)start
by the resource totals (not the free resources) of the nodes Ray's AutoscalingCoordinator actor
last listed, and that actor re-reads the node list every 20 s
(`ray/data/_internal/cluster_autoscaler/default_autoscaling_coordinator.py`). So only a node that
leaves shrinks the group; a node that joined less than 20 s before the start can be left out (the
group grows at the next resize check, `elastic_resize_monitor_interval_s` = 60 s, restarting from
the newest checkpoint); and a restart right after a preemption first asks for the old size while
the drained node is still listed, falling back after `RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S` (60 s).

Preemption (Ray 2.60). A spot reclaim or pod deletion sends SIGTERM to the node's `ray start
--block` process, which drains its node with reason PREEMPTION and a deadline
(`RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S`, 30 s; `ray/_private/node.py` `_drain_node_before_shutdown`)
and kills the node's processes once the node is idle or the deadline passes; `ray drain-node` and
the autoscaler send the same notice. Ray Train's preemption watcher polls the draining nodes
(`RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S`, 5 s) and marks every worker, and
`ray.train.get_preemption_info()` hands the notice to all ranks at the same call. The loop asks at the
steps `StepSync` looks (about every 2 s), so every rank saves the same step, then raises `loop.Preempted`: Ray Train
restarts the group at once on the nodes that are not draining, from that checkpoint. The restart
counts against `max_failures` (a worker error). Waiting for the node to die instead would not move
it to `max_preemption_failures` either: the raylet records a SIGTERM-drained node's death as
EXPECTED_TERMINATION, not PREEMPTION (seen in raylet.out on 2.60), so the dead worker is not flagged
preempted.
SIGTERM sent to a worker process itself is no preemption notice: Ray's worker main loop owns that
signal (`ray/_private/worker.py` `Worker.main_loop` raises SystemExit(1) on the main thread, the
core worker reports the worker dead, and the interpreter exits past Ray Train's daemon training
thread; no atexit hook or other thread's `finally` runs, checked on 2.60), the training thread
cannot install a handler, and the raylet itself SIGTERMs the workers it stops.

Interruption. Ctrl-C or SIGTERM to the driver (`ray job stop`) writes RUN_DIR/stop.json for its session
(`jobs.training.fit_interruptible`); `StepSync` hands rank 0's reading of it to every rank at the same
step, and every rank saves that step and returns: the run ends with status `stopped`, not restarted.

A failure a restart would meet again (`loop.cannot_heal`: bad data, a non-finite loss, device memory
exhausted) is written to RUN_DIR/failure.json by the worker that met it; Ray Train still restarts the
group once (it retries any worker error), and the restarted workers find the file and return at once,
so the run ends in seconds rather than after max_failures full restarts, and the driver raises it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import ray.train
import ray.train.collective
from absl import logging as absl_logging
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.v2.jax import JaxConfig, JaxTrainer

from recap_ray.train import loop, run_record

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


STOP_POLL_S = 2.0  # about how often rank 0 looks for a stop request or a preemption notice
REPORT_INTERVAL_S = 10.0  # at least this long between metric reports to Ray Train


def next_look(steps: int, seconds: float, previous: int) -> int:
    """Steps until rank 0's next look, after a look `steps` steps and `seconds` after the one before.

    About STOP_POLL_S at the last window's rate, but at most twice the last window and at most 1000 steps: the
    first steps after compilation run faster than the rest until `loop.InFlight` holds the loop to the device,
    and one such window taken for the rate would put the next look hundreds of steps away.
    """
    rate = steps / max(seconds, 1e-6)
    return max(1, min(2 * previous, 1000, round(STOP_POLL_S * rate)))


class StepSync:
    """What the loop hands to Ray Train, agreed by every rank at the same steps: `should_stop` (called once per
    step on every rank) and `report` (the loop's metrics at each log step).

    Rank 0 looks about every STOP_POLL_S seconds and broadcasts its answer with the number of steps until its
    next look (`next_look`), so every rank looks at the same steps and no step pays a collective or a file read
    (a cloud round trip) otherwise. At a look:
    - PREEMPTED when Ray Train reports a node of this worker group draining (`ray.train.get_preemption_info`,
      itself a barrier handing rank 0's answer to every rank; Ray's watcher polls every 5 s);
    - STOPPED when the driver asked this session to stop (`run_record.request_stop`);
    - the newest metrics go to `ray.train.report` if REPORT_INTERVAL_S has passed since the last report. Ray
      Train's controller takes one report per poll (`RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`, 2 s) and
      `ray.train.report` blocks until the previous one was taken: a report at every log step of a fast run
      held each step for up to 2 s.
    """

    def __init__(self, run_dir: str, session: str, rank: int) -> None:
        self.run_dir, self.session, self.lead = run_dir, session, rank == 0
        self.every, self.skip = 1, 0  # steps between looks, steps left before the next one
        self.steps, self.since = 0, time.monotonic()  # steps since the last look, and its time
        self.pending: dict[str, Any] | None = None  # metrics not yet reported
        self.reported = float("-inf")  # time of the last report (none yet)

    def report(self, metrics: dict[str, Any]) -> None:
        """Keep the loop's newest metrics for the next report."""
        self.pending = metrics

    def __call__(self) -> str | None:
        self.steps += 1
        if self.skip > 0:
            self.skip -= 1
            return None
        preempted = ray.train.get_preemption_info() is not None
        answer = None
        if self.lead:
            now = time.monotonic()
            answer = (run_record.stop_requested(self.run_dir, self.session), next_look(self.steps, now - self.since, self.every),
                      self.pending is not None and now - self.reported >= REPORT_INTERVAL_S)  # fmt: skip
        stop, self.every, report = ray.train.collective.broadcast_from_rank_zero(answer)
        self.skip, self.steps, self.since = self.every - 1, 0, time.monotonic()
        if report:
            self._report()
        if preempted:
            return loop.PREEMPTED
        return loop.STOPPED if stop else None

    def flush(self) -> None:
        """Report the metrics not yet reported (every rank, at the loop's end)."""
        if ray.train.collective.broadcast_from_rank_zero(self.pending is not None if self.lead else None):
            self._report()

    def _report(self) -> None:
        ray.train.report(self.pending or {})  # every rank calls it: a barrier
        self.pending, self.reported = None, time.monotonic()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point Ray runs on every worker."""
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every array it writes at INFO
    ctx = ray.train.get_context()
    job = loop.TrainJob(**config)
    if run_record.failure(job.run_dir, job.session) is not None:
        return  # a restart after a failure it would meet again: end, the driver reports it
    sync = StepSync(job.run_dir, job.session, ctx.get_world_rank())
    try:
        loop.train(job, loop.WorkerContext(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
                                           report=sync.report, should_stop=sync))  # fmt: skip
        sync.flush()
    except Exception as err:
        if loop.cannot_heal(err):
            run_record.record_failure(job.run_dir, job.session, ctx.get_world_rank(), err)
        raise


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
    # Named, so a GPU worker whose CUDA backend does not start fails at once instead of training on its CPU.
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
