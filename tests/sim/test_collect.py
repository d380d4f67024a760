"""jobs.collect: policy-driven DAgger rollouts written as a valid dataset with the corrections marked."""

import json

import numpy as np

from jobs import collect
from jobs import validate as validate_job
from recap_ray.data import dataset
from recap_ray.sim import env as env_lib
from recap_ray.sim import policies, session, world

TASK = world.TaskConfig(image_height=48, image_width=64, time_limit_s=4.0)


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
