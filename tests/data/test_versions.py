"""Copy-on-write versions, RECAP column preparation, merge and norm stats."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pyarrow as pa
import pytest

from jobs import merge as merge_job
from jobs import norm_stats as norm_stats_job
from jobs import prepare as prepare_job
from recap_ray.data import dataset, features, merge, norm_stats, prepare, recap_columns, versions
from tests.data.conftest import CAMERAS, make_dataset, make_flagged_dataset, tree_digest


def test_recap_columns_hand_computed():
    ok = recap_columns.compute(True, np.array([0, 1, 1, 0]))
    np.testing.assert_allclose(ok["reward"], [0, 0, 0, 1])
    np.testing.assert_allclose(ok["reward_label"], [-0.25, -0.25, -0.25, 0.0])
    np.testing.assert_allclose(ok["value_label"], [-0.75, -0.5, -0.25, 0.0])
    assert list(ok["adv_ind"]) == ["none", "positive", "positive", "none"]
    fail = recap_columns.compute(False, np.zeros(3, int))
    np.testing.assert_allclose(fail["reward"], [0, 0, 0])
    np.testing.assert_allclose(fail["reward_label"], [-1 / 3, -1 / 3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(fail["value_label"], [-1, -1, -1])


def test_recap_columns_on_a_task_horizon():
    ok = recap_columns.compute(True, np.array([0, 1, 0]), horizon=6)
    np.testing.assert_allclose(ok["reward_label"], [-1 / 6, -1 / 6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(ok["value_label"], [-2 / 6, -1 / 6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(recap_columns.compute(False, np.zeros(3, int), horizon=6)["value_label"], -1.0)
    with pytest.raises(ValueError, match="horizon 2 is shorter than the episode"):
        recap_columns.compute(True, np.zeros(3, int), horizon=2)


def test_prepare_task_scale_divides_by_the_tasks_longest_episode(tmp_path):
    src = make_dataset(tmp_path / "raw", "v3.0", (8, 6, 5), with_recap=False)  # tasks alternate: {0, 2} and {1}
    out = prepare_job.main(prepare_job.Config(src, tmp_path / "prepared", value_scale="task"))
    with dataset.open(out) as ds:
        np.testing.assert_allclose(ds.column(0, "value_label"), -(7 - np.arange(8)) / 8, rtol=1e-6)
        np.testing.assert_allclose(ds.column(2, "value_label"), -(4 - np.arange(5)) / 8, rtol=1e-6)  # task's longest: 8
        np.testing.assert_allclose(ds.column(2, "reward_label"), [-1 / 8] * 4 + [0.0], rtol=1e-6)
        np.testing.assert_allclose(ds.column(1, "reward_label"), [-1 / 6] * 5 + [0.0], rtol=1e-6)  # alone in its task
        np.testing.assert_allclose(ds.column(1, "value_label"), -1.0)
    assert versions.read_lineage(out)["params"]["value_scale"] == "task"


def test_prepare_writes_a_new_version_with_lineage(tmp_path, version):
    src = make_dataset(tmp_path / "raw", version, (8, 6), with_recap=False)
    before = tree_digest(src)
    out = prepare_job.main(prepare_job.Config(src, tmp_path / "prepared"))
    assert tree_digest(src) == before
    with dataset.open(out) as ds:
        assert all(c in ds.features for c in recap_columns.COLUMNS)
        np.testing.assert_allclose(ds.column(0, "value_label"), -(7 - np.arange(8)) / 8, rtol=1e-6)  # episode 0 succeeded
        np.testing.assert_allclose(ds.column(1, "value_label"), -1.0)
        seg_src = dataset.open(src).video_segment(0, CAMERAS[0]).path
        assert ds.video_segment(0, CAMERAS[0]).path.stat().st_ino == seg_src.stat().st_ino  # hard-linked
    record = versions.read_lineage(out)
    assert record["parents"][0]["fingerprint"] == versions.fingerprint(src)
    assert record["change"].startswith("prepare")


def test_prepare_without_success_names_the_episode(tmp_path, caplog):
    src = make_dataset(tmp_path / "raw", "v3.0", (5, 5), with_recap=False)
    info = dataset.open(src).meta
    # drop the success flag by rewriting a dataset without episode metadata
    from recap_ray.data import writer

    with dataset.open(src) as ds:
        w = writer.DatasetWriter(tmp_path / "nosuccess", fps=30, features={k: v for k, v in ds.features.items() if k not in features.DEFAULT_FEATURES and k != "info"}, version="v3.0")
        for ep in range(2):
            w.add_episode_from(ds, ep)
        w.episodes[1].extra.pop("success")
        bare = w.finalize()
    with pytest.raises(prepare.MissingSuccess, match="episode 1"):
        prepare.prepare(bare, tmp_path / "out", default_success="error")
    assert not (tmp_path / "out").exists()
    assert info.total_frames == 10
    with caplog.at_level(logging.WARNING):
        out = prepare_job.main(prepare_job.Config(bare, tmp_path / "default"))  # spec recap.md §1: no marker, a failure
    with dataset.open(out) as ds:
        assert [ep.extra["success"] for ep in ds.meta.episodes] == [True, False]
    assert "1 of 2 episodes carry no success flag and count as failure (--default-success), e.g. [1]" in caplog.text


def test_prepare_reads_success_from_a_columns_last_frame_and_intervention_from_a_named_column(tmp_path):
    src = make_flagged_dataset(tmp_path / "raw", [True, False], [[0, 1, 1, 0], [1, 0, 0, 0, 0]])
    out = prepare_job.main(prepare_job.Config(src, tmp_path / "out", success_column="next.success",
                                              intervention_column="operator", default_success="error"))  # fmt: skip
    with dataset.open(out) as ds:
        assert [ep.extra["success"] for ep in ds.meta.episodes] == [True, False]
        np.testing.assert_array_equal(ds.column(0, "intervention"), [0, 1, 1, 0])
        np.testing.assert_array_equal(ds.column(1, "intervention"), [1, 0, 0, 0, 0])
        np.testing.assert_allclose(ds.column(1, "value_label"), -1.0)
    with pytest.raises(ValueError, match=r"raw, episode 0: no column 'done'"):
        prepare.prepare(src, tmp_path / "bad", success_column="done")
    with pytest.raises(ValueError, match=r"raw, episode 0: no column 'teleop'"):
        prepare.prepare(src, tmp_path / "bad", intervention_column="teleop")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("content", "error"), [
    ('{"0": "true", "1": "false"}', r"succ.json, episode 0: success must be true, false, 0 or 1, got 'true'"),
    ('{"0": true, "1": 1.0}', r"succ.json, episode 1: success must be true, false, 0 or 1, got 1.0"),
    ('{"zero": true}', r"succ.json: key 'zero' is not an episode index"),
    ('[0, "1"]', r"succ.json: a list must hold episode indices"),
    ('true', r"succ.json: expected an object"),
])  # fmt: skip
def test_success_file_accepts_only_booleans_or_0_1(tmp_path, content, error):
    src = make_dataset(tmp_path / "raw", "v3.0", (5, 5), with_recap=False)
    (tmp_path / "succ.json").write_text(content)
    with pytest.raises(ValueError, match=error):
        prepare_job.main(prepare_job.Config(src, tmp_path / "out", success_file=tmp_path / "succ.json"))
    assert not (tmp_path / "out").exists()


def test_success_file_as_a_map_of_0_1_or_a_list_of_successful_episodes(tmp_path):
    src = make_flagged_dataset(tmp_path / "raw", [False] * 3, [[0] * 4] * 3)
    success = lambda out: [ep.extra["success"] for ep in dataset.open(out).meta.episodes]  # noqa: E731
    (tmp_path / "map.json").write_text('{"1": 1}')  # partial: the others take --default-success
    assert success(prepare_job.main(prepare_job.Config(src, tmp_path / "a", success_file=tmp_path / "map.json"))) == [False, True, False]
    out = prepare_job.main(prepare_job.Config(src, tmp_path / "b", success_file=tmp_path / "map.json", default_success="success"))
    assert success(out) == [True, True, True]
    (tmp_path / "list.json").write_text("[0, 2]")
    assert success(prepare_job.main(prepare_job.Config(src, tmp_path / "c", success_file=tmp_path / "list.json"))) == [True, False, True]
    (tmp_path / "list.json").write_text("[0, 5]")
    with pytest.raises(ValueError, match=r"success overrides name episodes \[5\]"):
        prepare_job.main(prepare_job.Config(src, tmp_path / "d", success_file=tmp_path / "list.json"))


def test_prepare_job_reports_a_user_error_without_a_traceback(tmp_path):
    import subprocess
    import sys

    src = make_flagged_dataset(tmp_path / "raw", [True], [[0, 0]])
    cmd = [sys.executable, "-m", "jobs.prepare", "--input", str(src), "--output", str(tmp_path / "out"), "--default-success", "error"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {src}, episode 0: no success flag (episode metadata 'success', a 'success' "
                                                  "column, --success-file, --success-column, or --default-success failure|success)",
                                                  "(RECAP_TRACEBACK=1 shows where it was raised)"]  # fmt: skip


def test_prepare_refuses_success_overrides_for_episodes_it_lacks(tmp_path):
    src = make_dataset(tmp_path / "raw", "v3.0", (5, 5), with_recap=False)
    with pytest.raises(ValueError, match=r"success overrides name episodes \[2, 7\], the dataset has episodes 0..1"):
        prepare.prepare(src, tmp_path / "out", success={0: False, 2: True, 7: True})
    assert not (tmp_path / "out").exists()


def test_crash_leaves_no_version_and_rerun_is_identical(tmp_path, version):
    src = make_dataset(tmp_path / "src", version, (6, 7, 5))

    def relabel(ep, table, meta):
        i = table.column_names.index("adv_ind")
        return table.set_column(i, "adv_ind", pa.array(["negative"] * table.num_rows))

    def crashing(ep, table, meta):
        if ep == 2:
            raise RuntimeError("killed")
        return relabel(ep, table, meta)

    with pytest.raises(RuntimeError):
        versions.derive(src, tmp_path / "out", crashing, change="relabel")
    assert not (tmp_path / "out").exists()
    out = versions.derive(src, tmp_path / "out", relabel, change="relabel")
    clean = versions.derive(src, tmp_path / "clean", relabel, change="relabel")
    assert versions.fingerprint(out) == versions.fingerprint(clean)
    with pytest.raises(FileExistsError):
        versions.derive(src, out, relabel, change="relabel")


def test_merge_reindexes_tasks_and_episodes(tmp_path):
    a = make_dataset(tmp_path / "a", "v3.0", (5, 6), seed=1)
    b = make_dataset(tmp_path / "b", "v2.1", (7,), seed=2)
    out = merge_job.main(merge_job.Config((a, b), tmp_path / "m"))
    with dataset.open(out) as m, dataset.open(a) as da, dataset.open(b) as db:
        assert m.num_episodes == 3 and m.num_frames == 18
        np.testing.assert_array_equal(m.column(2, "observation.state"), db.column(0, "observation.state"))
        np.testing.assert_array_equal(m.column(2, "episode_index"), 2)
        np.testing.assert_array_equal(m.column(2, "index"), np.arange(11, 18))
        assert m.meta.tasks == ["hand over the block 0", "hand over the block 1"]
        np.testing.assert_array_equal(m.frames(2, CAMERAS[1]), db.frames(0, CAMERAS[1]))
        np.testing.assert_array_equal(m.frames(1, CAMERAS[0]), da.frames(1, CAMERAS[0]))


def test_merge_schema_mismatch_names_the_field(tmp_path):
    a = make_dataset(tmp_path / "a", "v3.0", (5,))
    b = make_dataset(tmp_path / "b", "v3.0", (5,), with_recap=False)
    with pytest.raises(merge.SchemaMismatch, match="feature 'adv_ind'"):
        merge.merge([a, b], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_merge_schema_mismatch_says_what_to_do(tmp_path):
    """The raw source is named for jobs.prepare in either order; another camera or stage, another width: what merges."""
    a = make_dataset(tmp_path / "a", "v3.0", (5,))
    b = make_dataset(tmp_path / "b", "v3.0", (5,), with_recap=False)
    for sources in ([a, b], [b, a]):
        with pytest.raises(merge.SchemaMismatch, match=f"add the RECAP columns with `python -m jobs.prepare --input {b} "):
            merge.merge(sources, tmp_path / "m")
    c = make_dataset(tmp_path / "c", "v3.0", (5,), with_image=True)
    with pytest.raises(merge.SchemaMismatch, match="is not in .*; merge data recorded alike .* at the same stage"):
        merge.merge([a, c], tmp_path / "m")
    d = make_dataset(tmp_path / "d", "v3.0", (5,))
    meta = d / "meta" / "info.json"
    info = json.loads(meta.read_text())
    info["features"]["observation.state"]["shape"] = [6]  # schemas are compared before any data is read
    meta.write_text(json.dumps(info))
    with pytest.raises(merge.SchemaMismatch, match=r"'observation.state' is .*\(6,\).*; only data recorded alike merges"):
        merge.merge([a, d], tmp_path / "m")


def test_norm_stats_of_a_policy_config_are_its_training_stats(tmp_path):
    """--config pi06_tiny: action chunks of 10, end-padded, joints minus the state (grippers absolute), by hand."""
    root = make_dataset(tmp_path / "d", "v3.0", (40, 23))
    stats = norm_stats.load(norm_stats_job.main(norm_stats_job.Config(root, tmp_path / "ns.json", config="pi06_tiny")))
    chunks = []
    with dataset.open(root) as ds:
        for e in range(2):
            state, action = ds.column(e, "observation.state"), ds.column(e, "action")
            for t in range(len(action)):
                chunk = action[[min(t + k, len(action) - 1) for k in range(10)]].copy()
                chunk[:, [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]] -= state[t, [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]]
                chunks.append(chunk)
    chunks = np.concatenate(chunks)
    np.testing.assert_allclose(stats["actions"].mean, chunks.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["actions"].std, chunks.std(0), rtol=1e-5)
    with pytest.raises(ValueError, match="is a ValueModelConfig, not a PolicyConfig"):
        norm_stats_job.main(norm_stats_job.Config(root, tmp_path / "v.json", config="value_tiny"))


def test_norm_stats_against_numpy(tmp_path):
    root = make_dataset(tmp_path / "d", "v3.0", (40, 55, 23))
    out = norm_stats_job.main(norm_stats_job.Config(root, tmp_path / "norm_stats.json"))
    stats = norm_stats.load(out)
    body = json.loads(out.read_text())["norm_stats"]
    assert set(body) == {"state", "actions"} and set(body["state"]) == {"mean", "std", "q01", "q99"}
    with dataset.open(root) as ds:
        state = np.concatenate([ds.column(e, "observation.state") for e in range(3)])
    np.testing.assert_allclose(stats["state"].mean, state.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["state"].std, state.std(0), rtol=1e-6)
    width = (state.max(0) - state.min(0)) / norm_stats.NUM_BINS
    assert (np.abs(stats["state"].q01 - np.quantile(state, 0.01, axis=0, method="inverted_cdf")) <= 2 * width + 1e-9).all()
    assert (np.abs(stats["state"].q99 - np.quantile(state, 0.99, axis=0, method="inverted_cdf")) <= 2 * width + 1e-9).all()


def test_norm_stats_save_is_atomic(tmp_path, monkeypatch):
    """A write that dies half-way leaves the previous file whole and no temporary file behind."""
    out = tmp_path / "norm_stats.json"
    unit = norm_stats.NormStats(mean=np.zeros(2), std=np.ones(2), q01=-np.ones(2), q99=np.ones(2))
    norm_stats.save(out, {"state": unit})
    before = out.read_text()

    def dies_half_way(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(type(out), "write_text", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        norm_stats.save(out, {"state": unit, "actions": unit})
    assert out.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["norm_stats.json"]


def test_norm_stats_name_the_episode_column_and_frame_of_a_nan(tmp_path):
    import pyarrow.parquet as pq

    root = make_dataset(tmp_path / "d", "v2.1", (12, 15, 9))
    path = root / "data/chunk-000/episode_000001.parquet"
    table = pq.read_table(path)
    actions = table.column("action").to_pylist()
    actions[3][2] = float("nan")
    i = table.column_names.index("action")
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(actions, table.schema.field(i).type)), path)
    with dataset.open(root) as ds, pytest.raises(ValueError, match=r"episode 1, column 'action': .*row 3 "):
        norm_stats.compute(ds)


def test_running_stats_widening_range_matches_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.normal(scale=s, size=(500, 3)) for s in (0.1, 1.0, 5.0)]  # range grows batch by batch
    running = norm_stats.RunningStats()
    for b in batches:
        running.update(b)
    allx = np.concatenate(batches)
    res = running.result()
    np.testing.assert_allclose(res.std, allx.std(0), rtol=1e-9)
    span = allx.max(0) - allx.min(0)
    assert (np.abs(res.q99 - np.quantile(allx, 0.99, axis=0, method="inverted_cdf")) < span * 3e-3).all()


def test_image_stats_match_float_reference():
    from recap_ray.data import stats

    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, size=(7, 20, 30, 3), dtype=np.uint8)
    got = stats.image_stats(frames, quantiles=True)
    pixels = frames.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(got["mean"].ravel(), pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(got["std"].ravel(), pixels.std(0), rtol=1e-9)
    np.testing.assert_allclose(got["min"].ravel(), pixels.min(0))
    np.testing.assert_allclose(got["max"].ravel(), pixels.max(0))
    for key, q in zip(stats.QUANTILE_KEYS, stats.QUANTILES):
        np.testing.assert_allclose(got[key].ravel(), np.quantile(pixels, q, axis=0), rtol=1e-12)
    assert got["mean"].shape == (3, 1, 1) and got["count"].tolist() == [7]


def test_merge_refuses_a_source_given_twice_or_a_copy_of_one(tmp_path):
    a = make_dataset(tmp_path / "a", "v3.0", (5, 6), seed=1)
    b = make_dataset(tmp_path / "b", "v3.0", (7,), seed=2)
    with pytest.raises(ValueError, match=r"source 3 is the same dataset as source 1 \(.*/a\); its episodes would be merged twice"):
        merge.merge([a, b, tmp_path / "a"], tmp_path / "m")
    shutil.copytree(b, tmp_path / "b_copy")
    with pytest.raises(ValueError, match=r"b_copy: source 2 is a copy of it as source 1"):
        merge.merge([b, tmp_path / "b_copy"], tmp_path / "m")
    assert not (tmp_path / "m").exists()
    out = merge.merge([a, b], tmp_path / "m")  # the lineage keeps each parent's fingerprint
    assert [p["fingerprint"] for p in versions.read_lineage(out)["parents"]] == [versions.fingerprint(a), versions.fingerprint(b)]
