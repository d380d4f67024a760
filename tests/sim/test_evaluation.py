"""Closed-loop evaluation: baselines, chunk execution, interval, video and the job."""

import json

import av
import numpy as np
import pytest

from jobs import evaluate as evaluate_job
from recap_ray.sim import env as env_lib
from recap_ray.sim import evaluation, policies, scripted, world

CFG = world.TaskConfig()


def test_wilson_interval_matches_hand_computation():
    # 8/10, z = 1.96: centre (0.8 + 1.96^2/20) / (1 + 1.96^2/10), half-width from the textbook formula.
    low, high = evaluation.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert evaluation.wilson_interval(0, 20) == (0.0, pytest.approx(0.1611, abs=1e-4))
    assert evaluation.wilson_interval(20, 20) == (pytest.approx(0.8389, abs=1e-4), 1.0)
    with pytest.raises(ValueError):
        evaluation.wilson_interval(3, 2)


def test_expert_near_100_and_random_near_0():
    environment = env_lib.HandoverEnv(CFG)
    config = evaluation.EvalConfig(episodes=10, video_episodes=0)
    expert, _ = evaluation.evaluate(policies.Scripted(environment, scripted.Expert(CFG)), environment, config)
    assert expert.successes >= 9
    assert expert.mean_steps < CFG.max_steps / 2
    rand, _ = evaluation.evaluate(policies.Random(seed=0), environment, config)
    assert rand.successes == 0 and rand.mean_steps == CFG.max_steps


def test_chunks_are_executed_with_replanning():
    environment = env_lib.HandoverEnv(CFG)
    seen = []

    def hold_still(obs):  # a 7-step chunk that keeps the robot where it is
        seen.append(obs)
        return {"actions": np.repeat(obs["state"][None], 7, axis=0)}

    config = evaluation.EvalConfig(episodes=1, replan_steps=4, video_episodes=1)
    result, video = evaluation.evaluate(hold_still, environment, config)
    episode = result.episodes[0]
    assert not episode.success and episode.steps == CFG.max_steps
    assert episode.policy_calls == len(seen) == -(-CFG.max_steps // 4)
    assert video.shape == (CFG.max_steps + CFG.fps // 2, 96, 3 * 96, 3)
    assert seen[0]["images"]["cam_high"].shape == (3, 96, 96)
    # Same seed, same start: the first observation is reproducible.
    environment.reset((0, evaluation.EVAL_STREAM, 0))
    np.testing.assert_array_equal(seen[0]["state"], environment.state)


@pytest.mark.parametrize("reply", [{"actions": np.zeros((5, 7))}, {"action": np.zeros((5, 14))},
                                   {"actions": np.full((2, 14), np.nan)}])
def test_bad_replies_are_rejected(reply):
    environment = env_lib.HandoverEnv(CFG)
    with pytest.raises(ValueError, match="episode 0 step 0"):
        evaluation.evaluate(lambda obs: reply, environment, evaluation.EvalConfig(episodes=1))


def test_evaluate_job_writes_summary_and_video(tmp_path):
    config = evaluate_job.Config(policy="expert", episodes=3, video_episodes=2, output=tmp_path / "eval")
    summary = evaluate_job.main(config)
    written = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["episodes"] == 3 and written["successes"] == 3
    assert written["success_rate_ci95"][1] == 1.0
    lengths = [e["steps"] for e in written["per_episode"]]
    assert written["mean_episode_s"] == pytest.approx(np.mean(lengths) / CFG.fps)
    with av.open(str(tmp_path / "eval" / "episodes.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == sum(lengths[:2]) + 2 * (CFG.fps // 2)
    assert frames[0].shape == (96, 288, 3)
    assert np.all(frames[-1][0:2, 10:-10, 1] > 150) and np.all(frames[-1][0:2, 10:-10, 0] < 80)  # green frame: success
