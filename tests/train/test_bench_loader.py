"""`jobs.bench_loader` end to end at a tiny size: every config and thread count measured, its derived figures
consistent with its measured ones (the timings themselves are the benchmark's, not a test's)."""

from __future__ import annotations

import pytest

from jobs import bench_loader


def test_bench_loader_reports_each_config_and_thread_count(tmp_path, sentencepiece_model):
    bench = bench_loader.BenchConfig(configs=("pi06_tiny", "value_tiny"), threads=(0, 2), batch=4, batches=2, repeats=1,
                                     episodes=2, frames=12, height=24, width=32, root=str(tmp_path / "ds"),
                                     tokenizer=sentencepiece_model)  # fmt: skip
    report = bench_loader.main(bench)
    assert [r["config"] for r in report["results"]] == ["pi06_tiny", "value_tiny"]
    for result in report["results"]:
        rate = bench_loader.STEP_RATES[result["kind"]]
        assert set(result["threads"]) == {0, 2} and result["threads"][0]["speedup_vs_sync"] == 1.0
        for row in result["threads"].values():
            assert row["frames_per_s"] == pytest.approx(row["examples_per_s"] * result["cameras"], rel=1e-2)
            assert row["gpus_fed"] == pytest.approx(row["examples_per_s"] / rate, abs=0.01)
        assert result["cores_per_gpu"] == pytest.approx(result["cpu_ms_per_example"] / 1e3 * rate, abs=0.01)
        assert 0 < result["decode_share_of_cpu"] < 1.5 and result["python_thread_speed_beside_loader"] > 0
    assert (tmp_path / "ds" / "meta" / "info.json").is_file()  # kept for the next run
