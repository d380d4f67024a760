"""A policy retrained into the same run directory up to the same step is another policy: the server's
metadata tells them apart (orbax's commit time of the step), so an evaluation of the old one is not resumed."""

from __future__ import annotations

import shutil

import pytest

from jobs import evaluate
from recap_ray.models import checkpoints
from recap_ray.serve import policy
from recap_ray.train import loop


def test_a_retrained_step_serves_under_another_identity(tmp_path, train_dataset, sentencepiece_model):
    job = loop.TrainJob(kind="policy", config="pi06_tiny", dataset=str(train_dataset), run_dir=str(tmp_path / "run"),
                        tokenizer=str(sentencepiece_model), session="s", num_steps=1, batch_size=4, loader_threads=1,
                        prefetch=2, async_save=False)  # fmt: skip
    loop.train(job)
    first = policy.Policy.load(job.run_dir, "pi06_tiny_infer").metadata
    shutil.rmtree(job.run_dir)
    loop.train(job)
    second = policy.Policy.load(job.run_dir, "pi06_tiny_infer").metadata
    assert first["checkpoint"] == second["checkpoint"] == str(checkpoints.resolve(job.run_dir))
    assert second["checkpoint_saved_ns"] == checkpoints.saved_ns(checkpoints.resolve(job.run_dir))
    assert first["checkpoint_saved_ns"] < second["checkpoint_saved_ns"]

    config = evaluate.Config(endpoint="ws://unused:1", output=tmp_path / "eval")
    log = tmp_path / "eval" / evaluate.EPISODES_FILE
    log.parent.mkdir()
    log.write_text(evaluate.json.dumps({"record": evaluate.run_record(config, first)}) + "\n")
    with pytest.raises(ValueError, match=rf"differing fields: server\.checkpoint_saved_ns: recorded {first['checkpoint_saved_ns']}, now {second['checkpoint_saved_ns']}\. "):
        evaluate.load_episodes(log, evaluate.run_record(config, second))


def test_a_checkpoint_without_orbax_metadata_has_no_saved_time(tmp_path):
    """openpi's own checkpoints (params/ and assets/ only) are served without it."""
    checkpoints.params_dir(tmp_path / "7").mkdir(parents=True)
    assert checkpoints.saved_ns(tmp_path / "7") is None
