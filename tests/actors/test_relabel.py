"""The relabel stage end to end on an embedded Ray: values from GPU-style actors (here on CPU)
equal the model called in-process, labels equal the pure computation, a crash and rerun reuses
finished shards and gives the same dataset, relabelling twice changes nothing, the output
validates and opens in lerobot, and the source is never touched."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pyarrow as pa
import pytest
from flax import nnx

from actors import relabel as relabel_actors
from actors import relabel_store
from jobs import relabel as relabel_job
from jobs import rethreshold
from recap_ray.configs import registry
from recap_ray.data import dataset, meta, recap_columns, validate, versions, writer
from recap_ray.models import checkpoints, value_infer, value_preprocess
from recap_ray.train import run_record
from recap_ray.recap import labels, relabel
from tests.data.conftest import episode_columns, features, make_dataset, tree_digest
from tests.interop import peers

LENGTHS = (12, 15, 9, 10)  # episode 3 is all intervention (a demonstration)
SUCCESS = (True, False, True, True)
BATCH = 8


def _make_dataset(root: Path) -> Path:
    feats = features()
    w = writer.DatasetWriter(root, fps=30, features=feats, version="v3.0", robot_type="yam")
    for ep, n in enumerate(LENGTHS):
        cols = episode_columns(n, ep, feats, SUCCESS[ep])
        if ep == 3:
            cols.update(recap_columns.compute(True, np.ones(n, np.int64)))
        w.add_episode(cols, task=f"hand over the block {ep % 2}", meta={"success": SUCCESS[ep]})
    return w.finalize()


def _make_run(root: Path, tokenizer: Path) -> Path:
    """A value training run laid out as recap_ray.models.checkpoints says, tiny random weights."""
    step = checkpoints.checkpoints_dir(root) / "3"
    params = nnx.to_pure_dict(nnx.state(registry.get("value_tiny").create(0), nnx.Param))
    ocp.PyTreeCheckpointer().save(checkpoints.params_dir(step).resolve(), {"params": params, "ema_params": params, "step": 0})
    checkpoints.tokenizer_file(step).parent.mkdir(parents=True)
    shutil.copy(tokenizer, checkpoints.tokenizer_file(step))
    (root / checkpoints.RUN_FILE).write_text(json.dumps({"kind": "value", "config": "value_tiny"}))
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sentencepiece_model) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("relabel")
    return _make_dataset(root / "src"), _make_run(root / "run", sentencepiece_model)


def _config(src: Path, run: Path, out: Path, **kw) -> relabel_job.Config:
    return relabel_job.Config(dataset=src, value_ckpt=run, output=out, lookahead=4, gpus_per_actor=0.0, batch_size=BATCH, **kw)


@pytest.fixture(scope="module")
def relabelled(inputs, ray_local) -> Path:
    src, run = inputs
    before = tree_digest(src)
    out = relabel_job.main(_config(src, run, src.parent / "out", num_actors=2))
    assert tree_digest(src) == before, "the source dataset was modified"
    return out


def _in_process_values(src: Path, run: Path) -> dict[int, np.ndarray]:
    """The same model called directly, frame chunks decoded and resized here."""
    step = checkpoints.resolve(run)
    config = registry.get("value_tiny")
    est = value_infer.ValueEstimator.from_checkpoint(
        config, checkpoints.params_dir(step), tokenizer_path=checkpoints.tokenizer_file(step), dtype="bfloat16", batch_size=BATCH
    )
    out = {}
    with dataset.open(src) as ds:
        for ep in ds.meta.episodes:
            prompts = [ds.meta.tasks[int(k)] for k in ds.column(ep.index, "task_index")]
            vals = []
            for s in range(0, ep.length, BATCH):
                idx = np.arange(s, min(s + BATCH, ep.length))
                frames = {
                    cam: value_preprocess.resize_with_pad(ds.frames(ep.index, key, idx), config.image_size, config.image_size)
                    for cam, key in (("base_0_rgb", "observation.images.head_camera"), ("wrist_0_rgb", "observation.images.left_wrist_camera"))
                }
                vals.append(est(frames, [prompts[i] for i in idx]))
            out[ep.index] = np.concatenate(vals)
    return out


def _columns(root: Path, key: str) -> dict[int, np.ndarray]:
    with dataset.open(root) as ds:
        return {ep.index: ds.column(ep.index, key) for ep in ds.meta.episodes}


def _digest_without_lineage(root: Path) -> dict[str, object]:
    """Every file's sha256 (JSON files parsed: key order is not content), lineage left out."""
    out: dict[str, object] = {k: v for k, v in tree_digest(root).items() if k != writer.LINEAGE_FILE}
    for path in root.glob("meta/*.json"):
        if path.relative_to(root).as_posix() != writer.LINEAGE_FILE:
            out[path.relative_to(root).as_posix()] = json.loads(path.read_text())
    return out


def test_relabel_values_labels_lineage_and_plots(inputs, relabelled):
    src, run = inputs
    assert validate.validate(relabelled) == []
    values = _columns(relabelled, "value")
    want = _in_process_values(src, run)
    for e in want:
        np.testing.assert_allclose(values[e], want[e], atol=1e-6, err_msg=f"episode {e}")
    with dataset.open(src) as ds:
        episodes = {
            ep.index: relabel.Episode(values[ep.index], ds.column(ep.index, "reward_label"), ds.column(ep.index, "intervention"),
                                      ds.column(ep.index, "task_index"), SUCCESS[ep.index])
            for ep in ds.meta.episodes
        }  # fmt: skip
    expected = relabel.label(episodes, relabel.Settings(lookahead=4, positive_ratio=0.3, rule="recap", scope="task"))
    adv, ind = _columns(relabelled, "advantage"), _columns(relabelled, "adv_ind")
    for e in episodes:
        np.testing.assert_array_equal(adv[e], expected.advantages[e])
        assert ind[e].tolist() == expected.adv_ind[e].tolist()
        assert (ind[e][episodes[e].intervention == 1] == labels.POSITIVE).all()
    assert (ind[3] == labels.POSITIVE).all()
    params = versions.read_lineage(relabelled)["params"]
    assert params["value_checkpoint"] == str(checkpoints.checkpoints_dir(run).resolve() / "3")
    assert (params["lookahead"], params["positive_ratio"], params["rule"], params["threshold_scope"]) == (4, 0.3, "recap", "task")
    assert {t["task"]: t["threshold"] for t in params["thresholds"]} == {
        "hand over the block 0": expected.thresholds[0], "hand over the block 1": expected.thresholds[1]}
    assert params["summary"]["skipped_episodes"] == [3]
    side = relabel_store.side_dir(relabelled)
    assert sorted(p.name for p in (side / "plots").iterdir()) == ["advantage_histogram.png", "positive_fraction.png", "value_curves.png"]
    assert len(list((side / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert not (side / "work").exists()


def test_crash_and_rerun_reuses_shards_and_matches(inputs, relabelled, monkeypatch, tmp_path):
    src, run = inputs
    out = tmp_path / "resumed"
    saved: list[int] = []
    original = relabel_store.ValueStore.save

    def crash_after_two(self, episode, values):
        if len(saved) == 2:
            raise KeyboardInterrupt("simulated kill")
        saved.append(episode)
        return original(self, episode, values)

    monkeypatch.setattr(relabel_store.ValueStore, "save", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        relabel_job.main(_config(src, run, out))
    monkeypatch.setattr(relabel_store.ValueStore, "save", original)
    assert not out.exists()
    shards = sorted((relabel_store.side_dir(out) / "work").glob("*/episode_*.npy"))
    assert len(shards) == 2

    asked: list[list[int]] = []
    real_infer = relabel_actors.infer

    def spy(spec, episodes, resources, **kwargs):
        asked.append([e for e, _ in episodes])
        return real_infer(spec, episodes, resources, **kwargs)

    monkeypatch.setattr(relabel_actors, "infer", spy)
    relabel_job.main(_config(src, run, out))
    assert asked == [sorted(set(range(len(LENGTHS))) - set(saved))]
    assert _digest_without_lineage(out) == _digest_without_lineage(relabelled)


def test_work_left_by_a_kill_after_publishing_is_removed_on_rerun(inputs, relabelled, monkeypatch, tmp_path):
    src, run = inputs
    out = tmp_path / "published"

    def killed(self):
        raise KeyboardInterrupt("simulated kill after the rename")

    monkeypatch.setattr(relabel_store.ValueStore, "remove", killed)
    with pytest.raises(KeyboardInterrupt):
        relabel_job.main(_config(src, run, out))
    monkeypatch.undo()
    work = relabel_store.side_dir(out) / "work"
    assert out.is_dir() and work.is_dir()
    before = tree_digest(out)
    other = tmp_path / "other"  # a version the relabel did not publish keeps a work directory bound for it
    shutil.copytree(out, other)
    shutil.copytree(work, relabel_store.side_dir(other) / "work")
    (other / writer.LINEAGE_FILE).write_text(json.dumps({**json.loads((out / writer.LINEAGE_FILE).read_text()), "parents": []}))
    with pytest.raises(FileExistsError, match="already exists; versions are never overwritten$"):
        relabel_job.main(_config(src, run, other))
    assert (relabel_store.side_dir(other) / "work").is_dir()
    with pytest.raises(FileExistsError, match="removed .*work, which the relabel that published it left behind"):
        relabel_job.main(_config(src, run, out))
    assert not work.exists() and tree_digest(out) == before


def test_relabelling_twice_gives_identical_output(inputs, relabelled, tmp_path):
    _, run = inputs
    again = relabel_job.main(_config(relabelled, run, tmp_path / "again"))
    assert _digest_without_lineage(again) == _digest_without_lineage(relabelled)


def test_rethreshold_from_stored_values(relabelled, tmp_path):
    out = rethreshold.main(rethreshold.Config(dataset=relabelled, output=tmp_path / "rt", positive_ratio=0.5, threshold_scope="global"))
    assert validate.validate(out) == []
    values = _columns(relabelled, "value")
    np.testing.assert_array_equal(np.concatenate(list(_columns(out, "value").values())), np.concatenate(list(values.values())))
    with dataset.open(out) as ds:
        episodes = {
            ep.index: relabel.Episode(values[ep.index], ds.column(ep.index, "reward_label"), ds.column(ep.index, "intervention"),
                                      ds.column(ep.index, "task_index"), SUCCESS[ep.index])
            for ep in ds.meta.episodes
        }  # fmt: skip
    expected = relabel.label(episodes, relabel.Settings(lookahead=4, positive_ratio=0.5, scope="global"))
    ind = _columns(out, "adv_ind")
    assert all(ind[e].tolist() == expected.adv_ind[e].tolist() for e in episodes)
    params = versions.read_lineage(out)["params"]
    assert params["lookahead"] == 4 and params["threshold_scope"] == "global" and params["value_config"] == "value_tiny"
    assert params["stop_at_intervention"] is False
    stop = rethreshold.main(rethreshold.Config(dataset=out, output=tmp_path / "stop", stop_at_intervention=True))
    expected = relabel.label(episodes, relabel.Settings(lookahead=4, positive_ratio=0.5, scope="global", stop_at_intervention=True))
    default = relabel.label(episodes, relabel.Settings(lookahead=4, stop_at_intervention=True))
    assert any(expected.adv_ind[e].tolist() != default.adv_ind[e].tolist() for e in episodes)  # the inherited settings matter
    assert all(_columns(stop, "adv_ind")[e].tolist() == expected.adv_ind[e].tolist() for e in episodes)
    again = rethreshold.main(rethreshold.Config(dataset=stop, output=tmp_path / "again"))  # inherits every setting
    params = versions.read_lineage(again)["params"]
    assert (params["stop_at_intervention"], params["positive_ratio"], params["threshold_scope"]) == (True, 0.5, "global")
    assert versions.read_lineage(relabelled)["params"]["threshold_scope"] == "task"
    pistar = rethreshold.main(rethreshold.Config(dataset=relabelled, output=tmp_path / "pistar", compat="pistar"))
    assert versions.read_lineage(pistar)["params"]["threshold_scope"] == "global"  # another rule: that rule's default


def test_a_rethreshold_killed_as_it_publishes_keeps_its_plots(relabelled, tmp_path, monkeypatch):
    """The plots are written before the version is published: a job that dies at the rename leaves them."""
    from actors import relabel_output

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(relabel_output.versions, "derive", die)
    with pytest.raises(KeyboardInterrupt):
        rethreshold.main(rethreshold.Config(dataset=relabelled, output=tmp_path / "rt"))
    plots = relabel_store.side_dir(tmp_path / "rt") / "plots"
    assert {p.name for p in plots.iterdir()} >= {"value_curves.png", "positive_fraction.png"}


def test_one_compile_per_actor(inputs):
    src, run = inputs
    step = checkpoints.resolve(run)
    spec = relabel_actors.InferenceSpec(
        dataset=str(src), config="value_tiny", params=str(checkpoints.params_dir(step)), tokenizer=str(checkpoints.tokenizer_file(step)),
        cameras=(("base_0_rgb", "observation.images.head_camera"),), batch_size=BATCH,
    )  # fmt: skip
    actor = relabel_actors.ValueActor(spec)
    rows = list(relabel_actors.decode_chunks({"episode_index": np.array([1, 2])}, spec))
    assert [(int(r["start"][0]), int(r["count"][0])) for r in rows] == [(0, 8), (8, 7), (0, 8), (8, 1)]
    for row in rows:
        out = actor(row)
        assert out["value"].shape == (1, BATCH) and np.all((out["value"] >= -1) & (out["value"] <= 0))
    assert actor.estimator._step._cache_size() == 1


def test_checkpoint_resolution(inputs, tmp_path):
    src, run = inputs
    step, name, tokenizer = relabel_job.resolve_checkpoint(_config(src, run, tmp_path / "x"))
    assert (step.name, name, tokenizer) == ("3", "value_tiny", checkpoints.tokenizer_file(step))
    loose = tmp_path / "loose"
    shutil.copytree(step, loose)
    with pytest.raises(ValueError, match="pass --config"):
        relabel_job.resolve_checkpoint(_config(src, loose, tmp_path / "x"))
    assert relabel_job.resolve_checkpoint(_config(src, loose, tmp_path / "x", config="value_tiny"))[1] == "value_tiny"
    with pytest.raises(FileExistsError):
        relabel_job.main(_config(src, run, src))


def _with_column(src: Path, out: Path, column: str, episode: int, value: int) -> Path:
    """`src` with every frame of `column` in `episode` set to `value`."""

    def transform(index: int, table: pa.Table, ep) -> pa.Table:
        if index != episode:
            return table
        return table.set_column(table.column_names.index(column), column, pa.array(np.full(table.num_rows, value, np.int64)))

    return versions.derive(src, out, transform, change=f"test: {column} = {value} in episode {episode}")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("no_recap", r"no RECAP columns \['intervention'"),
        ("task", r"episode 1: task_index values \[7\] not in the dataset's tasks \(0\.\.1\)"),
        ("intervention", r"episode 2: intervention flags must be 0 or 1, got values \[2\]"),
    ],
)
def test_bad_input_is_named_before_any_inference(inputs, tmp_path, monkeypatch, bad, match):
    src, run = inputs
    if bad == "no_recap":
        bad_src = make_dataset(tmp_path / "bad", "v3.0", with_recap=False)
    else:
        bad_src = _with_column(src, tmp_path / "bad", *({"task": ("task_index", 1, 7), "intervention": ("intervention", 2, 2)}[bad]))

    def no_inference(*args, **kwargs):
        raise AssertionError("value inference started on a dataset that cannot be labelled")

    monkeypatch.setattr(relabel_job, "infer_values", no_inference)
    with pytest.raises(meta.DatasetError, match=match) as err:
        relabel_job.main(_config(bad_src, run, tmp_path / "out"))
    assert str(bad_src) in str(err.value)


def test_decode_worker_sees_a_dataset_rewritten_at_the_same_path(tmp_path):
    """Ray reuses worker processes: a decode task must not serve the old dataset's episodes and frames."""
    root = tmp_path / "ds"
    spec = relabel_actors.InferenceSpec(dataset=str(root), config="value_tiny", params="unused", tokenizer=None,
                                        cameras=(("base_0_rgb", "observation.images.head_camera"),), batch_size=BATCH)  # fmt: skip
    make_dataset(root, "v3.0", lengths=(12, 15))
    list(relabel_actors.decode_chunks({"episode_index": np.array([1])}, spec))
    shutil.rmtree(root)
    make_dataset(root, "v3.0", lengths=(20, 9), seed=1)
    rows = list(relabel_actors.decode_chunks({"episode_index": np.array([1])}, spec))
    assert [(int(r["start"][0]), int(r["count"][0])) for r in rows] == [(0, 8), (8, 1)]
    with dataset.open(root) as ds:
        frame = ds.frames(1, "observation.images.head_camera", np.arange(8, 9))
    np.testing.assert_array_equal(rows[1]["base_0_rgb"][0][:1], value_preprocess.resize_with_pad(frame, spec.image_size, spec.image_size))


@pytest.mark.parametrize(("setting", "match"), [({"lookahead": 0}, "lookahead must be >= 1"),
                                               ({"threshold_scope": "episode"}, "unknown threshold scope")])
def test_bad_settings_fail_before_any_inference(inputs, tmp_path, monkeypatch, setting, match):
    src, run = inputs

    def no_inference(*args, **kwargs):
        raise AssertionError("value inference started with settings that cannot label")

    monkeypatch.setattr(relabel_job, "infer_values", no_inference)
    with pytest.raises(ValueError, match=match):
        relabel_job.main(dataclasses.replace(_config(src, run, tmp_path / "out"), **setting))


@pytest.mark.interop
def test_lerobot_opens_the_relabelled_version(relabelled, tmp_path):
    dump = tmp_path / "dump.npz"
    peers.run("lerobot", "read", str(relabelled), str(dump), tmp=tmp_path)
    theirs = np.load(dump)
    assert list(theirs["adv_ind"]) == np.concatenate(list(_columns(relabelled, "adv_ind").values())).tolist()
    np.testing.assert_array_equal(theirs["value"].reshape(-1), np.concatenate(list(_columns(relabelled, "value").values())))
    np.testing.assert_array_equal(theirs["advantage"].reshape(-1), np.concatenate(list(_columns(relabelled, "advantage").values())))


def test_an_actor_pool_the_local_ray_cannot_fit_is_refused(inputs, ray_local, tmp_path, monkeypatch, caplog):
    """4 actors x 1 CPU + a 1-CPU decode task on the 4-CPU local Ray: decoding could never run, so the job
    says so instead of waiting forever; on a cluster (which may autoscale) it is a warning."""
    src, run = inputs
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = dataclasses.replace(_config(src, run, tmp_path / "out"), num_actors=4, gpus_per_actor=0.0)
    with pytest.raises(ValueError, match=r"4 actors x 1 CPU \+ a decode task \(1 CPU\) need 5 CPUs, the cluster has 4; "
                                         r"decoding would wait forever"):  # fmt: skip
        relabel_job.main(config)
    assert not config.output.exists()
    relabel_actors.check_fits(relabel_actors.Resources(num_actors=4), fixed_cluster=False)
    assert "need 5 CPUs, the cluster has 4 now; decoding waits for an autoscaler" in caplog.text


def test_relabel_feeds_the_cameras_the_value_run_was_trained_on(inputs, tmp_path):
    """A value run trained with --cameras records them in run.json; relabel uses them unless a camera flag is given."""
    src, run = inputs
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    run_record.update(copy, cameras={"base": "observation.images.cam_high", "wrist": None, "right_wrist": "observation.images.cam_r"})
    step = checkpoints.resolve(copy)
    chosen = relabel_job.with_run_cameras(_config(src, copy, tmp_path / "out"), step, "value_tiny")
    assert (chosen.base_camera, chosen.wrist_camera, chosen.right_wrist_camera) == ("observation.images.cam_high", None, None)
    given = _config(src, copy, tmp_path / "out", wrist_camera="observation.images.w")
    assert relabel_job.with_run_cameras(given, step, "value_tiny") == given  # a flag given: the flags as they are
    plain = _config(src, run, tmp_path / "out")
    assert relabel_job.with_run_cameras(plain, checkpoints.resolve(run), "value_tiny") == plain  # trained on YAM's
