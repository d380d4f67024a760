"""`jobs.bench_loader` end to end at a tiny size: each config's maker decodes the cameras its model takes, every
thread count is measured against the synchronous loader, and a kept dataset is reused only for the same
arguments (the timings themselves are the benchmark's, not a test's)."""

from __future__ import annotations

import dataclasses

from jobs import bench_data, bench_loader


def test_bench_loader_measures_each_config_and_reuses_its_dataset(tmp_path, sentencepiece_model):
    bench = bench_loader.BenchConfig(configs=("pi06_tiny", "value_tiny"), threads=(0, 2), batch=4, batches=2, repeats=1,
                                     episodes=2, frames=12, height=24, width=32, root=str(tmp_path / "ds"),
                                     tokenizer=sentencepiece_model)  # fmt: skip
    report = bench_loader.main(bench)
    # pi0.5 takes three cameras (base, two wrists); the value model two (base_0_rgb, wrist_0_rgb)
    assert [(r["config"], r["kind"], r["cameras"]) for r in report["results"]] == [("pi06_tiny", "policy", 3), ("value_tiny", "value", 2)]
    for result in report["results"]:
        assert set(result["threads"]) == {0, 2} and result["threads"][0]["speedup_vs_sync"] == 1.0
        assert all(row["examples_per_s"] > 0 for row in result["threads"].values())
        assert result["cpu_ms_per_example"] > 0 and 0 < result["decode_share_of_cpu"]

    info = tmp_path / "ds" / "meta" / "info.json"
    written = info.stat().st_mtime_ns
    bench_loader.main(dataclasses.replace(bench, configs=("value_tiny",), threads=(0,)))
    assert info.stat().st_mtime_ns == written  # same arguments: reused
    assert not bench_data.reusable(tmp_path / "ds", 2, 12, 24, 32, noise=4)  # other content: written anew
