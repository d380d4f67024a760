"""jobs.collect: policy-driven DAgger rollouts written as a valid dataset with the corrections marked."""

import dataclasses
import json
import time

import numpy as np
import pytest

from jobs import collect
from jobs import evaluate as evaluate_job
from jobs import validate as validate_job
from recap_ray.data import dataset
from recap_ray.sim import env as env_lib
from recap_ray.sim import evaluation, policies, session, world
from tests.sim.conftest import hold_still

TASK = world.TaskConfig(image_height=48, image_width=64, time_limit_s=4.0)
API_KEY = "SECRET-KEY-4711"


def test_collected_rollouts_round_trip(tmp_path):
    config = collect.Config(endpoint="ws://unused", output=tmp_path / "rollouts", rollouts=2, seed=5, task=TASK,
                            dagger=session.DaggerConfig(notice_prob=1.0))
    root = collect.record(policies.Random(seed=1), config, config.output)
    assert validate_job.main(validate_job.Config(root)) == 0
    assert json.loads((root / "meta" / "recap_ray.json").read_text())["job"] == "collect"
    with dataset.open(root) as ds:
        assert ds.num_episodes == 2
        replay = policies.Random(seed=1)  # the same policy stream, episode by episode
        for ep in range(2):
            expected = session.record_dagger(env_lib.HandoverEnv(TASK), (5, collect.COLLECT_STREAM, ep),
                                             session.PolicyDriver(replay, TASK), config.dagger, render=False)
            meta = ds.meta.episodes[ep].extra
            assert meta == {"success": False, "kind": "policy_rollout", "seed": [5, collect.COLLECT_STREAM, ep]}
            np.testing.assert_array_equal(ds.column(ep, "action"), expected.action)
            intervention = ds.column(ep, "intervention").reshape(-1)
            np.testing.assert_array_equal(intervention, expected.intervention)
            assert intervention.any() and not intervention.all()  # the operator stepped in, then handed back


def _episodes(root):
    """Per episode: its metadata and the state, action and intervention columns."""
    with dataset.open(root) as ds:
        return [(ds.meta.episodes[ep].extra, *(ds.column(ep, k) for k in ("observation.state", "action", "intervention")))
                for ep in range(ds.num_episodes)]  # fmt: skip


def _assert_same_episodes(a, b):
    assert len(a) == len(b)
    for (meta_a, *cols_a), (meta_b, *cols_b) in zip(a, b):
        assert meta_a == meta_b
        for x, y in zip(cols_a, cols_b):
            np.testing.assert_array_equal(x, y)


def test_a_dropped_connection_records_that_rollout_again_from_its_seed(tmp_path, policy_server):
    steady = policy_server()
    config = collect.Config(endpoint=steady.uri, output=tmp_path / "steady", rollouts=3, seed=2, task=TASK)
    expected = _episodes(collect.main(config))
    drop_at = len(steady.requests) // 2  # in the middle rollout
    flaky = policy_server(lambda n, request: None if n == drop_at else hold_still(n, request))
    root = collect.main(dataclasses.replace(config, endpoint=flaky.uri, output=tmp_path / "flaky"))
    assert flaky.connections == 2 and len(flaky.requests) > len(steady.requests)
    _assert_same_episodes(_episodes(root), expected)


def test_a_server_that_keeps_failing_names_the_rollout_and_publishes_nothing(tmp_path, policy_server):
    first = policy_server()
    config = collect.Config(endpoint=first.uri, output=tmp_path / "one", rollouts=1, task=TASK, max_retries=2)
    collect.main(config)
    per_rollout = len(first.requests)
    failing = policy_server(lambda n, request: None if n >= per_rollout + 3 else hold_still(n, request))
    with pytest.raises(evaluation.EpisodeFailed, match=r"rollout 1 .*gave up after 3 attempt.*1 of 3 rollouts were completed"):
        collect.main(dataclasses.replace(config, endpoint=failing.uri, output=tmp_path / "three", rollouts=3))
    assert failing.connections == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]  # neither a dataset nor its staging directory


@pytest.mark.parametrize("job", ["collect", "evaluate"])
def test_a_hung_server_times_out_and_is_retried(tmp_path, policy_server, job):
    server = policy_server(None)
    start = time.monotonic()
    with pytest.raises(evaluation.EpisodeFailed, match=r"gave up after 2 attempt.*no reply in 1"):
        if job == "collect":
            collect.main(collect.Config(endpoint=server.uri, output=tmp_path / "r", rollouts=1, task=TASK,
                                        reply_timeout_s=1, max_retries=1))  # fmt: skip
        else:
            evaluate_job.main(evaluate_job.Config(endpoint=server.uri, output=tmp_path / "e", episodes=1, task=TASK,
                                                  reply_timeout_s=1, max_retries=1))  # fmt: skip
    assert time.monotonic() - start < 10
    assert server.connections == 2


def test_lineage_names_the_checkpoint_and_no_file_holds_the_api_key(tmp_path, policy_server):
    server = policy_server(metadata={"checkpoint": "/runs/sft/checkpoints/300", "action_horizon": 4})
    root = collect.main(collect.Config(endpoint=server.uri, output=tmp_path / "r", rollouts=1, task=TASK,
                                       api_key=API_KEY))  # fmt: skip
    lineage = json.loads((root / "meta" / "recap_ray.json").read_text())
    assert lineage["server"] == {"checkpoint": "/runs/sft/checkpoints/300", "action_horizon": 4}
    assert lineage["config"]["endpoint"] == server.uri and "api_key" not in lineage["config"]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and not [p for p in files if API_KEY.encode() in p.read_bytes()]


def test_image_layout_reaches_the_policy(tmp_path):
    seen = []

    def policy(observation):
        seen.append(observation["images"]["cam_high"].shape)
        return {"actions": np.repeat(observation["state"][None], 4, axis=0)}

    config = collect.Config(endpoint="ws://unused", output=tmp_path / "r", rollouts=1, task=TASK, image_layout="hwc")
    collect.record(policy, config, config.output)
    assert seen and set(seen) == {(TASK.image_height, TASK.image_width, 3)}
