"""Serve fixtures: a tiny pi0.6 training-run checkpoint, a local policy on it, and the app on local Ray."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from recap_ray.configs import registry
from recap_ray.data import norm_stats
from recap_ray.models import checkpoints, weights
from recap_ray.serve import app_config, policy

CONFIG = "pi06_tiny_infer"
API_KEY = "sekrit"
MAX_MESSAGE_BYTES = 6 * 1024 * 1024  # above the 4 MiB default of Serve's gRPC transport (ingress -> model)


@pytest.fixture(scope="session")
def policy_run(tmp_path_factory: pytest.TempPathFactory, sentencepiece_model: Path) -> Path:
    """A training run directory laid out as `recap_ray.models.checkpoints` says: random tiny model at step 2."""
    config = registry.get(CONFIG)
    run = tmp_path_factory.mktemp("policy_run")
    step = checkpoints.checkpoints_dir(run) / "2"
    rng = np.random.default_rng(3)
    params = weights.flatten(weights.model_params(nnx.jit(lambda: config.model.create(nnx.Rngs(7)))()))
    # zero-initialised leaves (adaRMS gates among them) would make the action expert ignore the
    # prefix: perturb them so prompts and images change the actions
    params = {p: v if np.any(v) else rng.normal(0, 0.2, v.shape).astype(v.dtype) for p, v in params.items()}
    weights.save(checkpoints.params_dir(step), weights.unflatten(params))
    stats = {
        key: norm_stats.NormStats(mean=np.zeros(14), std=np.ones(14), q01=rng.uniform(-2.0, -0.5, 14),
                                  q99=rng.uniform(0.5, 2.0, 14))  # fmt: skip
        for key in ("state", "actions")
    }
    norm_stats.save(checkpoints.norm_stats_file(step, config.asset_id), stats)
    shutil.copy(sentencepiece_model, checkpoints.tokenizer_file(step))
    return run


def app_config_for(run: Path) -> app_config.AppConfig:
    """The test application: CPU, API key, batches of up to 4, fixed noise (answers are reproducible)."""
    return app_config.AppConfig(
        checkpoint=str(run), config=CONFIG, api_key=API_KEY, max_batch_size=4, batch_wait_timeout_s=0.05,
        num_gpus=0, model_num_cpus=0.5, ingress_num_cpus=0.25, fixed_noise=True, max_message_bytes=MAX_MESSAGE_BYTES,
    )  # fmt: skip


def _serve_in_subprocess(app: app_config.AppConfig, port: int, log: Path) -> subprocess.Popen:
    """`python -m jobs.serve --direct-ingress` with `app`'s options, on its own local Ray (direct ingress is a
    cluster-wide setting); its output goes to `log`."""
    args = [sys.executable, "-m", "jobs.serve", "--checkpoint", app.checkpoint, "--config", app.config,
            "--api-key", app.api_key, "--max-batch-size", str(app.max_batch_size),
            "--batch-wait-timeout-s", str(app.batch_wait_timeout_s), "--num-gpus", str(app.num_gpus),
            "--model-num-cpus", str(app.model_num_cpus), "--ingress-num-cpus", str(app.ingress_num_cpus),
            "--fixed-noise" if app.fixed_noise else "--no-fixed-noise", "--max-message-bytes", str(app.max_message_bytes),
            "--direct-ingress", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=Path(__file__).parents[2], env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="package", params=["proxy", "direct"])
def served(request, ray_local, policy_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """The application via `jobs.serve` on 127.0.0.1: behind Serve's proxy (in this process's Ray), or with
    the ingress taking connections itself (`--direct-ingress`, a subprocess with its own Ray)."""
    from ray import serve

    from jobs import serve as serve_job

    app, port = app_config_for(policy_run), serve_job.free_port()
    if request.param == "proxy":
        config = serve_job.Config(app=app, host="127.0.0.1", port=port, ready_timeout_s=180)
        try:
            uri, metadata = serve_job.start(config)
            yield {"uri": uri, "port": port, "metadata": metadata, "app": app}
        finally:
            serve.shutdown()
        return
    log = tmp_path_factory.mktemp("direct_ingress") / "jobs.serve.log"
    proc = _serve_in_subprocess(app, port, log)
    try:
        uri = f"ws://127.0.0.1:{port}"
        try:
            metadata = serve_job.wait_until_serving(uri, API_KEY, 300)
        except TimeoutError as err:
            raise RuntimeError(f"jobs.serve --direct-ingress did not come up; its log ends:\n{log.read_text()[-4000:]}") from err
        assert proc.poll() is None, "jobs.serve exited"
        yield {"uri": uri, "port": port, "metadata": metadata, "app": app}
    finally:
        proc.send_signal(signal.SIGTERM)  # how docker, systemd and Kubernetes stop it: Serve, then its Ray, shut down
        try:
            rc = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    text = log.read_text()
    if rc != 0 or "shutting down" not in text or "SIGTERM received" in text:
        pytest.fail(f"jobs.serve did not stop cleanly on SIGTERM (exit {rc}); its log ends:\n{text[-3000:]}")


@pytest.fixture(scope="session")
def local_policy(policy_run: Path) -> policy.Policy:
    """The same checkpoint and options, in this process: what the endpoint must answer."""
    return policy.Policy.load(policy_run, CONFIG, options=app_config_for(policy_run).policy_options)
