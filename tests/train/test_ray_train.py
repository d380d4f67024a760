"""Training on Ray Train: two worker processes (jax.distributed on CPU) match one, a killed worker
is replaced and the run resumes from its last checkpoint, run.json counts the restart; a node
preempted by SIGTERM gets a checkpoint at the current step and the elastic run goes on with fewer
workers."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import jax
import numpy as np
import psutil
import pytest
import ray
from ray.data._internal import cluster_autoscaler

from jobs import training
from recap_ray.configs import registry
from recap_ray.models import checkpoints, value_weights, weights
from recap_ray.train import run_record


@pytest.fixture(autouse=True)
def _fast_controller(monkeypatch):
    """The driver passes these to Ray Train's controller: it sees a finished worker group at its poll (2 s by
    default), a preemption notice at the watcher's (5 s)."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    monkeypatch.setenv("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "0.2")


def _config(tmp_path, name, train_dataset, sentencepiece_model, **kw):
    base = dict(dataset=train_dataset, config="value_tiny", run_dir=str(tmp_path / name), tokenizer=sentencepiece_model,
                batch_size=4, log_interval=2, loader_threads=1, max_failures=2)  # fmt: skip
    return training.Config(**{**base, **kw})


def _params(run_dir):
    params, step = value_weights.load_checkpoint(checkpoints.params_dir(checkpoints.resolve(run_dir)), use_ema=False)
    return params, step


def test_two_workers_equal_one_worker(ray_local, tmp_path, train_dataset, sentencepiece_model):
    """Both start from a pistar checkpoint (each worker places its shards of it: jax.make_array_from_callback
    across two processes)."""
    value_tiny = registry.get("value_tiny")
    noise = np.random.default_rng(5)
    start = weights.unflatten({p: np.asarray(x) + 0.01 * noise.standard_normal(x.shape).astype(np.float32)
                               for p, x in weights.flatten(weights.model_params(value_tiny.create(1))).items()})  # fmt: skip
    init = str(value_weights.save_checkpoint(tmp_path / "init", 1, start, start))
    one = training.run(_config(tmp_path, "one", train_dataset, sentencepiece_model, num_workers=1, num_steps=4, save_interval=4, init=init), "value")  # fmt: skip
    two = training.run(_config(tmp_path, "two", train_dataset, sentencepiece_model, num_workers=2, num_steps=4, save_interval=4, init=init), "value")  # fmt: skip
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["step"] == two["step"] == 4 and two["status"] == "finished"
    # Same global batch: the loss and gradient norm of the last step agree (a worker averaging only its
    # own half of the batch would not).
    for key in ("loss", "grad_norm"):
        assert one["metrics"][key] == pytest.approx(two["metrics"][key], rel=1e-4), key
    (a, step_a), (b, step_b) = _params(tmp_path / "one"), _params(tmp_path / "two")
    assert step_a == step_b == 4
    changed, kept = 0, 0
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(start)):
        # Adam turns reduction-order noise on near-zero gradients into updates of up to ~lr; 4 steps
        # at lr <= 1e-3 move a leaf by at most 4e-3, so 2e-4 is 5% of the largest possible move.
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=2e-4)
        changed += not np.allclose(x, z)
        kept += np.array_equal(x, z) and np.array_equal(y, z)  # the frozen backbones: the checkpoint's, exactly
    assert changed > 0, "training did not move any parameter"
    assert kept > 0 and kept + changed == len(jax.tree.leaves(start))


def test_a_failure_a_restart_would_meet_again_ends_the_run_at_once(ray_local, tmp_path, sentencepiece_model):
    """A video that cannot be decoded fails every attempt: the run stops after one quick restart (no training),
    not after max_failures full ones, naming the episode. A later --resume is a new attempt (and fails again)."""
    from tests.train.conftest import make_train_dataset

    root = make_train_dataset(tmp_path / "data", version="v2.1")
    for p in root.glob("videos/*/*/episode_000001.mp4"):
        p.write_bytes(b"not a video" * 100)
    config = _config(tmp_path, "run", root, sentencepiece_model, num_steps=40, save_interval=5, max_failures=2)
    with pytest.raises(training.TrainingFailed, match=r"failed (after step \d+|in its first step) on rank 0 \(not retried: .*\): SampleError: .*episode 1"):  # fmt: skip
        training.run(config, "value")
    record = run_record.read(config.run_dir)
    assert (record["status"], record["restarts"]) == ("failed", 0) and "episode 1" in record["error"]
    with pytest.raises(training.TrainingFailed, match="episode 1"):
        training.run(dataclasses.replace(config, resume=True), "value")
    assert run_record.read(config.run_dir)["restarts"] == 0


def _train_workers() -> list[psutil.Process]:
    """This session's Ray Train worker processes (descendants: this process started the local cluster)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if " ".join(proc.cmdline()).startswith("ray::RayTrainWorker"):
                found.append(proc)
    return found


def test_killed_worker_restarts_from_last_checkpoint(ray_local, tmp_path, train_dataset, sentencepiece_model):
    config = _config(tmp_path, "killed", train_dataset, sentencepiece_model, num_workers=2, num_steps=120, save_interval=5)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(training.run(config, "value")))
    thread.start()
    deadline = time.time() + 300
    while not checkpoints.steps(config.run_dir) and time.time() < deadline:
        time.sleep(0.05)
    assert checkpoints.steps(config.run_dir), "no checkpoint within 300 s"
    victims = _train_workers()
    assert victims, "no RayTrainWorker process found"
    os.kill(victims[-1].pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()
    record = run_record.read(config.run_dir)
    assert record["status"] == "finished" and record["step"] == 120
    assert record["restarts"] >= 1, record


def _wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s")


def _refresh_elastic_node_view() -> None:
    """Make Ray Train's elastic sizing see the nodes alive now.

    Ray 2.60's elastic policy counts the workers that fit on the nodes Ray's AutoscalingCoordinator
    actor last listed, and that actor (one per cluster, made by the session's first Train or Data
    run) re-reads the node list only every 20 s: without this, a run started just after a node
    joined starts with the workers that fit without it.
    """
    coordinator = cluster_autoscaler.get_or_create_autoscaling_coordinator()
    ray.get(coordinator.get_reserved_resources.remote("", recompute=True))  # recompute: re-reads ray.nodes()


def test_an_interrupted_driver_has_the_workers_save_their_step_and_end(ray_local, tmp_path, train_dataset, sentencepiece_model, monkeypatch):
    """Ctrl-C or SIGTERM to the driver (`ray job stop`, a pod's deletion): the workers save the step they are
    at (no interval save falls in the run) and end; the job stops with one line; --resume continues."""
    config = _config(tmp_path, "interrupted", train_dataset, sentencepiece_model, num_steps=400, save_interval=1000)

    def interrupt() -> None:  # from another thread, once the workers train: the signal reaches the main thread
        _wait_for(lambda: run_record.read(config.run_dir).get("step", 0) >= 2, 300, "training step 2")
        os.kill(os.getpid(), signal.SIGINT)

    sigint_before = signal.getsignal(signal.SIGINT)
    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(training.TrainingStopped, match=r"stopped at step \d+ as asked, its checkpoint saved; --resume"):
        training.run(config, "value")
    stopped = run_record.read(config.run_dir)
    step = stopped["step"]
    assert (stopped["status"], stopped["checkpoints"]) == ("stopped", [step]) and 2 <= step < 400, stopped
    assert _params(config.run_dir)[1] == step and not (tmp_path / "interrupted" / run_record.STOP_FILE).exists()
    # resumed, with an interrupt that comes as the last step ends (the workers finish): the job still stops
    monkeypatch.setattr(training.run_record, "stop_requested", lambda run_dir, session: True)  # the driver's look only
    with pytest.raises(training.TrainingStopped, match=rf"finished \(step {step + 2}\) as the interrupt came"):
        training.run(dataclasses.replace(config, resume=True, num_steps=step + 2), "value")
    resumed = run_record.read(config.run_dir)
    assert (resumed["status"], resumed["start_step"], resumed["step"]) == ("finished", step, step + 2), resumed
    # Ray Train's fit() leaves its own Ctrl-C handler behind (an interrupt then only aborts a finished run):
    # the next stage of a round must still be interruptible
    assert signal.getsignal(signal.SIGINT) is sigint_before


def _alive_nodes() -> int:
    return sum(node["Alive"] for node in ray.nodes())


def test_sigterm_to_node_saves_current_step_and_run_continues_on_fewer_workers(ray_local, tmp_path, train_dataset, sentencepiece_model, monkeypatch):
    """Kubernetes preempts a pod by SIGTERM to its `ray start --block`, which drains the node for
    preemption: both workers save the step they are at, and the elastic group (2, down to 1) goes on
    with the one worker that fits on the head, from that step, with the same global batch.

    The head (4 CPUs) and the second node (3) each fit one 3-CPU worker, so a group of 2 has one
    worker on each node. The restart first asks for 2 again (the drained node is alive until its
    worker is gone) and retries with 1 after the worker-group start timeout.
    """
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "5")
    assert ray.cluster_resources()["CPU"] == 4 and _alive_nodes() == 1, "the ray_local fixture's head alone fits one 3-CPU worker"
    # Its own short temp dir: `ray start` writes the cluster address there, where ray.init() looks.
    node_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")
    node = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--address", ray.get_runtime_context().gcs_address,
         "--num-cpus", "3", "--temp-dir", node_dir, "--block", "--disable-usage-stats"],
        env={**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "20"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    config = _config(tmp_path, "preempted", train_dataset, sentencepiece_model, num_workers=2, min_workers=1,
                     cpus_per_worker=3, num_steps=40, save_interval=1000, log_interval=1, max_failures=1)  # fmt: skip
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(training.run(config, "value")))
    try:
        _wait_for(lambda: _alive_nodes() == 2, 60, "second node")
        _refresh_elastic_node_view()
        thread.start()
        running = _wait_for(lambda: (r := run_record.read(config.run_dir)).get("step", 0) >= 2 and r, 300, "training step 2")
        assert running["world_size"] == 2, running
        node.send_signal(signal.SIGTERM)
        preempted = _wait_for(lambda: (r := run_record.read(config.run_dir)).get("status") == "preempted" and r, 60, "preemption checkpoint")
        _wait_for(lambda: _alive_nodes() == 1, 60, "drained node gone")
        _refresh_elastic_node_view()  # the retry after the start timeout asks for 1 worker, not 2 again
        thread.join(timeout=300)
    finally:
        if node.poll() is None:
            node.terminate()
        node.wait(timeout=60)
        shutil.rmtree(node_dir, ignore_errors=True)
        if thread.ident:
            thread.join(timeout=300)
    assert not thread.is_alive() and result, "the run did not finish"
    step = preempted["step"]
    assert (preempted["world_size"], preempted["checkpoints"]) == (2, [step]) and 2 <= step < 40, preempted  # no interval save
    saved = tmp_path / "preempted" / checkpoints.CHECKPOINTS_DIR / str(step) / checkpoints.TRAIN_STATE_ITEM
    assert sorted(p.name for p in saved.glob("ocdbt.process_*")) == ["ocdbt.process_0", "ocdbt.process_1"]  # both ranks wrote it
    record = run_record.read(config.run_dir)
    assert (record["status"], record["step"], record["start_step"], record["world_size"], record["global_batch"]) == ("finished", 40, step, 1, 4), record
    assert record["checkpoints"] == [step, 40] and record["restarts"] == 1, record
