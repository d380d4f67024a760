"""jobs.params: --list and --config print names / the abstract tree without allocating."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


from jobs import params
from recap_ray.configs import policy

import spec_tree


PI06_NAMES = [
    "pi06_yam_vial_30fps", "pi06_yam_vial_30fps_lora", "pi06_yam_vial_30fps_lora_from_sft",
    "pi06_yam_vial_30fps_lora_from_sft_recap", "pi06_yam_vial_30fps_from_sft_recap",
]  # fmt: skip


def test_list_has_the_ten_pistar_configs_and_tiny():
    names = params.main(params.Args(list=True))
    for name in PI06_NAMES:
        assert name in names and f"{name}_infer" in names
    assert "pi06_tiny" in names and "pi06_tiny_infer" in names


def test_infer_twins_differ_only_in_dropout():
    from recap_ray.configs import registry

    for name in [*PI06_NAMES, "pi06_tiny"]:
        train, infer = registry.get(name), registry.get(f"{name}_infer")
        assert train.adv_ind_dropout and not infer.adv_ind_dropout
        assert policy.dataclasses.replace(infer, name=name, adv_ind_dropout=True) == train


def test_config_lines_match_spec_listing():
    lines = params.main(params.Args(config="pi06_yam_vial_30fps"))
    want = sorted(f"{path} [{','.join(map(str, shape))}] {dtype}" for path, (shape, dtype) in spec_tree.rows("pi05.tsv").items())
    assert sorted(lines) == want


def test_cli_subprocess(tmp_path):
    run = subprocess.run([sys.executable, "-m", "jobs.params", "--config", "pi06_tiny"],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])  # fmt: skip
    lines = run.stdout.splitlines()
    assert "action_in_proj/kernel [32,32] float32" in lines
    bad = subprocess.run([sys.executable, "-m", "jobs.params", "--config", "pi06_tinyy"],
                         capture_output=True, text=True, cwd=Path(__file__).parents[1])  # fmt: skip
    assert bad.returncode != 0 and "pi06_tiny" in bad.stderr
