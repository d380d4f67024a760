"""Training batches: order, per-process slices, resume, sample contents, prefetch errors and shutdown."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recap_ray import trossen
from recap_ray.configs import policy as policy_configs
from recap_ray.configs import value as value_configs
from recap_ray.data import dataset as dataset_mod
from recap_ray.data import norm_stats, video
from recap_ray.models import tokenizer, value_preprocess, value_tokenizer
from recap_ray.train import batches, samples
from tests.train.conftest import LENGTHS, TASKS, adv_ind, make_train_dataset, state

ALL_FRAMES = [(ep, t) for ep, n in enumerate(LENGTHS) for t in range(n)]
JOINTS = np.array([True] * 6 + [False] + [True] * 6 + [False])
# Quantile stats mapping [0, 400] onto [-1, 1] (state and action values of the dataset lie inside).
STATS = {k: norm_stats.NormStats(mean=np.zeros(14), std=np.ones(14), q01=np.zeros(14), q99=np.full(14, 400.0))
         for k in ("state", "actions")}  # fmt: skip
VALUE = value_configs.VALUE_TINY
# spec value_model.md §8: the head camera is the base, the first wrist camera (left) is `wrist_0_rgb`
PISTAR_VALUE_CAMERAS = {
    "base_0_rgb": "observation.images.head_camera",
    "wrist_0_rgb": "observation.images.left_wrist_camera",
}


def _norm(x: np.ndarray) -> np.ndarray:
    """openpi's quantile normalisation under STATS, (x - q01) / (q99 - q01 + 1e-6) * 2 - 1, in float64 as openpi
    (the state is discretised into the prompt before it is padded to float32)."""
    return (np.asarray(x, np.float64) - 0.0) / (400.0 + 1e-6) * 2 - 1


def _policy_config(horizon: int, dropout: bool) -> policy_configs.PolicyConfig:
    model = dataclasses.replace(policy_configs.TINY_MODEL, action_horizon=horizon)
    return dataclasses.replace(policy_configs.PI06_TINY, model=model, adv_ind_dropout=dropout)


class Probe:
    """A maker that decodes nothing: each sample says where it came from."""

    video_keys: tuple[str, ...] = ()
    column_keys: tuple[str, ...] = ()

    def __call__(self, key: samples.SampleKey, images: Any, columns: Any) -> dict[str, Any]:
        return {"episode": key.episode, "frame": key.frame, "position": key.position}


class Failing(Probe):
    def __call__(self, key: samples.SampleKey, images: Any, columns: Any) -> dict[str, Any]:
        if (key.episode, key.frame) == (2, 4):
            raise ValueError("boom")
        return super().__call__(key, images, columns)


@pytest.fixture(scope="module")
def value_tok(sentencepiece_model: Path) -> value_tokenizer.ValueTokenizer:
    return value_tokenizer.ValueTokenizer(sentencepiece_model, VALUE.max_token_len)


@pytest.fixture(scope="module")
def prompt_tok(sentencepiece_model: Path) -> tokenizer.PromptTokenizer:
    return tokenizer.PromptTokenizer(sentencepiece_model, policy_configs.TINY_MODEL.max_token_len)


def _take(loader: batches.BatchLoader, n: int) -> list[dict[str, Any]]:
    with loader:
        return [next(loader) for _ in range(n)]


def _concat(trees: list[Any]) -> Any:
    if isinstance(trees[0], dict):
        return {k: _concat([t[k] for t in trees]) for k in trees[0]}
    return np.concatenate(trees)


def _assert_tree_equal(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert sorted(a) == sorted(b)
        for k in a:
            _assert_tree_equal(a[k], b[k])
    else:
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def _leading(tree: Any) -> set[int]:
    if isinstance(tree, dict):
        return set().union(*(_leading(v) for v in tree.values()))
    return {tree.shape[0]}


def _loader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("recap-batches")]


def test_every_frame_once_per_epoch_epochs_differ_remainder_dropped(train_dataset):
    loader = batches.BatchLoader(train_dataset, Probe(), global_batch=4, seed=3, num_epochs=2, threads=2, prefetch=3)
    with loader:
        got = list(loader)
        assert loader.position.epoch == 2 and loader.position.batch == 0
    assert len(got) == 12  # 24 frames / 4, two epochs
    orders = []
    for e in range(2):
        epoch = _concat(got[6 * e : 6 * e + 6])
        assert sorted(zip(epoch["episode"].tolist(), epoch["frame"].tolist())) == ALL_FRAMES
        np.testing.assert_array_equal(epoch["position"], np.arange(24))
        orders.append(list(zip(epoch["episode"].tolist(), epoch["frame"].tolist())))
    assert orders[0] != orders[1]
    # global batch 5: 4 batches an epoch, 20 distinct frames, the rest dropped
    with batches.BatchLoader(train_dataset, Probe(), global_batch=5, seed=3, num_epochs=1, threads=0) as loader:
        epoch = _concat(list(loader))
    assert len(set(zip(epoch["episode"].tolist(), epoch["frame"].tolist()))) == 20


@pytest.mark.parametrize("kind", ["value", "policy"])
def test_two_process_slices_concatenate_to_the_one_process_batch(train_dataset, value_tok, prompt_tok, kind):
    maker = (samples.ValueSamples(VALUE, value_tok) if kind == "value"
             else samples.PolicySamples(_policy_config(4, dropout=True), STATS, prompt_tok))  # fmt: skip
    common = {"global_batch": 4, "seed": 11, "threads": 2, "prefetch": 2}
    whole = _take(batches.BatchLoader(train_dataset, maker, **common), 2)
    parts = [_take(batches.BatchLoader(train_dataset, maker, process_index=p, process_count=2, **common), 2)
             for p in range(2)]  # fmt: skip
    for b in range(2):
        assert _leading(parts[0][b]) == {2} and _leading(whole[b]) == {4}
        _assert_tree_equal(_concat([parts[0][b], parts[1][b]]), whole[b])


@pytest.mark.parametrize("kind", ["value", "policy"])
def test_resume_from_a_saved_position_equals_the_uninterrupted_stream(train_dataset, value_tok, prompt_tok, kind):
    maker = (samples.ValueSamples(VALUE, value_tok) if kind == "value"
             else samples.PolicySamples(_policy_config(4, dropout=True), STATS, prompt_tok))  # fmt: skip
    common = {"global_batch": 4, "seed": 7}
    full = _take(batches.BatchLoader(train_dataset, maker, threads=2, **common), 8)  # crosses into epoch 1
    with batches.BatchLoader(train_dataset, maker, threads=2, prefetch=5, **common) as loader:
        for _ in range(4):
            next(loader)
        saved = json.loads(json.dumps(loader.position.to_dict()))
    assert (saved["epoch"], saved["batch"]) == (0, 4)
    resumed = _take(batches.BatchLoader(train_dataset, maker, threads=0, position=saved, **common), 4)
    for a, b in zip(resumed, full[4:]):
        _assert_tree_equal(a, b)
    # elastic resize: two processes resume the same position and together give the same batches
    halves = [_take(batches.BatchLoader(train_dataset, maker, threads=1, position=batches.Position.from_dict(saved),
                                        process_index=p, process_count=2, **common), 4) for p in range(2)]  # fmt: skip
    for b in range(4):
        _assert_tree_equal(_concat([halves[0][b], halves[1][b]]), full[4 + b])


@pytest.mark.parametrize("adapt_to_pi", [False, True], ids=["yam", "trossen"])
def test_policy_actions_state_and_prompt_come_from_the_frame(train_dataset, prompt_tok, adapt_to_pi):
    horizon = 4
    config = dataclasses.replace(_policy_config(horizon, dropout=False), adapt_to_pi=adapt_to_pi)
    maker = samples.PolicySamples(config, STATS, prompt_tok)
    with batches.BatchLoader(train_dataset, maker, global_batch=24, seed=0, threads=0) as loader:
        keys = loader.keys(0, 0)
        batch = next(loader)
    s_img = policy_configs.TINY_MODEL.image_size
    assert sorted(batch) == ["actions", "image_masks", "images", "state", "tokenized_prompt", "tokenized_prompt_mask"]
    for cam in policy_configs.TINY_MODEL.image_keys:
        assert batch["images"][cam].shape == (24, s_img, s_img, 3) and batch["images"][cam].dtype == np.uint8
        assert batch["image_masks"][cam].dtype == bool and batch["image_masks"][cam].all()
    assert batch["actions"].shape == (24, horizon, 32) and batch["state"].shape == (24, 32)
    padded = 0
    for i, k in enumerate(keys):
        n = LENGTHS[k.episode]
        s = state(k.episode, n)
        rows = [min(r, n - 1) for r in range(k.frame, k.frame + horizon)]  # lerobot clamps to the episode end
        padded += rows[-1] != k.frame + horizon - 1
        chunk = s[rows] + 0.5
        if adapt_to_pi:  # both into pi0's space before the delta (openpi's AlohaInputs, then DeltaActions)
            s, chunk = trossen.state_to_pi(s), trossen.actions_to_pi(chunk)
        chunk[:, JOINTS] -= s[k.frame, JOINTS]  # joints relative to the state, grippers absolute
        want_actions = np.zeros((horizon, 32), np.float32)
        want_actions[:, :14] = _norm(chunk)
        np.testing.assert_allclose(batch["actions"][i], want_actions, atol=1e-5)
        norm_state = _norm(s[k.frame])
        np.testing.assert_allclose(batch["state"][i, :14], norm_state, atol=1e-5)
        assert not batch["state"][i, 14:].any()
        want_tokens, _ = prompt_tok.tokenize(TASKS[k.episode % 2], norm_state, adv_ind(k.episode, k.frame))
        np.testing.assert_array_equal(batch["tokenized_prompt"][i], want_tokens)
        text = prompt_tok.decode(batch["tokenized_prompt"][i])
        assert f"Advantage: {adv_ind(k.episode, k.frame)};" in text and text.startswith(f"Task: {TASKS[k.episode % 2]}")
    assert 0 < padded < 24  # both padded (episode end) and full chunks were checked
    with dataset_mod.open(train_dataset) as ds:  # the images are the frame's own, resized (scaled on the device)
        k = keys[0]
        head = ds.frames(k.episode, "observation.images.head_camera", [k.frame])[0]
    want = value_preprocess.resize_with_pad(head, s_img, s_img)
    np.testing.assert_array_equal(batch["images"]["base_0_rgb"][0], want)


def test_adv_ind_dropout_is_drawn_per_sample_from_the_seed(train_dataset, prompt_tok):
    config = _policy_config(4, dropout=True)
    maker = samples.PolicySamples(config, STATS, prompt_tok)
    dropped = {}
    for seed, threads in ((5, 2), (5, 0), (6, 0)):
        with batches.BatchLoader(train_dataset, maker, global_batch=24, seed=seed, threads=threads) as loader:
            keys = loader.keys(0, 0)
            tokens = next(loader)["tokenized_prompt"]
        pattern = []
        for i, k in enumerate(keys):
            drop = k.rng(samples.DROPOUT_STREAM).random() < config.adv_ind_dropout_prob
            norm_state = _norm(state(k.episode, LENGTHS[k.episode])[k.frame])
            clause = None if drop else adv_ind(k.episode, k.frame)
            np.testing.assert_array_equal(tokens[i], prompt_tok.tokenize(TASKS[k.episode % 2], norm_state, clause)[0])
            assert ("Advantage:" in prompt_tok.decode(tokens[i])) is not drop
            pattern.append(((k.episode, k.frame), drop))
        dropped[(seed, threads)] = sorted(pattern)
        assert 0 < sum(d for _, d in pattern) < 24
    assert dropped[(5, 2)] == dropped[(5, 0)] != dropped[(6, 0)]


def test_value_batch_holds_the_frame_images_prompt_and_label(train_dataset, value_tok):
    maker = samples.ValueSamples(VALUE, value_tok)
    with batches.BatchLoader(train_dataset, maker, global_batch=24, seed=0, threads=2) as loader:
        keys = loader.keys(0, 0)
        batch = next(loader)
    size, length = VALUE.image_size, VALUE.max_token_len
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "images": ((24, 2, size, size, 3), np.uint8),  # mapped to [-1, 1] on the device
        "image_masks": ((24, 2), np.bool_),
        "tokens": ((24, length), np.int32),
        "token_mask": ((24, length), np.bool_),
        "value_label": ((24,), np.float32),
    }
    assert batch["image_masks"].all()
    with dataset_mod.open(train_dataset) as ds:
        for i, k in enumerate(keys):
            n = LENGTHS[k.episode]
            want_label = -(n - 1 - k.frame) / n if k.episode % 2 == 0 else -1.0  # success: -(T-1-t)/T
            assert batch["value_label"][i] == pytest.approx(want_label, abs=1e-6)
            np.testing.assert_array_equal(batch["tokens"][i], value_tok.tokenize_one(TASKS[k.episode % 2])[0])
            frames = {cam: ds.frames(k.episode, key, [k.frame]) for cam, key in PISTAR_VALUE_CAMERAS.items()}
            want_images, _ = value_preprocess.camera_batch_uint8(frames, VALUE.cameras, size)
            np.testing.assert_array_equal(batch["images"][i], want_images[0])


def test_bad_positions_and_process_counts_are_refused(train_dataset, tmp_path):
    with batches.BatchLoader(train_dataset, Probe(), global_batch=4, seed=1, threads=0) as loader:
        next(loader)
        saved = loader.position.to_dict()
    other = make_train_dataset(tmp_path / "other", version="v2.1")
    cases = [
        ({"root": other}, "dataset_fingerprint"),
        ({"seed": 2}, "seed"),
        ({"global_batch": 6}, "global_batch"),
        ({"episodes": [0, 1, 2]}, "sample_index"),
    ]
    for change, field in cases:
        kw = {"root": train_dataset, "global_batch": 4, "seed": 1, **change}
        with pytest.raises(batches.PositionError, match=field):
            batches.BatchLoader(kw.pop("root"), Probe(), position=saved, threads=0, **kw)
    for broken, message in (({**saved, "batch": 6}, "outside"), ({**saved, "epoch": "0"}, "epoch"),
                            ({k: v for k, v in saved.items() if k != "seed"}, "missing keys")):  # fmt: skip
        with pytest.raises(batches.PositionError, match=message):
            batches.BatchLoader(train_dataset, Probe(), global_batch=4, seed=1, position=broken, threads=0)
    with pytest.raises(ValueError, match="does not divide by 3 processes"):
        batches.BatchLoader(train_dataset, Probe(), global_batch=4, seed=1, process_count=3)
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        batches.BatchLoader(train_dataset, Probe(), global_batch=32, seed=1)


def test_prefetch_errors_name_the_episode_and_frame_and_threads_end(train_dataset):
    loader = batches.BatchLoader(train_dataset, Failing(), global_batch=4, seed=0, num_epochs=1, threads=2, prefetch=4)
    with pytest.raises(samples.SampleError, match=r"episode 2, frame 4: boom"):
        list(loader)
    assert not _loader_threads()
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)


def test_decode_errors_name_the_episode_and_frame(train_dataset, value_tok, monkeypatch):
    def broken(self: dataset_mod.Dataset, episode: int, key: str, idx: Any = None) -> np.ndarray:
        raise video.VideoError("corrupt video data")

    monkeypatch.setattr(dataset_mod.Dataset, "frames", broken)
    maker = samples.ValueSamples(VALUE, value_tok)
    with batches.BatchLoader(train_dataset, maker, global_batch=4, seed=0, threads=1) as loader:
        k = loader.keys(0, 0)[0]
        with pytest.raises(samples.SampleError, match=rf"episode {k.episode}, frames? .*{k.frame}.*corrupt video data"):
            next(loader)


def test_close_mid_stream_joins_every_thread(train_dataset):
    loader = batches.BatchLoader(train_dataset, Probe(), global_batch=4, seed=0, threads=3, prefetch=6)
    next(loader)
    assert _loader_threads()
    loader.close()
    loader.close()
    assert not _loader_threads()


def test_batches_feed_the_models_losses(train_dataset, value_tok, prompt_tok):
    """The value batch is ValueModel.loss's arguments plus its target; the policy batch is Pi05's
    observation plus actions (traced with eval_shape: shapes and dtypes checked, nothing computed)."""
    import jax
    from flax import nnx

    def traced_loss(model: nnx.Module, fn: Any, *args: Any) -> jax.ShapeDtypeStruct:
        graphdef, params = nnx.split(model)
        return jax.eval_shape(lambda p, *a: fn(nnx.merge(graphdef, p), *a), params, *args)

    with batches.BatchLoader(train_dataset, samples.ValueSamples(VALUE, value_tok),
                             global_batch=2, seed=0, threads=0) as loader:  # fmt: skip
        vb = next(loader)
    out = traced_loss(VALUE.abstract_model(), lambda m, b: m.loss(b["images"], b["image_masks"], b["tokens"],
                                                                   b["token_mask"], b["value_label"]), vb)  # fmt: skip
    assert out.shape == ()
    config = _policy_config(4, dropout=True)
    with batches.BatchLoader(train_dataset, samples.PolicySamples(config, STATS, prompt_tok),
                             global_batch=2, seed=0, threads=0) as loader:  # fmt: skip
        pb = next(loader)
    actions = pb.pop("actions")
    loss_fn = lambda m, o, a: m.compute_loss(jax.random.key(0), o, a)  # noqa: E731
    out = traced_loss(config.model.abstract_model(), loss_fn, pb, actions)
    assert out.shape == ()
