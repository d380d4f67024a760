"""`train_policy --norm-stats FILE`: a file `jobs.norm_stats` wrote for other actions (the stored columns,
another horizon) or narrower than the data is refused by the driver; the policy's own stats and openpi's
unmarked files are taken."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs import norm_stats as norm_stats_job
from jobs import train_policy, training
from recap_ray import transforms, trossen
from recap_ray.data import dataset, norm_stats
from recap_ray.train import loop, samples
from tests.train.conftest import make_train_dataset


@pytest.fixture
def check(tmp_path, train_dataset, sentencepiece_model):
    def run(stats_file):
        config = train_policy.Config(dataset=train_dataset, config="pi06_tiny", run_dir=str(tmp_path / "run"),
                                     tokenizer=str(sentencepiece_model), norm_stats=str(stats_file))  # fmt: skip
        job = training.make_job(config, "policy", "fp", norm_stats=config.norm_stats)
        loop.check_dataset(job, loop.make_task(job))

    return run


def test_the_policys_own_stats_are_taken_and_marked(tmp_path, train_dataset, check):
    own = norm_stats_job.main(norm_stats_job.Config(train_dataset, tmp_path / "own.json", config="pi06_tiny"))
    check(own)
    data = json.loads(own.read_text())
    assert data["recap_ray"] == {"actions": "delta_chunks", "action_horizon": 10, "adapt_to_pi": False, "config": "pi06_tiny"}
    del data["recap_ray"]  # as openpi writes it: no marker, taken as the policy's training stats
    (tmp_path / "openpi.json").write_text(json.dumps(data))
    check(tmp_path / "openpi.json")


def test_stats_of_the_stored_columns_are_refused(tmp_path, train_dataset, check):
    stored = norm_stats_job.main(norm_stats_job.Config(train_dataset, tmp_path / "stored.json"))
    with pytest.raises(ValueError, match=r"stored\.json: norm stats of stored actions, but config pi06_tiny trains on "
                                         r"delta_chunks of horizon 10; .*jobs\.norm_stats --dataset D --config pi06_tiny"):  # fmt: skip
        check(stored)


def test_stats_of_another_horizon_or_narrower_than_the_data_are_refused(tmp_path, train_dataset, check):
    own = norm_stats_job.main(norm_stats_job.Config(train_dataset, tmp_path / "own.json", config="pi06_tiny"))
    data = json.loads(own.read_text())
    (tmp_path / "h50.json").write_text(json.dumps({**data, "recap_ray": {**data["recap_ray"], "action_horizon": 50}}))
    with pytest.raises(ValueError, match="delta_chunks actions of horizon 50, but config pi06_tiny trains on delta_chunks of horizon 10"):  # fmt: skip
        check(tmp_path / "h50.json")
    narrow = {k: {f: v[:7] for f, v in s.items()} for k, s in data["norm_stats"].items()}
    (tmp_path / "narrow.json").write_text(json.dumps({"norm_stats": narrow}))
    with pytest.raises(ValueError, match=r"narrow\.json: norm stats for 'state' are 7 wide, the dataset's 'observation.state' 14"):  # fmt: skip
        check(tmp_path / "narrow.json")


def test_trossen_configs_stats_are_of_converted_data_and_refused_for_others(tmp_path, train_dataset, check):
    """pi06_aloha (adapt_to_pi) computes its stats after the Trossen conversion, as openpi's compute_norm_stats
    does after its Aloha input transform; a YAM config refuses them."""
    aloha = norm_stats_job.main(norm_stats_job.Config(train_dataset, tmp_path / "aloha.json", config="pi06_aloha"))
    got = norm_stats.load(aloha)
    want = {"state": norm_stats.RunningStats(), "actions": norm_stats.RunningStats()}
    with dataset.open(train_dataset) as ds:
        for ep in ds.meta.episodes:
            state = trossen.state_to_pi(ds.column(ep.index, "observation.state").astype(np.float32))
            actions = trossen.actions_to_pi(ds.column(ep.index, "action").astype(np.float32))
            for t in range(len(actions)):
                chunk = actions[np.minimum(np.arange(t, t + 50), len(actions) - 1)].copy()
                mask = np.asarray(transforms.ALOHA_DELTA_MASK)
                chunk[:, mask] -= state[t, mask]
                want["actions"].update(chunk)
            want["state"].update(state)
    for key, running in want.items():
        expected = running.result()
        for field in ("mean", "std", "q01", "q99"):
            np.testing.assert_allclose(getattr(got[key], field), getattr(expected, field), rtol=1e-5, atol=1e-6, err_msg=f"{key} {field}")
    assert json.loads(aloha.read_text())["recap_ray"]["adapt_to_pi"] is True
    with pytest.raises(ValueError, match=r"delta_chunks actions of horizon 50 in pi0's joint space \(adapt_to_pi\), but config "
                                         r"pi06_tiny trains on delta_chunks of horizon 10;"):  # fmt: skip
        check(aloha)


def test_a_policy_configs_stats_of_narrower_vectors_are_refused(tmp_path):
    """`jobs.norm_stats --config` on 6-joint data (a lerobot peer's): the width train_policy refuses, named with
    the layout it wants; before, numpy's broadcast error from the delta mask."""
    six = make_train_dataset(tmp_path / "six", width=6)
    with pytest.raises(samples.DatasetMismatch, match=r"'observation.state' has shape \[6\]; config pi06_tiny expects a "
                                                      r"vector of width 14 to 32; .*that layout"):  # fmt: skip
        norm_stats_job.main(norm_stats_job.Config(six, tmp_path / "ns.json", config="pi06_tiny"))
    assert not (tmp_path / "ns.json").exists()
    norm_stats_job.main(norm_stats_job.Config(six, tmp_path / "stored.json"))  # the stored columns: any width
