"""Pulse test of jobs/bench_value.py on value_tiny (CPU): runs end to end, FLOPs agree with XLA."""

from __future__ import annotations

import json

from jobs import bench_value
from recap_ray.configs import registry


def test_bench_value_pulse(tmp_path):
    out = tmp_path / "bench.json"
    args = bench_value.Args(config="value_tiny", batch_sizes=(2,), iters=1, warmup=0, out=str(out))
    (result,) = bench_value.main(args)
    assert result["v_in_range"] and result["frames_per_s"] > 0 and result["batch"] == 2
    # the architecture count and XLA's count (which adds norms, softmax, element-wise ops) agree
    assert 0.8 < result["xla_gflops_per_frame"] / result["gflops_per_frame"] < 1.25
    assert json.loads(out.read_text())["results"][0]["batch"] == 2


def test_real_size_flops_per_frame_by_hand():
    parts = bench_value.flops_per_frame(registry.get("value"))
    # SigLIP per image: patch 2*256*588*1152 + 27 * (8*256*1152^2 + 4*256^2*1152 + 4*256*1152*4304)
    siglip_image = 2 * 256 * 588 * 1152 + 27 * (8 * 256 * 1152**2 + 4 * 256**2 * 1152 + 4 * 256 * 1152 * 4304)
    assert parts["siglip"] == 2 * siglip_image
    # Gemma3 over 560 tokens: q 1024 + kv 512 wide, out 1024->640, attention 4 heads x 256, MLP 3 x 640x2048
    per_layer = 2 * 560 * 640 * 1536 + 4 * 560**2 * 1024 + 2 * 560 * 1024 * 640 + 6 * 560 * 640 * 2048
    assert parts["gemma3"] == 18 * per_layer
    assert 570e9 < parts["total"] < 580e9
