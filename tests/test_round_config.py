"""A round's configuration: round.yaml checked field by field, the manifest refusing a changed config."""

from __future__ import annotations

import pytest

from jobs import round as round_job
from recap_ray import manifest


def test_round_refuses_a_changed_config(tmp_path):
    manifest.Manifest(tmp_path, {"lookahead": 50})
    with pytest.raises(ValueError, match=r"\['lookahead'\]"):
        manifest.Manifest(tmp_path, {"lookahead": 10})


def test_round_yaml_fields_are_checked(tmp_path):
    good = tmp_path / "round.yaml"
    good.write_text("sources: [/data/a, /data/b]\nskip_value: true\npolicy_steps: 100\n")
    rc = round_job.RoundConfig.from_yaml(good)
    assert rc.sources == ("/data/a", "/data/b") and rc.skip_value and rc.policy_steps == 100
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [/data/a]\nlookahed: 10\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown RoundConfig fields \['lookahed'\]"):
        round_job.RoundConfig.from_yaml(bad)
    bad.write_text("sources: /data/a\n")  # one path, not a list: not split into characters
    with pytest.raises(ValueError, match=r"bad.yaml: sources must be a list of dataset paths, got '/data/a'"):
        round_job.RoundConfig.from_yaml(bad)
    bad.write_text("value_scale: steps\n")
    with pytest.raises(ValueError, match=r"bad.yaml: value_scale 'steps' is not one of \('episode', 'task'\)"):
        round_job.RoundConfig.from_yaml(bad)


def test_round_yaml_sets_the_simulated_task_and_operator(tmp_path):
    path = tmp_path / "round.yaml"
    path.write_text("task: {grasp_radius: 0.05, object_x: [-0.3, -0.2]}\ndagger: {max_corrections: 3}\n")
    rc = round_job.RoundConfig.from_yaml(path)
    assert rc.task.grasp_radius == 0.05 and rc.task.object_x == (-0.3, -0.2) and rc.task.goal_radius == 0.04
    assert rc.dagger.max_corrections == 3 and rc.dagger.drift_m == 0.03
    path.write_text("task: {grasp_radus: 0.05}\n")
    with pytest.raises(ValueError, match=r"round.yaml: task: unknown TaskConfig fields \['grasp_radus'\]"):
        round_job.RoundConfig.from_yaml(path)
    path.write_text("dagger: 3\n")
    with pytest.raises(ValueError, match=r"round.yaml: dagger: expected a mapping of DaggerConfig fields, got int"):
        round_job.RoundConfig.from_yaml(path)


def test_round_reopens_with_the_same_config(tmp_path):
    config = {"sources": ("/data/a",), "lookahead": 50}
    manifest.Manifest(tmp_path, config)
    assert manifest.Manifest(tmp_path, config).data["config"]["sources"] == ["/data/a"]
