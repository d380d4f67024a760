"""A round's configuration: round.yaml checked field by field, the manifest refusing a changed config."""

from __future__ import annotations

import pytest

from jobs import round as round_job
from recap_ray import manifest


def test_round_refuses_a_changed_config(tmp_path):
    manifest.Manifest(tmp_path, {"lookahead": 50})
    with pytest.raises(ValueError, match=r"\['lookahead'\]"):
        manifest.Manifest(tmp_path, {"lookahead": 10})


def test_round_yaml_sets_the_fields_it_names(tmp_path):
    path = tmp_path / "round.yaml"
    path.write_text("sources: [/data/a, /data/b]\nskip_value: true\npolicy_steps: 100\n"
                    "task: {grasp_radius: 0.05, object_x: [-0.3, -0.2]}\ndagger: {max_corrections: 3}\n")  # fmt: skip
    rc = round_job.RoundConfig.from_yaml(path)
    assert rc.sources == ("/data/a", "/data/b") and rc.skip_value and rc.policy_steps == 100
    assert rc.task.grasp_radius == 0.05 and rc.task.object_x == (-0.3, -0.2) and rc.task.goal_radius == 0.04
    assert rc.dagger.max_corrections == 3 and rc.dagger.drift_m == 0.03


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("sources: [/data/a]\nlookahed: 10\n", r"round.yaml: unknown RoundConfig fields \['lookahed'\]"),
        # one path, not a list: not split into characters
        ("sources: /data/a\n", r"round.yaml: sources must be a list of dataset paths, got '/data/a'"),
        ("value_scale: steps\n", r"round.yaml: value_scale 'steps' is not one of \('episode', 'task'\)"),
        ("task: {grasp_radus: 0.05}\n", r"round.yaml: task: unknown TaskConfig fields \['grasp_radus'\]"),
        ("dagger: 3\n", r"round.yaml: dagger: expected a mapping of DaggerConfig fields, got int"),
    ],
)
def test_round_yaml_errors_name_the_file_and_field(tmp_path, text, error):
    path = tmp_path / "round.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        round_job.RoundConfig.from_yaml(path)


def test_round_reopens_with_the_same_config(tmp_path):
    config = {"sources": ("/data/a",), "lookahead": 50}
    manifest.Manifest(tmp_path, config)
    assert manifest.Manifest(tmp_path, config).data["config"]["sources"] == ["/data/a"]


def test_round_paths_are_made_absolute_but_init_keywords_are_kept(tmp_path, monkeypatch):
    """`value_init: bundle` (pistar's bundle in $OPENPI_VLM_CKPT_DIR) and `sft_checkpoint: none` (random) are the
    training jobs' --init keywords, not files in the current directory."""
    monkeypatch.chdir(tmp_path)
    rc = round_job.RoundConfig(value_init="bundle", sft_checkpoint="none", tokenizer="tok.model")
    assert (rc.value_init, rc.sft_checkpoint, rc.tokenizer) == ("bundle", "none", str(tmp_path / "tok.model"))
    rc = round_job.RoundConfig(value_init="weights/bundle", sft_checkpoint="gs://b/params")
    assert (rc.value_init, rc.sft_checkpoint) == (str(tmp_path / "weights/bundle"), "gs://b/params")
