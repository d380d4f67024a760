"""The round driver's bookkeeping: stages recorded, a crashed round resumes at the failed stage,
a config change is refused, the YAML is checked field by field."""

from __future__ import annotations

import json

import pytest

from jobs import round as round_job
from recap_ray import manifest


def test_crashed_round_resumes_from_the_failed_stage(tmp_path):
    calls: list[str] = []

    def stage(name, fail=False):
        def body():
            calls.append(name)
            if fail:
                raise RuntimeError(f"{name} crashed")
            out = tmp_path / name
            out.mkdir()
            return {"outputs": {"dir": str(out)}, "metrics": {"n": len(calls)}}

        return body

    m = manifest.Manifest(tmp_path / "round", {"a": 1})
    m.run("data", {}, "cmd data", stage("data"))
    with pytest.raises(RuntimeError, match="value crashed"):
        m.run("value", {}, "cmd value", stage("value", fail=True))
    record = json.loads((tmp_path / "round" / manifest.FILE).read_text())
    assert record["stages"]["data"]["status"] == "done"
    assert record["stages"]["value"]["status"] == "failed" and "value crashed" in record["stages"]["value"]["error"]

    again = manifest.Manifest(tmp_path / "round", {"a": 1})  # a new driver process
    again.run("data", {}, "cmd data", stage("data"))  # done: skipped
    again.run("value", {}, "cmd value", stage("value"))
    assert calls == ["data", "value", "value"]
    assert again.stage("value")["status"] == "done" and again.stage("value")["command"] == "cmd value"

    (tmp_path / "data").rmdir()  # a done stage whose output vanished runs again
    assert not again.done("data")


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
