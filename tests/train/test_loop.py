"""The training loop in one process: the loss falls, preemption + resume equals an uninterrupted run,
policy checkpoints come out in openpi's layout with their assets."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recap_ray.configs import registry
from recap_ray.data import norm_stats
from recap_ray.models import checkpoints, value_weights, weights
from recap_ray.train import checkpointing, loop, run_record, samples, tasks


class Recorder:
    def __init__(self):
        self.losses: dict[int, float] = {}
        self.histograms: list[str] = []

    def scalars(self, step, values):
        self.losses[step] = values["train/loss"]

    def histogram(self, step, name, values):
        self.histograms.append(name)

    def image(self, step, name, image):
        pass

    def close(self):
        pass


def _job(tmp_path, train_dataset, sentencepiece_model, kind="value", **kw):
    base = dict(kind=kind, config="value_tiny" if kind == "value" else "pi06_tiny", dataset=str(train_dataset),
                run_dir=str(tmp_path / f"run-{kind}"), tokenizer=str(sentencepiece_model), session="s",
                batch_size=4, log_interval=1, loader_threads=1, prefetch=2, async_save=False)  # fmt: skip
    return loop.TrainJob(**{**base, **kw})


def test_value_loss_falls(tmp_path, train_dataset, sentencepiece_model, monkeypatch):
    pushed = []

    class Counted(loop.InFlight):  # every dispatched step goes through the bound on steps ahead of the device
        def push(self, output):
            pushed.append(output)
            super().push(output)

    monkeypatch.setattr(loop, "InFlight", Counted)
    rec = Recorder()
    loop.train(_job(tmp_path, train_dataset, sentencepiece_model, num_steps=80, save_interval=80), tracker=rec)
    losses = [rec.losses[s] for s in sorted(rec.losses)]
    assert len(losses) == 80 and len(pushed) == 80
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10]), losses
    assert "train/predicted_value" in rec.histograms


def test_preempted_then_resumed_equals_uninterrupted(tmp_path, train_dataset, sentencepiece_model):
    straight = _job(tmp_path / "a", train_dataset, sentencepiece_model, num_steps=6, save_interval=10)
    loop.train(straight)

    calls = {"n": 0}

    def stop_after_three() -> str | None:
        calls["n"] += 1
        return loop.PREEMPTED if calls["n"] == 3 else None

    broken = dataclasses.replace(straight, run_dir=str(tmp_path / "b" / "run"))
    with pytest.raises(loop.Preempted):
        loop.train(broken, loop.WorkerContext(should_stop=stop_after_three))
    record = run_record.read(broken.run_dir)
    assert (record["status"], record["step"], record["checkpoints"]) == ("preempted", 3, [3])
    loop.train(dataclasses.replace(broken, session="s2"))
    record = run_record.read(broken.run_dir)
    assert (record["status"], record["step"], record["restarts"]) == ("finished", 6, 0)

    for key in ("params", "ema_params"):
        a, step_a = value_weights.load_checkpoint(checkpoints.params_dir(checkpoints.resolve(straight.run_dir)), use_ema=key == "ema_params")
        b, step_b = value_weights.load_checkpoint(checkpoints.params_dir(checkpoints.resolve(broken.run_dir)), use_ema=key == "ema_params")
        assert step_a == step_b == 6
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_notice_at_the_last_step_finishes_the_run(tmp_path, train_dataset, sentencepiece_model):
    """A preemption notice that arrives with the last step: the run is complete, so no restart is asked for."""
    job = _job(tmp_path, train_dataset, sentencepiece_model, num_steps=2, save_interval=10)
    loop.train(job, loop.WorkerContext(should_stop=iter([None, loop.PREEMPTED]).__next__))  # the notice comes at step 2
    record = run_record.read(job.run_dir)
    assert (record["status"], record["step"], record["checkpoints"]) == ("finished", 2, [2])


def test_a_loader_that_cannot_keep_up_shows_as_input_wait(tmp_path, train_dataset, sentencepiece_model, monkeypatch):
    """Each batch takes 0.3 s to make and a value_tiny step a few ms: once compiled, the loop spends nearly all of
    its time waiting for input, and says so (`input_wait_share`, TensorBoard's train/input_wait_share)."""
    make_batch = samples.make_batch

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return make_batch(*args, **kwargs)

    monkeypatch.setattr(samples, "make_batch", slow)
    reported = []
    job = _job(tmp_path, train_dataset, sentencepiece_model, num_steps=5, save_interval=10, prefetch=1)
    loop.train(job, loop.WorkerContext(report=reported.append))
    shares = [m["input_wait_share"] for m in reported]
    assert len(shares) == 5 and all(0 <= x <= 1 for x in shares)
    assert min(shares[2:]) > 0.8, shares  # the first steps overlap the compile


def test_a_damaged_checkpoint_is_named_when_resuming(tmp_path, train_dataset, sentencepiece_model, monkeypatch):
    job = _job(tmp_path, train_dataset, sentencepiece_model, num_steps=2, save_interval=2)
    loop.train(job)
    data = max((f for f in (tmp_path / "run-value" / "checkpoints" / "2" / "train_state").rglob("*") if f.is_file()),
               key=lambda f: f.stat().st_size)  # the biggest file: array chunks  # fmt: skip
    data.write_bytes(b"damaged")
    closed = []

    def manager(*args, **kwargs):
        mngr = open_manager(*args, **kwargs)
        close = mngr.close
        mngr.close = lambda: (closed.append(True), close())
        return mngr

    open_manager = checkpointing.manager
    monkeypatch.setattr(checkpointing, "manager", manager)
    with pytest.raises(OSError, match=r"checkpoints/2: cannot read its arrays \(damaged\? move that step directory aside"):
        loop.train(dataclasses.replace(job, num_steps=3))
    assert closed == [True]  # the failed resume still closed its checkpoint manager


def test_policy_checkpoint_is_openpi_layout_with_assets(tmp_path, train_dataset, sentencepiece_model, monkeypatch):
    job = _job(tmp_path, train_dataset, sentencepiece_model, kind="policy", num_steps=2, save_interval=2)
    loop.train(job)
    step_dir = checkpoints.resolve(job.run_dir)
    config = registry.get("pi06_tiny")
    model = config.model.create(__import__("flax").nnx.Rngs(0))
    before = weights.model_params(model)
    weights.load_into(model, checkpoints.params_dir(step_dir))  # strict: every leaf present, shapes equal
    after = weights.model_params(model)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    stats = norm_stats.load(checkpoints.norm_stats_file(step_dir, config.asset_id))
    assert stats["state"].mean.shape == (14,) and stats["actions"].mean.shape == (14,)
    assert checkpoints.tokenizer_file(step_dir).read_bytes() == sentencepiece_model.read_bytes()
    assert checkpoints.run_info(step_dir)["config"] == "pi06_tiny"

    def unread(self):
        raise AssertionError("a resumed full fine-tune read its initial weights")

    monkeypatch.setattr(tasks.PolicyTask, "initial_weights", unread)  # every weight trains: the checkpoint has all
    loop.train(dataclasses.replace(job, num_steps=3, session="s2"))
    assert run_record.read(job.run_dir)["step"] == 3


def test_policy_run_keeps_every_keep_period_checkpoint(tmp_path, train_dataset, sentencepiece_model, monkeypatch):
    """openpi: the newest `keep` checkpoints plus every step divisible by the config's keep_period."""
    config = dataclasses.replace(registry.get("pi06_tiny"), keep_period=2)
    monkeypatch.setattr(registry, "get", lambda name, kind=None: config)
    job = _job(tmp_path, train_dataset, sentencepiece_model, kind="policy", num_steps=5, save_interval=1,
               keep_checkpoints=1)  # fmt: skip
    loop.train(job)
    assert checkpoints.steps(job.run_dir) == [2, 4, 5]
    assert run_record.read(job.run_dir)["checkpoints"] == [2, 4, 5]


def test_lora_policy_trains_frozen_leaves_in_bfloat16(tmp_path, train_dataset, sentencepiece_model, monkeypatch):
    """openpi's init_train_state casts the frozen (non-LoRA LLM) leaves to bfloat16: the step runs on them and the
    checkpoint holds them so, while the trainable leaves stay float32."""
    base = registry.get("pi06_tiny")
    model = dataclasses.replace(base.model, paligemma_variant="tiny_lora", action_expert_variant="tiny_expert_lora")
    config = dataclasses.replace(base, model=model)
    monkeypatch.setattr(registry, "get", lambda name, kind=None: config)
    job = _job(tmp_path, train_dataset, sentencepiece_model, kind="policy", num_steps=1, save_interval=1)
    loop.train(job)
    saved = weights.flatten(weights.restore(checkpoints.params_dir(checkpoints.resolve(job.run_dir))))
    frozen = {p for p in saved if model.is_frozen(p)}
    assert frozen and len(frozen) < len(saved)
    assert {str(saved[p].dtype) for p in frozen} == {"bfloat16"}
    assert {str(v.dtype) for p, v in saved.items() if p not in frozen} == {"float32"}



def test_a_non_finite_loss_stops_before_its_checkpoint(tmp_path, train_dataset, sentencepiece_model, monkeypatch):
    """A NaN loss stops the run before the diverged state is saved, with an error a restart would meet again."""
    real = tasks.ValueTask.loss

    def nan_loss(self):
        inner = real(self)
        return lambda model, rng, batch: (jnp.nan * inner(model, rng, batch)[0], inner(model, rng, batch)[1])

    monkeypatch.setattr(tasks.ValueTask, "loss", nan_loss)
    job = _job(tmp_path, train_dataset, sentencepiece_model, num_steps=4, save_interval=1, log_interval=2)
    with pytest.raises(loop.NonFiniteLoss, match="loss is nan at step 1; the newest checkpoint is step None") as err:
        loop.train(job)
    assert loop.cannot_heal(err.value) and checkpoints.steps(job.run_dir) == []


def test_which_failures_a_restart_cannot_heal():
    def raised(error, cause=None):
        try:
            raise error from cause
        except Exception as err:
            return err

    assert loop.cannot_heal(samples.SampleError("episode 3, frame 2: corrupt"))
    assert loop.cannot_heal(ValueError("bad config"))
    assert not loop.cannot_heal(raised(samples.SampleError("episode 3"), OSError("NFS: stale file handle")))
    assert not loop.cannot_heal(RuntimeError("a peer left the collective"))
    assert not loop.cannot_heal(loop.Preempted("stopped at step 5"))
    assert loop.cannot_heal(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9.1GiB"))
    assert not loop.cannot_heal(jax.errors.JaxRuntimeError("INTERNAL: collective operation aborted"))
    # what a CPU worker met when its peer was killed during a collective (an XLA status, raised as ValueError)
    gloo = "UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/pair.cc:538] Read error " \
           "[127.0.0.1]:14014: Connection reset by peer"  # fmt: skip
    assert not loop.cannot_heal(ValueError(gloo))
    assert loop.cannot_heal(ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB"))
    assert loop.cannot_heal(ValueError("UNKNOWN_FIELD: not a status code"))


def test_in_flight_holds_the_loop_at_most_limit_steps_ahead():
    waited = []
    held = loop.InFlight(limit=2, wait=waited.append)
    for step in range(1, 6):
        held.push(step)
        assert len(held.queued) == min(step, 2) and waited == list(range(1, max(step - 1, 1)))
