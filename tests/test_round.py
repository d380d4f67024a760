"""The round driver's bookkeeping: stages recorded, a crashed round resumes at the failed stage, stages
rerun when their inputs change, each round builds on the last."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from jobs import collect, make_dataset, training
from jobs import round as round_job
from recap_ray import manifest
from recap_ray.data import dataset, features, recap_columns, writer
from recap_ray.sim import policies, world
from recap_ray.train import run_record

TASK = world.TaskConfig(image_height=16, image_width=16, time_limit_s=0.5)


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory):
    """Two small simulated datasets with the RECAP columns: 2 episodes and 1 episode."""
    root = tmp_path_factory.mktemp("round_data")
    a = make_dataset.main(make_dataset.Config(output=root / "a", demos=1, rollouts=1, task=TASK, workers=0))
    b = make_dataset.main(make_dataset.Config(output=root / "b", demos=1, rollouts=0, seed=1, task=TASK, workers=0))
    return a, b


def _episodes(path) -> int:
    with dataset.open(path) as ds:
        return ds.num_episodes


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
    assert not again.done("data", {})


def test_a_rebuilt_input_reruns_every_stage_downstream_of_it(tmp_path, tiny_datasets):
    """Stages are done on the content they ran on: a dataset rebuilt the same keeps them, other content or a
    retrained run reruns them, and a rerun training stage starts a fresh run (its old run directory removed)."""
    a, b = tiny_datasets
    round_dir, calls = tmp_path / "round", []
    data, value, relabeled = round_dir / "data", round_dir / "value", round_dir / "relabeled"

    def data_body(source):
        def body():
            calls.append("data")
            shutil.copytree(source, data)
            return {"outputs": {"dataset": str(data)}}

        return body

    def value_body():
        calls.append("value")
        assert not value.exists(), "a rerun training stage must not resume the run it finished before"
        run_record.start(value, f"session{len(calls)}", kind="value")
        run_record.update(value, step=10)
        return {"outputs": {"run_dir": str(value)}}

    def relabel_body():
        calls.append("relabel")
        relabeled.mkdir(exist_ok=True)
        return {"outputs": {"dataset": str(relabeled)}}

    def run_all(source):
        m = manifest.Manifest(round_dir, {})
        m.run("data", {"sources": [str(source)]}, "prepare", data_body(source))
        m.run("value", {"dataset": str(data)}, "train", value_body)
        m.run("relabel", {"dataset": str(data), "value_ckpt": str(value)}, "relabel", relabel_body)

    run_all(a)
    run_all(a)
    assert calls == ["data", "value", "relabel"]  # all done
    shutil.rmtree(data)
    run_all(a)  # rebuilt with the same content: what was trained on it still holds
    assert calls == ["data", "value", "relabel", "data"]
    shutil.rmtree(data)  # rebuilt with other content (a source replaced under the same name, say)
    shutil.copytree(b, tmp_path / "src")
    run_all(tmp_path / "src")
    assert calls == ["data", "value", "relabel", "data", "data", "value", "relabel"]
    record = json.loads((round_dir / manifest.FILE).read_text())["stages"]
    assert record["relabel"]["inputs_id"]["value_ckpt"] == {"run": str(value), "session": "session6", "step": 10}
    assert (a / "meta" / "info.json").is_file() and (tmp_path / "src" / "meta" / "info.json").is_file()  # sources untouched


class _FakeStages:
    """Stand-ins for run_round's stage bodies: each records its call and creates the directory it reports."""

    def __init__(self, monkeypatch, tmp_path, fail: str | None = None):
        self.calls: list[tuple] = []
        self.fail = fail
        self.tmp = tmp_path
        monkeypatch.setattr(round_job.round_checks, "check", lambda rc, sft_stage=False: None)  # nothing real to check
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
                               sft_steps=30, collect_rollouts=4, value_scale="task", eval_episodes=2, value_init="/vlm")  # fmt: skip
    record = round_job.run_round(rc, tmp_path / "round", sft_stage=True)
    assert fake.calls == [
        ("data",),
        ("sft", out("data"), None, 30, "scratch"),  # the SFT baseline: its own config and steps
        ("collect", out("data"), out("sft"), 0),  # rollouts of the SFT policy, seed 0 in a first round
        ("targets", out("collected")),
        ("value", out("targets"), "/vlm", None, "v"),  # from the bundle given
        ("relabel", out("targets"), out("value")),
        ("policy", out("relabeled"), out("sft"), None, "ft"),  # RECAP: fine-tuned from SFT on the relabelled data
        ("evaluate", {"baseline": out("sft"), "recap": out("policy")}),
    ]
    assert [s["status"] for s in record["stages"].values()] == ["done"] * 8
    assert record["stages"]["sft"]["command"] == "jobs.train_policy --config scratch (data labels)"
    lines = round_job.summary(record).splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [[name, "done"] for name in record["stages"]]
    assert f"run_dir: {out('policy')}" in lines[6] and lines[-1] == f"round manifest: {tmp_path / 'round' / manifest.FILE}"


def test_each_round_of_a_chain_collects_from_new_start_states(tmp_path, monkeypatch):
    """The default collect seed is the round's place in its chain; an explicit one is kept."""
    for name, previous in (("r1", None), ("r2", "r1"), ("r3", "r2")):
        manifest.Manifest(tmp_path / name, {"previous_round": previous and str(tmp_path / previous)})
    rc = round_job.RoundConfig(previous_round=str(tmp_path / "r3"))
    assert [round_job.chain_position(dataclasses.replace(rc, previous_round=p)) for p in (None, str(tmp_path / "r1"), str(tmp_path / "r3"))] == [0, 1, 3]
    fake = _FakeStages(monkeypatch, tmp_path)
    monkeypatch.setattr(round_job, "previous_output", lambda *args: str(tmp_path / "outputs" / "prev"))
    round_job.run_round(dataclasses.replace(rc, collect_rollouts=2, skip_value=True), tmp_path / "r4")
    assert fake.calls[1][0] == "collect" and fake.calls[1][-1] == 3
    round_job.run_round(dataclasses.replace(rc, collect_rollouts=2, skip_value=True, collect_seed=7), tmp_path / "r5")
    assert fake.calls[4][0] == "collect" and fake.calls[4][-1] == 7
    record = json.loads((tmp_path / "r1" / manifest.FILE).read_text())
    record["config"]["previous_round"] = str(tmp_path / "r3")
    (tmp_path / "r1" / manifest.FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="previous_round links loop"):
        round_job.chain_position(rc)


def test_round_on_the_datas_labels_skips_the_value_stages_and_resumes_after_a_crash(tmp_path, monkeypatch):
    rc = round_job.RoundConfig(sources=("/data/a",), policy_config="p", sft_checkpoint="/ckpt/sft", skip_value=True)
    fake = _FakeStages(monkeypatch, tmp_path, fail="policy")
    with pytest.raises(RuntimeError, match="policy crashed"):
        round_job.run_round(rc, tmp_path / "round")
    fake = _FakeStages(monkeypatch, tmp_path)
    round_job.run_round(rc, tmp_path / "round")
    assert fake.calls == [("policy", str(tmp_path / "outputs" / "data"), "/ckpt/sft", None, "p")]  # data not redone


def test_a_resumed_round_may_change_how_it_weathers_lost_nodes_but_not_what_it_computes(tmp_path, monkeypatch):
    """After a stage failed on spot nodes, the round reruns with more restarts or fewer workers allowed; round.json
    refuses other changes."""
    rc = round_job.RoundConfig(sources=("/data/a",), policy_config="p", sft_checkpoint="/ckpt/sft", skip_value=True,
                               num_workers=4)  # fmt: skip
    _FakeStages(monkeypatch, tmp_path, fail="policy")
    with pytest.raises(RuntimeError, match="policy crashed"):
        round_job.run_round(rc, tmp_path / "round")
    with pytest.raises(ValueError, match=r"another config \(fields \['lookahead'\] differ\)"):
        round_job.run_round(dataclasses.replace(rc, lookahead=10), tmp_path / "round")
    fake = _FakeStages(monkeypatch, tmp_path)
    record = round_job.run_round(dataclasses.replace(rc, min_workers=2, max_failures=-1, serve_port=8123), tmp_path / "round")
    assert [c[0] for c in fake.calls] == ["policy"] and record["stages"]["policy"]["status"] == "done"


def test_a_crashed_training_stage_resumes_its_run(tmp_path, monkeypatch):
    """A rerun stage continues the run its crashed attempt left (same kind, config, dataset) instead of refusing it."""

    class Training(Exception):
        pass

    def connect_ray():  # the run directory was accepted: training would start here
        raise Training(current)

    monkeypatch.setattr(training, "check_inputs", lambda config, kind: None)  # no dataset, tokenizer or weights here
    monkeypatch.setattr(training.versions, "fingerprint", lambda path: "fp")
    jobs: list = []
    monkeypatch.setattr(training, "make_job", lambda config, kind, fingerprint, **extra: jobs.append(config))
    monkeypatch.setattr(training.loop, "make_task", lambda job: types.SimpleNamespace(run_cameras=dict))
    monkeypatch.setattr(training.loop, "check_dataset", lambda job, task: None)
    monkeypatch.setattr(training.cli, "connect_ray", connect_ray)
    rc = round_job.RoundConfig(value_config="value_tiny", policy_config="pi06_tiny", num_workers=4, min_workers=2, max_failures=-1)
    for kind, config in (("value", "value_tiny"), ("policy", "pi06_tiny")):
        current = kind
        run_record.start(tmp_path / kind, "crashed", kind=kind, config=config, dataset="/d", dataset_fingerprint="fp")
        with pytest.raises(Training, match=kind):  # past the run-directory check, into training
            round_job.train_stage(kind, rc, "/d", tmp_path / kind, None)
        # elastic on spot nodes as the round says: 2 to 4 workers, restarts unlimited
        assert (jobs[-1].num_workers, jobs[-1].min_workers, jobs[-1].max_failures) == (4, 2, -1)
    other = dataclasses.replace(rc, value_config="value")
    with pytest.raises(ValueError, match="cannot resume, the run differs: config was 'value_tiny', now 'value'"):
        round_job.train_stage("value", other, "/d", tmp_path / "value", None)


def test_an_evaluation_crashed_before_its_policy_was_retrained_starts_afresh(tmp_path, monkeypatch):
    """evaluate resumes the episodes a crashed attempt left and refuses another checkpoint's: when the policy was
    retrained since that attempt, its episodes are removed instead of stopping every rerun."""
    rc = round_job.RoundConfig(sources=("/data/a",), sft_checkpoint="/ckpt/sft", skip_value=True, eval_episodes=2)
    partial = tmp_path / "round" / "evaluation" / "recap" / "episodes.jsonl"  # what a crashed attempt evaluated
    for attempt in range(2):  # a second crash on the same policy keeps them: a rerun resumes them
        _FakeStages(monkeypatch, tmp_path, fail="evaluation")
        with pytest.raises(RuntimeError, match="evaluation crashed"):
            round_job.run_round(rc, tmp_path / "round")
        assert attempt == 0 or partial.is_file()
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.touch()
    run_record.start(tmp_path / "outputs" / "policy", "retrained", kind="policy")  # the policy trained again since
    fake = _FakeStages(monkeypatch, tmp_path)
    round_job.run_round(rc, tmp_path / "round")
    assert [c[0] for c in fake.calls] == ["evaluate"] and not partial.exists()


def test_rerun_data_and_collect_stages_start_from_their_inputs(tmp_path, monkeypatch, tiny_datasets):
    """Outputs an unfinished attempt published are replaced, not refused and not reused."""
    a, b = tiny_datasets
    out = tmp_path / "round"
    out.mkdir()
    shutil.copytree(b, out / "data_merged")  # left by an attempt that crashed after its merge (here: other data)
    rc = round_job.RoundConfig(sources=(str(a), str(b)), collect_rollouts=1, task=TASK)
    merged = round_job.data_stage(rc, out)["outputs"]["dataset"]
    assert merged == str(out / "data_merged") and _episodes(merged) == 3

    @contextlib.contextmanager
    def served(rc, checkpoint, name):
        yield "ws://unused"

    monkeypatch.setattr(round_job, "served", served)
    monkeypatch.setattr(collect, "main", lambda config: collect.record(policies.Random(seed=1), config, config.output))
    shutil.copytree(b, out / "rollouts")  # collected, then the merge crashed
    shutil.copytree(b, out / "data_collected")
    outputs = round_job.collect_stage(rc, str(a), "/ckpt/sft", 0, out)["outputs"]
    assert _episodes(outputs["rollouts"]) == 1 and _episodes(outputs["dataset"]) == 3
    with dataset.open(outputs["rollouts"]) as ds:
        assert ds.meta.episodes[0].extra["kind"] == "policy_rollout"


def test_next_round_builds_on_the_previous_rounds_collected_data_and_policy(tmp_path, monkeypatch, tiny_datasets):
    a, b = tiny_datasets
    prev = manifest.Manifest(tmp_path / "r1", {})
    prev.run("data", {}, "merge + prepare", lambda: {"outputs": {"dataset": str(b)}})
    prev.run("collect", {}, "collect", lambda: {"outputs": {"dataset": str(a)}})  # b plus the collected rollouts

    def crash():
        raise RuntimeError("policy crashed")

    with pytest.raises(RuntimeError):
        prev.run("policy", {}, "train", crash)
    rc = round_job.RoundConfig(previous_round=str(tmp_path / "r1"), skip_value=True)
    assert round_job.data_stage(rc, tmp_path / "r2")["outputs"]["dataset"] == str(a)
    fake = _FakeStages(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match=r"r1: its 'policy' stage is failed, not done; finish that round first"):
        round_job.run_round(rc, tmp_path / "r2")
    assert fake.calls == []  # refused before any stage ran
    with pytest.raises(FileNotFoundError, match=r"nowhere: no round.json, not a round directory"):
        round_job.run_round(dataclasses.replace(rc, previous_round=str(tmp_path / "nowhere")), tmp_path / "r3")


def _raw_copy(src, root):
    """`src` without the RECAP columns and success flags: new rollouts as a recorder writes them."""
    with dataset.open(src) as ds:
        kept = {k: v for k, v in ds.features.items() if k not in features.DEFAULT_FEATURES and k not in recap_columns.COLUMNS}
        w = writer.DatasetWriter(root, fps=ds.meta.fps, features=kept, version=ds.version)
        for ep in range(ds.num_episodes):
            w.add_episode_from(ds, ep)
            w.episodes[-1].extra.pop("success", None)
        return w.finalize()


def test_a_next_round_prepares_its_raw_sources_before_merging_the_previous_rounds_data(tmp_path, tiny_datasets):
    """Round 2: the previous round's prepared data plus new raw rollouts (merge refused a raw source beside prepared data)."""
    a, b = tiny_datasets
    raw = _raw_copy(b, tmp_path / "new_rollouts")
    prev = manifest.Manifest(tmp_path / "r1", {})
    prev.run("data", {}, "merge + prepare", lambda: {"outputs": {"dataset": str(a)}})
    rc = round_job.RoundConfig(previous_round=str(tmp_path / "r1"), sources=(str(raw),), skip_value=True, success_file=None)
    out = round_job.data_stage(rc, tmp_path / "r2")["outputs"]["dataset"]
    with dataset.open(out) as merged, dataset.open(a) as old:
        assert merged.num_episodes == old.num_episodes + 1 and all(c in merged.features for c in recap_columns.COLUMNS)
        assert merged.meta.episodes[-1].extra["success"] is False  # no flag: a failure (spec recap.md §1)
        np.testing.assert_array_equal(merged.column(old.num_episodes, "reward"), recap_columns.compute(False, np.zeros(merged.meta.episodes[-1].length, np.int64), None)["reward"])  # fmt: skip


def test_a_next_round_without_cameras_takes_the_previous_rounds(tmp_path, monkeypatch):
    prev = manifest.Manifest(tmp_path / "r1", {"cameras": ["base=observation.images.cam_high"], "previous_round": None})
    prev.run("data", {}, "prepare", lambda: {"outputs": {"dataset": str(tmp_path)}})
    prev.run("policy", {}, "train", lambda: {"outputs": {"run_dir": str(tmp_path)}})
    _FakeStages(monkeypatch, tmp_path)
    record = round_job.run_round(round_job.RoundConfig(previous_round=str(tmp_path / "r1"), skip_value=True), tmp_path / "r2")
    assert record["config"]["cameras"] == ["base=observation.images.cam_high"]
    own = round_job.RoundConfig(previous_round=str(tmp_path / "r1"), skip_value=True, cameras=("base=observation.images.top",))
    assert round_job.run_round(own, tmp_path / "r3")["config"]["cameras"] == ["base=observation.images.top"]


def test_round_paths_are_absolute_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "round.yaml"
    path.write_text("sources: [raw, /data/b]\nprevious_round: ../r1\nsft_checkpoint: gs://bucket/sft\nsuccess_file: s.json\n")
    rc = round_job.RoundConfig.from_yaml(path)
    assert rc.sources == (str(tmp_path / "raw"), "/data/b") and rc.previous_round == str(tmp_path.parent / "r1")
    assert rc.sft_checkpoint == "gs://bucket/sft" and rc.success_file == str(tmp_path / "s.json")
    path.write_text("default_success: maybe\n")
    with pytest.raises(ValueError, match=r"round.yaml: default_success 'maybe' is not one of"):
        round_job.RoundConfig.from_yaml(path)


def test_data_stage_labels_success_and_interventions_and_records_absolute_outputs(tmp_path, monkeypatch):
    from tests.data.conftest import make_flagged_dataset

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    make_flagged_dataset(tmp_path / "a" / "raw", [True, False, True], [[0, 1, 0], [0, 0, 0, 0], [1, 1, 0]])
    (tmp_path / "a" / "s.json").write_text('{"2": false}')
    rc = round_job.RoundConfig(sources=("raw",), success_file="s.json", success_column="next.success",
                               intervention_column="operator", default_success="error")  # fmt: skip
    prev = manifest.Manifest("r1", {})
    data = prev.run("data", {}, "merge + prepare", lambda: round_job.data_stage(rc, Path("r1")))["outputs"]["dataset"]
    assert data == str(tmp_path / "a" / "r1" / "data")
    with dataset.open(data) as ds:
        assert [ep.extra["success"] for ep in ds.meta.episodes] == [True, False, False]  # episode 2: the file wins
        assert ds.column(2, "intervention").tolist() == [1, 1, 0]
    monkeypatch.chdir(tmp_path / "b")  # the next round, from another directory
    rc2 = round_job.RoundConfig(previous_round=str(tmp_path / "a" / "r1"), skip_value=True)
    assert round_job.data_stage(rc2, Path("r2"))["outputs"]["dataset"] == data
