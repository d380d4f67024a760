"""Closed-loop evaluation: baselines, chunk execution, interval, video and the job."""

import dataclasses
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


SMALL = world.TaskConfig(image_height=48, image_width=64, time_limit_s=4.0)


def _frames(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _same_outcome(summary):
    return {k: v for k, v in summary.items() if k not in ("wall_s", "video")}


def test_an_interrupted_evaluation_resumes_where_it_stopped(tmp_path, monkeypatch):
    config = evaluate_job.Config(policy="degraded", episodes=4, video_episodes=3, output=tmp_path / "whole", task=SMALL,
                                 max_retries=1)  # fmt: skip
    whole = evaluate_job.main(config)
    real, asked = evaluate_job.local_policy, []

    def dies_from_episode_2(config, environment, episode):
        asked.append(episode)
        if episode < 2:
            return real(config, environment, episode)

        def dead(observation):
            raise ConnectionError("connection closed: 1006")

        return dead

    monkeypatch.setattr(evaluate_job, "local_policy", dies_from_episode_2)
    config = dataclasses.replace(config, output=tmp_path / "resumed")
    with pytest.raises(evaluation.EpisodeFailed, match=r"episode 2 failed: gave up after 2 attempt.*2 of 4 episodes"):
        evaluate_job.main(config)
    assert asked == [0, 1, 2, 2]
    lines = [json.loads(line) for line in (config.output / "episodes.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines[1:]] == [0, 1] and not (config.output / "summary.json").exists()

    asked.clear()
    monkeypatch.setattr(evaluate_job, "local_policy", lambda c, e, i: asked.append(i) or real(c, e, i))
    resumed = evaluate_job.main(config)
    assert asked == [2, 3]  # the first two were not run again
    assert _same_outcome(resumed) == _same_outcome(whole) and resumed["episodes"] == 4
    assert json.loads((config.output / "summary.json").read_text()) == json.loads(json.dumps(resumed))
    a, b = _frames(tmp_path / "whole" / "episodes.mp4"), _frames(config.output / "episodes.mp4")
    assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() < 1.0


def test_a_rerun_with_other_settings_is_refused_and_more_episodes_extend(tmp_path):
    config = evaluate_job.Config(policy="expert", episodes=1, video_episodes=0, output=tmp_path, task=SMALL)
    evaluate_job.main(config)
    with pytest.raises(ValueError, match=r"differing fields: seed: recorded 0, now 1; task.fps: recorded 30, now 15"):
        evaluate_job.main(dataclasses.replace(config, seed=1, task=dataclasses.replace(SMALL, fps=15)))
    assert evaluate_job.main(dataclasses.replace(config, episodes=2))["episodes"] == 2


def test_served_evaluation_records_the_server_and_not_the_api_key(tmp_path, policy_server):
    server = policy_server()
    summary = evaluate_job.main(evaluate_job.Config(endpoint=server.uri, api_key="SECRET-KEY-4711", episodes=1,
                                                    video_episodes=1, output=tmp_path, task=SMALL))  # fmt: skip
    assert summary["server"] == {"checkpoint": "/runs/a/checkpoints/7"} and summary["policy"] == server.uri
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"episodes.jsonl", "summary.json", "episodes.mp4"}
    assert not [p for p in files if b"SECRET-KEY-4711" in p.read_bytes()]


@pytest.mark.parametrize("choice", [{}, {"endpoint": "ws://127.0.0.1:1", "policy": "expert"}])
def test_evaluate_needs_exactly_one_of_endpoint_and_policy(choice):
    with pytest.raises(ValueError, match=r"exactly one of endpoint \(--endpoint.*and policy \(--policy"):
        evaluate_job.Config(**choice)
