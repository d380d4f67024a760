"""Run directories in buckets, on local stand-ins: a value run on gs:// (gcp-storage-emulator, reached
by gcsfs and TensorStore), its tokenizer read from the bucket, writes run.json, checkpoints and
TensorBoard events there and resumes from them; on s3:// (moto's server, reached by s3fs) run.json, TensorBoard and checkpoint listing work and
training is refused before any work, as orbax cannot save arrays to S3."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from jobs import training
from recap_ray import tracker
from recap_ray.data import norm_stats, versions
from recap_ray.models import checkpoints, tokenizer
from recap_ray.train import checkpointing, loop, run_record
from tests.train import gcs_emulator

BUCKET = gcs_emulator.BUCKET


@pytest.fixture(scope="module")
def s3_bucket() -> Iterator[str]:
    """s3://BUCKET on moto's S3 server (s3fs and boto3 find it through AWS_ENDPOINT_URL)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
    server.stop()


def _events(run_dir: str) -> bytes:
    files = list((epath.Path(run_dir) / "tensorboard").iterdir())
    assert [f.name.startswith("events.out.tfevents.") for f in files] == [True], files
    return files[0].read_bytes()


def test_value_run_in_gcs_bucket_resumes(gcs_bucket, train_dataset, sentencepiece_model):
    run_dir = f"{gcs_bucket}/runs/value"
    bucket_tokenizer = f"{gcs_bucket}/assets/tokenizer.model"  # --tokenizer gs://...: each worker reads the bucket
    epath.Path(bucket_tokenizer).write_bytes(sentencepiece_model.read_bytes())
    with pytest.raises(FileNotFoundError, match=f"tokenizer {gcs_bucket}/assets/missing.model: pass --tokenizer"):
        training.resolve_tokenizer(f"{gcs_bucket}/assets/missing.model")
    config = training.Config(dataset=train_dataset, config="value_tiny", run_dir=run_dir, tokenizer=bucket_tokenizer)
    fingerprint = versions.fingerprint(train_dataset)
    training.prepare_run_dir(config, "value", fingerprint)  # nothing there yet: a new run
    job = loop.TrainJob(kind="value", config="value_tiny", dataset=str(train_dataset), run_dir=run_dir,
                        tokenizer=training.resolve_tokenizer(config.tokenizer), session="s1", dataset_fingerprint=fingerprint,
                        num_steps=1, save_interval=1, batch_size=4, log_interval=1, loader_threads=1, prefetch=2,
                        async_save=False)  # fmt: skip
    loop.train(job)
    record = run_record.read(run_dir)
    assert (record["status"], record["step"], record["checkpoints"]) == ("finished", 1, [1])
    assert checkpoints.steps(run_dir) == [1]
    assert b"train/loss" in _events(run_dir)

    with pytest.raises(FileExistsError, match=f"{run_dir} already holds a run at step 1 \\(status finished\\); pass --resume"):
        training.prepare_run_dir(config, "value", fingerprint)
    with pytest.raises(ValueError, match="dataset_fingerprint was"):
        training.prepare_run_dir(dataclasses.replace(config, resume=True), "value", "another dataset")
    training.prepare_run_dir(dataclasses.replace(config, resume=True), "value", fingerprint)
    loop.train(dataclasses.replace(job, num_steps=2, session="s2"))
    record = run_record.read(run_dir)
    assert (record["status"], record["start_step"], record["step"], record["checkpoints"]) == ("finished", 1, 2, [1, 2])

    (checkpoints.params_dir(checkpoints.checkpoints_dir(run_dir) / "3") / "manifest.ocdbt").write_bytes(b"")
    assert checkpoints.steps(run_dir) == [1, 2]  # a step written in place lacks commit_success.txt until done
    step_dir = checkpoints.resolve(run_dir)
    assert str(step_dir) == f"{run_dir}/checkpoints/2"
    assert checkpoints.run_info(step_dir)["config"] == "value_tiny"
    with ocp.PyTreeCheckpointer() as ckptr:
        first, second = (ckptr.restore(checkpoints.params_dir(checkpoints.resolve(run_dir, s))) for s in (1, 2))
    assert (first["step"], second["step"]) == (1, 2)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first["params"]), jax.tree.leaves(second["params"])))
    mngr = checkpointing.manager(run_dir)
    assets = mngr.restore(2, args=ocp.args.Composite(assets=checkpointing.AssetsRestore()))["assets"]
    mngr.close()
    assert assets == {checkpoints.TOKENIZER_FILE: sentencepiece_model.read_bytes()}
    remote, local = (tokenizer.PromptTokenizer(p, 16) for p in (checkpoints.tokenizer_file(step_dir), sentencepiece_model))
    np.testing.assert_array_equal(remote.tokenize("hand over the block", None)[0], local.tokenize("hand over the block", None)[0])
    stats = {"state": norm_stats.NormStats(mean=np.arange(3.0), std=np.ones(3), q01=-np.ones(3), q99=np.ones(3))}
    checkpoints.norm_stats_file(step_dir, "tiny").write_text(norm_stats.dumps(stats))  # serving reads it too
    np.testing.assert_array_equal(norm_stats.load(checkpoints.norm_stats_file(step_dir, "tiny"))["state"].mean, np.arange(3.0))

    training.prepare_run_dir(dataclasses.replace(config, overwrite=True), "value", fingerprint)
    assert run_record.read(run_dir) == {} and checkpoints.steps(run_dir) == []


def test_s3_run_dir_records_and_refuses_checkpoints(s3_bucket, tmp_path):
    run_dir = f"{s3_bucket}/runs/value"
    config = training.Config(dataset=tmp_path, config="value_tiny", run_dir=run_dir)
    with pytest.raises(ValueError, match=f"{run_dir}: orbax-checkpoint cannot save checkpoints to s3://"):
        training.prepare_run_dir(config, "value", "fingerprint")

    run_record.start(run_dir, "s1", kind="value", config="value_tiny")
    run_record.update(run_dir, step=3)
    record = run_record.read(run_dir)
    assert [record[k] for k in ("kind", "status", "step", "restarts")] == ["value", "running", 3, 0]
    board = tracker.TensorBoardTracker(f"{run_dir}/tensorboard")
    board.scalars(1, {"train/loss": 0.5})
    board.close()
    assert b"train/loss" in _events(run_dir)
    for name in ("3", "5", "7.orbax-checkpoint-tmp-1"):  # finished saves, and one in progress
        (checkpoints.params_dir(checkpoints.checkpoints_dir(run_dir) / name) / "manifest.ocdbt").write_bytes(b"")
    assert checkpoints.steps(run_dir) == [3, 5]
    assert str(checkpoints.resolve(run_dir)) == f"{run_dir}/checkpoints/5"


def test_workers_get_local_paths_absolute(tmp_path, monkeypatch, sentencepiece_model):
    """Ray Train runs workers in a directory of its own: relative paths of the command line are made absolute,
    URIs and weight names (`bundle`, `none`) pass as they are."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok.model").write_bytes(sentencepiece_model.read_bytes())
    (tmp_path / "stats.json").write_text("{}")
    (tmp_path / "sft").mkdir()
    config = training.Config(dataset=Path("data"), config="pi06_tiny", run_dir="runs/p", tokenizer="tok.model", init="sft")
    job = training.make_job(config, "policy", "fp", norm_stats="stats.json")
    assert (job.dataset, job.run_dir, job.tokenizer, job.init, job.norm_stats) == tuple(
        str(tmp_path / p) for p in ("data", "runs/p", "tok.model", "sft", "stats.json"))  # fmt: skip
    for init in ("bundle", "none", "gs://bucket/params"):
        assert training.make_job(dataclasses.replace(config, init=init, run_dir="gs://b/run"), "value", "fp").init == init
    assert training.make_job(dataclasses.replace(config, run_dir="gs://b/run"), "value", "fp").run_dir == "gs://b/run"


def test_loader_threads_follow_the_workers_cpus(tmp_path, sentencepiece_model):
    """One decode thread per CPU a worker reserves (at least 4), unless --loader-threads says otherwise."""
    config = training.Config(dataset=tmp_path, config="pi06_tiny", run_dir=str(tmp_path / "run"), tokenizer=str(sentencepiece_model))
    for cpus, threads, want in ((1.0, None, 4), (32.0, None, 32), (7.5, None, 7), (32.0, 2, 2)):
        job = training.make_job(dataclasses.replace(config, cpus_per_worker=cpus, loader_threads=threads), "policy", "fp")
        assert job.loader_threads == want, (cpus, threads)


def test_a_run_that_finished_no_step_is_named_so(tmp_path):
    run_record.start(tmp_path / "run", "s1", kind="value", config="value_tiny")  # crashed before its first step
    config = training.Config(dataset=tmp_path / "data", config="value_tiny", run_dir=str(tmp_path / "run"))
    with pytest.raises(FileExistsError, match=r"holds a run that finished no step \(status running\); pass --resume to continue it"):
        training.prepare_run_dir(config, "value", "fp")
