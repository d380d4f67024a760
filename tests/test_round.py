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


class _FakeStages:
    """Stand-ins for run_round's stage bodies: each records its call and creates the directory it reports."""

    def __init__(self, monkeypatch, tmp_path, fail: str | None = None):
        self.calls: list[tuple] = []
        self.fail = fail
        self.tmp = tmp_path
        monkeypatch.setattr(round_job, "train_stage", self.train_stage)
        for stage, name, key, output in (("data_stage", "data", "dataset", "data"), ("collect_stage", "collect", "dataset", "collected"),
                                         ("targets_stage", "targets", "dataset", "targets"),
                                         ("relabel_stage", "relabel", "dataset", "relabeled"),
                                         ("evaluate_stage", "evaluate", "evaluation", "evaluation")):  # fmt: skip
            monkeypatch.setattr(round_job, stage, self._stage(name, key, output))

    def _stage(self, name: str, key: str, output: str):
        """A stage body `(rc, *inputs, out)` that records (name, *inputs) and reports `output` under `key`."""

        def body(rc, *args):
            self.calls.append((name, *args[:-1]))
            return {"outputs": {key: self._dir(output)}}

        return body

    def _dir(self, name: str) -> str:
        if name == self.fail:
            raise RuntimeError(f"{name} crashed")
        path = self.tmp / "outputs" / name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def train_stage(self, kind, rc, dataset, run_dir, init, steps=None, config_name=None):
        name = run_dir.name
        self.calls.append((name, dataset, init, steps, config_name or (rc.value_config if kind == "value" else rc.policy_config)))
        return {"outputs": {"run_dir": self._dir(name)}, "checkpoints": [1]}


def test_simulated_round_wires_each_stage_to_the_last_ones_outputs(tmp_path, monkeypatch):
    fake = _FakeStages(monkeypatch, tmp_path)
    out = lambda name: str(tmp_path / "outputs" / name)  # noqa: E731
    rc = round_job.RoundConfig(sources=("/data/a",), policy_config="ft", sft_config="scratch", value_config="v",
                               sft_steps=30, collect_rollouts=4, value_scale="task", eval_episodes=2)  # fmt: skip
    record = round_job.run_round(rc, tmp_path / "round", sft_stage=True)
    assert fake.calls == [
        ("data",),
        ("sft", out("data"), None, 30, "scratch"),  # the SFT baseline: its own config and steps
        ("collect", out("data"), out("sft")),  # rollouts of the SFT policy
        ("targets", out("collected")),
        ("value", out("targets"), None, None, "v"),
        ("relabel", out("targets"), out("value")),
        ("policy", out("relabeled"), out("sft"), None, "ft"),  # RECAP: fine-tuned from SFT on the relabelled data
        ("evaluate", {"baseline": out("sft"), "recap": out("policy")}),
    ]
    assert [s["status"] for s in record["stages"].values()] == ["done"] * 8
    assert record["stages"]["sft"]["command"] == "jobs.train_policy --config scratch (data labels)"


def test_round_on_the_datas_labels_skips_the_value_stages_and_resumes_after_a_crash(tmp_path, monkeypatch):
    rc = round_job.RoundConfig(sources=("/data/a",), policy_config="p", sft_checkpoint="/ckpt/sft", skip_value=True)
    fake = _FakeStages(monkeypatch, tmp_path, fail="policy")
    with pytest.raises(RuntimeError, match="policy crashed"):
        round_job.run_round(rc, tmp_path / "round")
    fake = _FakeStages(monkeypatch, tmp_path)
    round_job.run_round(rc, tmp_path / "round")
    assert fake.calls == [("policy", str(tmp_path / "outputs" / "data"), "/ckpt/sft", None, "p")]  # data not redone
