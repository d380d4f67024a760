"""Training on Ray Train: two worker processes (jax.distributed on CPU) match one, a killed worker
is replaced and the run resumes from its last checkpoint, run.json counts the restart."""

from __future__ import annotations

import os
import signal
import threading
import time

import jax
import numpy as np
import psutil
import pytest

from jobs import training
from recap_ray.configs import registry
from recap_ray.models import checkpoints, value_weights, weights
from recap_ray.train import run_record


def _config(tmp_path, name, train_dataset, sentencepiece_model, **kw):
    base = dict(dataset=train_dataset, config="value_tiny", run_dir=str(tmp_path / name), tokenizer=sentencepiece_model,
                batch_size=4, log_interval=2, loader_threads=1, max_failures=2)  # fmt: skip
    return training.Config(**{**base, **kw})


def _params(run_dir):
    params, step = value_weights.load_checkpoint(checkpoints.params_dir(checkpoints.resolve(run_dir)), use_ema=False)
    return params, step


def test_two_workers_equal_one_worker(ray_local, tmp_path, train_dataset, sentencepiece_model):
    one = training.run(_config(tmp_path, "one", train_dataset, sentencepiece_model, num_workers=1, num_steps=4, save_interval=4), "value")
    two = training.run(_config(tmp_path, "two", train_dataset, sentencepiece_model, num_workers=2, num_steps=4, save_interval=4), "value")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["step"] == two["step"] == 4 and two["status"] == "finished"
    # Same global batch: the loss and gradient norm of the last step agree (a worker averaging only its
    # own half of the batch would not).
    for key in ("loss", "grad_norm"):
        assert one["metrics"][key] == pytest.approx(two["metrics"][key], rel=1e-4), key
    (a, step_a), (b, step_b) = _params(tmp_path / "one"), _params(tmp_path / "two")
    assert step_a == step_b == 4
    init = registry.get("value_tiny").create(registry.get("value_tiny").seed)
    init_leaves = jax.tree.leaves(weights.model_params(init))
    changed = 0
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), init_leaves):
        # Adam turns reduction-order noise on near-zero gradients into updates of up to ~lr; 4 steps
        # at lr <= 1e-3 move a leaf by at most 4e-3, so 2e-4 is 5% of the largest possible move.
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=2e-4)
        changed += not np.allclose(x, z)
    assert changed > 0, "training did not move any parameter"

def _train_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("ray::RayTrainWorker"):
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
