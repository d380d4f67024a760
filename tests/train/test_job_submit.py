"""`ray job submit`: the training job sent through Ray's Job API to a running cluster (`ray start --head`,
as on a real head node) with the repository as its working directory, and finishing there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recap_ray.models import checkpoints

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head started by `ray start --head --block` in its own process group; yields the dashboard address."""
    from ray.job_submission import JobSubmissionClient

    temp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Ray's socket paths have a length limit
    dashboard = _free_port()
    ports = {"--port": _free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": _free_port(),
             "--dashboard-agent-listen-port": _free_port(), "--dashboard-agent-grpc-port": _free_port()}  # fmt: skip
    command = ["ray", "start", "--head", "--block", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
               "--dashboard-host=127.0.0.1", *(f"{flag}={port}" for flag, port in ports.items())]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a private test cluster: no token
    log = (temp / "ray_start.log").open("w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        # The dashboard answers before the head's job agent has registered ("No available agent to submit job,
        # please try again later"): the cluster is ready once it accepts a no-op job.
        while True:
            try:
                JobSubmissionClient(address).submit_job(entrypoint="true")
                break
            except Exception:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start failed: {(temp / 'ray_start.log').read_text()[-3000:]}") from None
                time.sleep(1)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: ray start stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-KILL", "-f", str(temp)], check=False)  # anything left of this cluster alone
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_train_value_through_ray_job_submit(ray_head, tmp_path, train_dataset, sentencepiece_model):
    from ray.job_submission import JobStatus, JobSubmissionClient

    run_dir = tmp_path / "value"
    client = JobSubmissionClient(ray_head)
    job = client.submit_job(
        entrypoint=f"python -m jobs.train_value --dataset {train_dataset} --config value_tiny --run-dir {run_dir} "
                   f"--tokenizer {sentencepiece_model} --num-steps 2 --save-interval 2 --batch-size 4 --loader-threads 1",
        runtime_env={"working_dir": str(REPO)},
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job {job} still {status} after 600 s:\n{client.get_job_logs(job)[-3000:]}"
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-5000:]
    record = json.loads((run_dir / checkpoints.RUN_FILE).read_text())
    assert (record["status"], record["step"], record["checkpoints"]) == ("finished", 2, [2])
    assert checkpoints.steps(run_dir) == [2]
