"""Datasets laid out otherwise than YAM: `--cameras` maps the model's cameras to the dataset's, and a
missing camera or a state/action of the wrong width is refused by the driver, before Ray Train starts."""

from __future__ import annotations

import dataclasses

import pytest

from jobs import train_policy, training
from recap_ray.train import loop, run_record, samples
from tests.train.conftest import make_train_dataset

ALOHA = ("observation.images.cam_high", "observation.images.cam_left_wrist", "observation.images.cam_right_wrist")
ALOHA_MAP = ("base=observation.images.cam_high", "wrist=observation.images.cam_left_wrist",
             "right_wrist=observation.images.cam_right_wrist")  # fmt: skip


@pytest.fixture(scope="module")
def aloha_dataset(tmp_path_factory: pytest.TempPathFactory):
    """The tiny training dataset with openpi's Aloha camera names."""
    return make_train_dataset(tmp_path_factory.mktemp("aloha") / "tiny", cameras=ALOHA)


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the driver gets as far as starting Ray."""

    def connect() -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(training.cli, "connect_ray", connect)


def _config(kind, tmp_path, dataset, tokenizer, **kw):
    base = dict(dataset=dataset, config="value_tiny" if kind == "value" else "pi06_tiny", run_dir=str(tmp_path / "run"),
                tokenizer=str(tokenizer), num_steps=2, batch_size=4, log_interval=1, loader_threads=1)  # fmt: skip
    return (training.Config if kind == "value" else train_policy.Config)(**{**base, **kw})


@pytest.mark.parametrize("kind", ["value", "policy"])
def test_trains_on_mapped_cameras(kind, tmp_path, aloha_dataset, sentencepiece_model):
    config = _config(kind, tmp_path, aloha_dataset, sentencepiece_model, cameras=ALOHA_MAP)
    job = training.make_job(config, kind, "fp")
    loop.check_dataset(job, loop.make_task(job))
    metrics = loop.train(dataclasses.replace(job, async_save=False, prefetch=2))
    assert metrics["step"] == 2
    record = run_record.read(config.run_dir)
    roles = ("base", "wrist", "right_wrist") if kind == "policy" else ("base", "wrist")  # value_tiny: no right wrist
    assert (record["status"], record["cameras"]) == ("finished", dict(zip(roles, ALOHA)))

    def resume(*cameras):
        resumed = dataclasses.replace(config, cameras=cameras, resume=True)
        job = training.make_job(resumed, kind, "fp")
        training.prepare_run_dir(resumed, kind, "fp", loop.make_task(job).run_cameras())

    if kind == "value":  # a camera the value config does not read is not part of its run
        resume(*ALOHA_MAP[:2], "right_wrist=none")
    with pytest.raises(ValueError, match=r"cannot resume, the run differs: cameras was"):
        resume("base=observation.images.cam_left_wrist", *ALOHA_MAP[1:])


@pytest.mark.parametrize("kind", ["value", "policy"])
def test_driver_refuses_unmapped_cameras(kind, tmp_path, aloha_dataset, sentencepiece_model, no_ray):
    config = _config(kind, tmp_path, aloha_dataset, sentencepiece_model)
    with pytest.raises(samples.DatasetMismatch) as err:
        training.run(config, kind)
    message = str(err.value)
    assert str(aloha_dataset) in message and "observation.images.head_camera" in message and "--cameras" in message
    assert all(cam in message for cam in ALOHA), message
    assert not (tmp_path / "run").exists()


def test_masked_wrist_is_allowed_but_base_is_required(tmp_path, aloha_dataset, sentencepiece_model, no_ray):
    job = training.make_job(_config("policy", tmp_path, aloha_dataset, sentencepiece_model,
                                    cameras=("base=observation.images.cam_high", "wrist=none", "right_wrist=none")), "policy", "fp")  # fmt: skip
    assert loop.make_task(job).needs().cameras == {"cam_high": "observation.images.cam_high"}
    with pytest.raises(ValueError, match="cam_high"):
        loop.make_task(dataclasses.replace(job, cameras=(("base", None),))).needs()
    with pytest.raises(ValueError, match="unknown camera roles"):
        training.parse_cameras(("head=observation.images.cam_high",))
    with pytest.raises(ValueError, match="ROLE=KEY"):
        training.parse_cameras(("observation.images.cam_high",))


def test_driver_refuses_a_wrong_state_width(tmp_path, sentencepiece_model, no_ray):
    dataset = make_train_dataset(tmp_path / "six", width=6)
    with pytest.raises(samples.DatasetMismatch) as err:
        training.run(_config("policy", tmp_path, dataset, sentencepiece_model), "policy")
    message = str(err.value)
    assert all(s in message for s in (str(dataset), "'observation.state'", "shape [6]", "pi06_tiny", "width 14 to 32")), message  # fmt: skip
    wide = make_train_dataset(tmp_path / "sixteen", width=16)  # 14 joints + 2 base velocities: within the padded 32
    job = training.make_job(_config("policy", tmp_path, wide, sentencepiece_model), "policy", "fp")
    loop.check_dataset(job, loop.make_task(job))
