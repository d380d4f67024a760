"""A user's common mistakes on the command-line jobs: each is a user error (one `error: ...` line, see
jobs/cli.py) naming the flag, field, file or config, raised before the expensive work (reading a dataset in
full, starting Ray, loading a model) and before anything is written."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from jobs import cli, collect, demo_data, evaluate, norm_stats, prepare, relabel, serve, train_policy, training
from jobs import round as round_job
from recap_ray.configs import registry
from recap_ray.data import dataset, writer
from recap_ray.serve import app_config
from tests.train.conftest import make_train_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny dataset with the RECAP columns."""
    return make_train_dataset(tmp_path_factory.mktemp("job_errors") / "data")


@pytest.fixture
def tokenizer(tmp_path) -> Path:
    """A file where the tokenizer should be (only its presence is checked before training starts)."""
    path = tmp_path / "tok.model"
    path.write_bytes(b"not read")
    return path


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a job gets as far as starting Ray."""

    def connect(*args) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(cli, "connect_ray", connect)
    monkeypatch.setattr(serve, "connect", connect)


def _run(tmp_path: Path, name: str, kind: str = "policy", config: str = "pi06_tiny") -> Path:
    """A step directory `name/checkpoints/3` of a training run of `kind` (only the layout; no weights)."""
    step = tmp_path / name / "checkpoints" / "3"
    (step / "params").mkdir(parents=True)
    (tmp_path / name / "run.json").write_text(json.dumps({"kind": kind, "config": config}))
    return step


def _assert_user_error(info: pytest.ExceptionInfo, *parts: str) -> None:
    assert isinstance(info.value, cli.USER_ERRORS), repr(info.value)
    assert all(part in str(info.value) for part in parts), str(info.value)


def test_an_unknown_config_is_a_user_error_naming_the_closest():
    with pytest.raises(registry.UnknownConfig) as info:
        registry.get("pi06_tiy")
    _assert_user_error(info, "unknown config 'pi06_tiy'", "did you mean 'pi06_tiny'")
    with pytest.raises(ValueError, match="'value_tiny' is a ValueModelConfig, not a PolicyConfig"):
        registry.get("value_tiny", type(registry.get("pi06_tiny")))


@pytest.mark.parametrize(
    ("kind", "config", "message"),
    [
        ("policy", "pi06_nope", "unknown config 'pi06_nope'"),
        ("policy", "value_tiny", "'value_tiny' is a ValueModelConfig, not a PolicyConfig"),
        ("value", "pi06_tiny", "'pi06_tiny' is a PolicyConfig, not a ValueModelConfig; those are value"),
        ("policy", "pi06_tiny_infer", "inference twin of 'pi06_tiny'"),
    ],
)
def test_training_names_a_wrong_config_first(kind, config, message, tmp_path, no_ray, monkeypatch):
    """Before the missing dataset and the missing tokenizer: a config is what a user fixes first."""
    monkeypatch.delenv("RECAP_TOKENIZER", raising=False)
    cls = train_policy.Config if kind == "policy" else training.Config
    with pytest.raises(ValueError) as info:
        training.run(cls(dataset=tmp_path / "nowhere", config=config, run_dir=str(tmp_path / "run")), kind)
    _assert_user_error(info, message)
    assert not (tmp_path / "run").exists()


def test_training_names_a_missing_dataset_a_file_and_no_tokenizer(tmp_path, data, no_ray, monkeypatch):
    monkeypatch.delenv("RECAP_TOKENIZER", raising=False)
    config = train_policy.Config(dataset=tmp_path / "nowhere", config="pi06_tiny", run_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=f"{tmp_path / 'nowhere'}: does not exist; expected a LeRobot dataset"):
        training.run(config, "policy")
    (tmp_path / "file").touch()
    with pytest.raises(ValueError, match="file: is a file; expected a LeRobot dataset"):
        training.run(train_policy.Config(dataset=tmp_path / "file", config="pi06_tiny", run_dir=str(tmp_path / "run")), "policy")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer: pass --tokenizer or set \$RECAP_TOKENIZER"):
        training.run(train_policy.Config(dataset=data, config="pi06_tiny", run_dir=str(tmp_path / "run")), "policy")
    assert not (tmp_path / "run").exists()


def test_value_training_refuses_a_camera_its_config_does_not_read(tmp_path, data, tokenizer, no_ray):
    """value_tiny reads base and wrist: a right_wrist mapping was silently dropped (relabel refuses it)."""
    def config(*cameras: str) -> training.Config:
        return training.Config(dataset=data, config="value_tiny", run_dir=str(tmp_path / "run"), tokenizer=str(tokenizer),
                               cameras=cameras)  # fmt: skip

    with pytest.raises(ValueError, match="--cameras right_wrist=observation.images.x: value config 'value_tiny' reads no "
                                         "such camera .*roles: base, wrist"):  # fmt: skip
        training.run(config("base=observation.images.head_camera", "right_wrist=observation.images.x"), "value")
    training.check_inputs(config("right_wrist=none"), "value")  # masking a camera it does not read: nothing to drop
    assert not (tmp_path / "run").exists()


def test_training_checks_the_initial_weights_before_ray(tmp_path, data, tokenizer, no_ray, monkeypatch):
    monkeypatch.delenv("OPENPI_VLM_CKPT_DIR", raising=False)
    def run(init: str, kind: str = "policy") -> None:
        cls = train_policy.Config if kind == "policy" else training.Config
        training.run(cls(dataset=data, config=f"{'pi06' if kind == 'policy' else 'value'}_tiny", run_dir=str(tmp_path / "run"),
                         tokenizer=str(tokenizer), init=init), kind)  # fmt: skip

    with pytest.raises(FileNotFoundError, match=f"--init {tmp_path / 'nowhere'}: no such file or directory"):
        run(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="a value run's checkpoint, not a policy run's"):
        run(str(_run(tmp_path, "value_run", "value", "value_tiny")))
    (tmp_path / "started" / "checkpoints").mkdir(parents=True)  # a run that saved nothing yet
    with pytest.raises(FileNotFoundError, match="--init .*started: .*no finished checkpoint"):
        run(str(tmp_path / "started"))
    with pytest.raises(FileNotFoundError, match="init_weights bundle of config 'value' .*OPENPI_VLM_CKPT_DIR"):
        training.check_inputs(training.Config(dataset=data, config="value", run_dir="r", tokenizer=str(tokenizer)), "value")
    monkeypatch.setenv("OPENPI_VLM_CKPT_DIR", str(tmp_path / "no_bundle"))
    with pytest.raises(FileNotFoundError, match=r"\$OPENPI_VLM_CKPT_DIR .*no_bundle: no such file or directory"):
        training.check_inputs(training.Config(dataset=data, config="value", run_dir="r", tokenizer=str(tokenizer)), "value")
    monkeypatch.delenv("OPENPI_VLM_CKPT_DIR")
    with pytest.raises(ValueError, match="global batch 2 does not split into --grad-accum 3"):
        training.run(train_policy.Config(dataset=data, config="pi06_tiny", run_dir=str(tmp_path / "run"),
                                         tokenizer=str(tokenizer), grad_accum=3), "policy")  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"num_workers": 0}, "Config.num_workers must be >= 1, got 0"),
        ({"num_steps": -1}, "Config.num_steps must be >= 1, got -1"),
        ({"num_steps": 0}, "Config.num_steps must be >= 1, got 0"),  # was: silently the config's steps
        ({"batch_size": 0}, "Config.batch_size must be >= 1"),
        ({"min_workers": 3, "num_workers": 2}, "--min-workers 3 exceeds --num-workers 2"),
        ({"resume": True, "overwrite": True}, "--resume and --overwrite exclude each other"),
    ],
)
def test_training_refuses_nonsense_flags_as_it_parses_them(flags, message):
    with pytest.raises(ValueError, match=message):
        training.Config(dataset=Path("d"), config="pi06_tiny", run_dir="r", **flags)


def test_relabel_refuses_nonsense_flags_and_a_checkpoint_or_config_of_another_kind(tmp_path, data, no_ray):
    for flags, message in (({"num_actors": 0}, "Config.num_actors must be >= 1"), ({"batch_size": 0}, "Config.batch_size must be >= 1"),
                           ({"gpus_per_actor": -1.0}, "Config.gpus_per_actor must be >= 0"),
                           ({"dtype": "bf16"}, "--dtype 'bf16' is not a floating-point dtype")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            relabel.Config(dataset=data, value_ckpt="v", output=tmp_path / "out", **flags)
    policy_step = _run(tmp_path, "policy_run")
    with pytest.raises(ValueError, match="a policy run's checkpoint .*relabel needs a value run"):
        relabel.main(relabel.Config(dataset=data, value_ckpt=str(policy_step), output=tmp_path / "out"))
    value_step = _run(tmp_path, "value_run", "value", "value_tiny")
    with pytest.raises(ValueError, match="'pi06_tiny' is a PolicyConfig, not a ValueModelConfig"):
        relabel.main(relabel.Config(dataset=data, value_ckpt=str(value_step), output=tmp_path / "out", config="pi06_tiny"))
    with pytest.raises(registry.UnknownConfig, match="did you mean 'value_tiny'"):
        relabel.main(relabel.Config(dataset=data, value_ckpt=str(value_step), output=tmp_path / "out", config="value_tny"))
    with pytest.raises(FileNotFoundError, match="--tokenizer .*nowhere.model: no such file"):
        relabel.main(relabel.Config(dataset=data, value_ckpt=str(value_step), output=tmp_path / "out",
                                    tokenizer=str(tmp_path / "nowhere.model")))  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy_run", "value_run"]  # no output, no work directory


def test_serve_checks_checkpoint_and_config_before_ray(tmp_path, no_ray, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def serve_main(checkpoint: Path, config: str = "pi06_tiny_infer") -> None:
        serve.main(serve.Config(app=app_config.AppConfig(checkpoint=str(checkpoint), config=config, num_gpus=0)))

    with pytest.raises(FileNotFoundError, match=f"no checkpoint or run directory at {tmp_path / 'nowhere'}"):
        serve_main(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="serve its inference twin 'pi06_tiny_infer'"):
        serve_main(tmp_path / "nowhere", "pi06_tiny")
    with pytest.raises(registry.UnknownConfig, match="did you mean 'pi06_tiny_infer'"):
        serve_main(tmp_path / "nowhere", "pi06_tiny_infr")
    with pytest.raises(ValueError, match="a value run's checkpoint .*serve a policy run"):
        serve_main(_run(tmp_path, "value_run", "value", "value_tiny"))
    with pytest.raises(FileNotFoundError, match="no norm stats at .*norm_stats.json"):
        serve_main(_run(tmp_path, "policy_run"))
    with pytest.raises(ValueError, match="num_steps .* must be >= 1, got 0"):
        app_config.AppConfig(checkpoint="c", config="pi06_tiny_infer", num_steps=0)


def test_serve_gpu_check_refuses_an_embedded_ray_but_waits_for_a_cluster_autoscaler(caplog):
    with pytest.raises(ValueError, match="--num-gpus 1 per model replica, but the Ray cluster has 0 GPUs .*--num-gpus 0"):
        serve._check_gpus(1, 0, joined=False)
    with caplog.at_level("WARNING", logger=serve.__name__):
        serve._check_gpus(1, 0, joined=True)  # KubeRay's GPU group at minReplicas 0
    assert "waits until the autoscaler adds a GPU node" in caplog.text
    serve._check_gpus(0, 0, joined=False)
    serve._check_gpus(1, 8, joined=False)


def test_data_jobs_name_the_flag_and_write_nothing(tmp_path, data):
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=r"--output .*out is a directory; give the file to write"):
        norm_stats.main(norm_stats.Config(dataset=data, output=tmp_path / "out"))
    with pytest.raises(ValueError, match=r"norm stats columns \['nope'\] are not features of the dataset"):
        norm_stats.main(norm_stats.Config(dataset=data, output=tmp_path / "ns.json", state_key="nope"))
    with pytest.raises(registry.UnknownConfig, match="did you mean 'pi06_tiny'"):
        norm_stats.main(norm_stats.Config(dataset=data, output=tmp_path / "ns.json", config="pi06_tiy"))
    with pytest.raises(FileNotFoundError, match="--success-file .*nowhere.json: no such file"):
        prepare.main(prepare.Config(input=data, output=tmp_path / "p", success_file=tmp_path / "nowhere.json"))
    with pytest.raises(ValueError, match="--success-file .*out: a directory, not a JSON file"):
        prepare.main(prepare.Config(input=data, output=tmp_path / "p", success_file=tmp_path / "out"))
    (tmp_path / "file").touch()
    with pytest.raises(FileExistsError, match="--output .*file is a file; the data stage writes a directory"):
        demo_data.main(demo_data.Config(output=tmp_path / "file"))
    with pytest.raises(FileExistsError, match=r"file/sub: cannot be created, .*file is a file"):
        prepare.main(prepare.Config(input=data, output=tmp_path / "file" / "sub"))
    with pytest.raises(ValueError, match="nowhere: does not exist; expected a LeRobot dataset directory"):
        dataset.open(tmp_path / "nowhere")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]
    with pytest.raises(FileExistsError, match="cannot be created"):
        writer.claim_staging(tmp_path / "file" / "sub")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_collect_and_evaluate_name_an_unreachable_endpoint_and_a_bad_output(tmp_path):
    endpoint = f"ws://127.0.0.1:{_closed_port()}"
    with pytest.raises(cli.JobFailed, match=f"--endpoint {endpoint}: cannot connect .*python -m jobs.serve"):
        evaluate.main(evaluate.Config(endpoint=endpoint, output=tmp_path / "eval", episodes=1))
    with pytest.raises(cli.JobFailed, match=f"--endpoint {endpoint}: cannot connect"):
        collect.main(collect.Config(endpoint=endpoint, output=tmp_path / "rollouts", rollouts=1))
    (tmp_path / "file").touch()
    with pytest.raises(FileExistsError, match="--output .*file is a file; the evaluation writes a directory"):
        evaluate.main(evaluate.Config(policy="random", output=tmp_path / "file", episodes=1))
    with pytest.raises(FileExistsError, match="file: already exists"):  # before connecting
        collect.main(collect.Config(endpoint=endpoint, output=tmp_path / "file", rollouts=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_round_checks_its_yaml_before_any_stage_and_writes_nothing(tmp_path, data, tokenizer, monkeypatch):
    monkeypatch.delenv("RECAP_TOKENIZER", raising=False)
    monkeypatch.delenv("OPENPI_VLM_CKPT_DIR", raising=False)
    base = dict(sources=(str(data),), policy_config="pi06_tiny", value_config="value_tiny", tokenizer=str(tokenizer),
                value_tokenizer=str(tokenizer))  # fmt: skip
    round_job.round_checks.check(round_job.RoundConfig(**base))  # all well
    for change, error, message in (
        ({"policy_config": "pi06_tinny"}, ValueError, "policy_config: unknown config 'pi06_tinny'; did you mean 'pi06_tiny'"),
        ({"policy_config": "pi06_tiny_infer"}, ValueError, "policy_config: config 'pi06_tiny_infer' is the inference twin"),
        ({"value_config": "pi06_tiny"}, ValueError, "value_config: config 'pi06_tiny' is a PolicyConfig"),
        ({"tokenizer": None}, FileNotFoundError, "no tokenizer: pass `tokenizer` in the round config"),
        ({"sources": (str(tmp_path / "nowhere"),)}, ValueError, "sources: .*nowhere: does not exist"),
        ({"sft_checkpoint": str(tmp_path / "sft")}, FileNotFoundError, "sft_checkpoint .*sft: no such file or directory"),
        ({"value_config": "value"}, FileNotFoundError, "init_weights bundle of config 'value' .*or pass value_init"),
    ):  # fmt: skip
        with pytest.raises(error, match=message):
            round_job.run_round(round_job.RoundConfig(**{**base, **change}), tmp_path / "round")
    assert not (tmp_path / "round").exists()  # no round.json: the fixed YAML runs into the same directory
    for field, value, message in (("positive_ratio", 30.0, r"positive_ratio .* must be in \(0, 1\], got 30"),
                                  ("num_workers", 0, "num_workers must be >= 1, got 0")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            round_job.RoundConfig(**{**base, field: value})
    with pytest.raises(FileNotFoundError, match="--config .*round.yaml: no such file"):
        round_job.RoundConfig.from_yaml(tmp_path / "round.yaml")
