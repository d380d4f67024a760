"""Config checks: a bad field fails at construction, before any writer or connection, naming the field."""

from pathlib import Path

import pytest

from jobs import collect, evaluate, make_dataset
from recap_ray.sim import session, world


@pytest.mark.parametrize("make, field", [
    (lambda: world.TaskConfig(fps=0), "TaskConfig.fps must be >= 1, got 0"),
    (lambda: world.TaskConfig(time_limit_s=-1.0), "TaskConfig.time_limit_s must be > 0"),
    (lambda: world.TaskConfig(time_limit_s=0.001), "TaskConfig.time_limit_s must give at least one step"),
    (lambda: world.TaskConfig(image_width=0), "TaskConfig.image_width must be >= 1"),
    (lambda: world.TaskConfig(goal_x=(0.3, 0.1)), r"TaskConfig.goal_x must be a range \(lo, hi\) with lo <= hi"),
    (lambda: world.TaskConfig(grasp_radius=0.0), "TaskConfig.grasp_radius must be > 0"),
    (lambda: world.TaskConfig(object_radius=float("nan")), "TaskConfig.object_radius must be > 0, got nan"),
    (lambda: session.DaggerConfig(notice_prob=1.2), r"DaggerConfig.notice_prob must be in \[0, 1\], got 1.2"),
    (lambda: session.DaggerConfig(min_correction_s=4.0), "DaggerConfig.max_correction_s must be >= min_correction_s"),
    (lambda: session.DaggerConfig(max_corrections=-1), "DaggerConfig.max_corrections must be >= 0"),
    (lambda: make_dataset.Config(Path("x"), seed=-1), "Config.seed must be >= 0, got -1"),
    (lambda: make_dataset.Config(Path("x"), demos=-2), "Config.demos must be >= 0"),
    (lambda: collect.Config("ws://h:1", Path("x"), rollouts=0), "Config.rollouts must be >= 1, got 0"),
    (lambda: collect.Config("ws://h:1", Path("x"), replan_steps=0), "Config.replan_steps must be >= 1"),
    (lambda: collect.Config("ws://h:1", Path("x"), reply_timeout_s=0), "Config.reply_timeout_s must be > 0"),
    (lambda: evaluate.Config(policy="expert", episodes=-1), "Config.episodes must be >= 1, got -1"),
    (lambda: evaluate.Config(policy="expert", seed=-3), "Config.seed must be >= 0, got -3"),
    (lambda: evaluate.Config(policy="expert", max_retries=-1), "Config.max_retries must be >= 0"),
])  # fmt: skip
def test_bad_fields_are_named(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_defaults_are_valid():
    world.TaskConfig(), session.DaggerConfig(), make_dataset.Config(Path("x"))
    collect.Config("ws://h:1", Path("x")), evaluate.Config(endpoint="ws://h:1")
