"""Per-sample assembly for training: which frames exist, and how one frame becomes a model sample.

A sample is frame t of one episode. `SampleIndex` lists them; `EpisodeColumns` holds the non-video
columns of the selected episodes (read once); a maker turns the frame's decoded camera images and
its episode's columns into the dict a model consumes: `ValueSamples` (value model) or
`PolicySamples` (pi0.6, through `transforms.policy_inputs`). `make_batch` decodes the frames of a
list of samples (one `Dataset.frames` call per episode and camera) and stacks the samples.

Per-sample randomness (adv_ind dropout) comes from `SampleKey`: (seed, epoch, the
sample's position in the epoch's global order), so it does not depend on threads, process count
or resume.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from recap_ray import transforms
from recap_ray.configs import policy as policy_configs
from recap_ray.data import dataset as dataset_mod
from recap_ray.data import features as feats
from recap_ray.data import meta as meta_mod
from recap_ray.data import norm_stats as norm_stats_mod
from recap_ray.data import recap_columns
from recap_ray.models import tokenizer as tokenizer_mod
from recap_ray.models import value_config, value_preprocess, value_tokenizer

Sample = dict[str, Any]
Arrays = Mapping[str, np.ndarray]
# Independent random streams drawn from one SampleKey / one (seed, epoch).
ORDER_STREAM, DROPOUT_STREAM = 0, 1
# Per-frame task text, added to every episode's columns.
TASK_KEY = "task"
# Camera roles -> dataset cameras, YAM's by default. The roles are jobs.relabel's vocabulary (--base-camera,
# --wrist-camera, --right-wrist-camera; `--cameras ROLE=KEY` of the training jobs); None: not fed (masked).
YAM_CAMERA_ROLES: dict[str, str | None] = {
    "base": "observation.images.head_camera",
    "wrist": "observation.images.left_wrist_camera",
    "right_wrist": "observation.images.right_wrist_camera",
}
# Role -> value-model camera: pistar's ValueInputs (the left wrist is `wrist_0_rgb`; labelling adds the right).
VALUE_SLOTS: dict[str, str] = {"base": "base_0_rgb", "wrist": "wrist_0_rgb", "right_wrist": "right_wrist_0_rgb"}
# Role -> the policy's Aloha camera (openpi's names, also the served ones).
POLICY_SLOTS: dict[str, str] = {"base": "cam_high", "wrist": "cam_left_wrist", "right_wrist": "cam_right_wrist"}
# Least width of observation.state and action the policy configs take: Aloha's [left 6, grip, right 6, grip] (the delta mask).
POLICY_WIDTH = len(transforms.ALOHA_DELTA_MASK)


def camera_roles(overrides: Mapping[str, str | None] | Sequence[tuple[str, str | None]] = ()) -> dict[str, str | None]:
    """YAM_CAMERA_ROLES with the roles in `overrides` (role -> dataset camera, None: masked) replaced."""
    overrides = dict(overrides)
    unknown = sorted(set(overrides) - set(YAM_CAMERA_ROLES))
    if unknown:
        raise ValueError(f"unknown camera roles {unknown}; roles are {list(YAM_CAMERA_ROLES)}")
    return {**YAM_CAMERA_ROLES, **overrides}


def slot_cameras(roles: Mapping[str, str | None], slots: Mapping[str, str]) -> dict[str, str]:
    """Model camera -> dataset camera for the roles that are fed."""
    return {slots[role]: key for role, key in camera_roles(roles).items() if key is not None}


class DatasetMismatch(ValueError):
    """The dataset lacks what the config needs (a camera, a column, a width); the message names both."""


@dataclasses.dataclass(frozen=True)
class Needs:
    """What a sample maker reads: model camera -> dataset camera, and columns with their (least, most) width (None: any)."""

    cameras: Mapping[str, str]
    columns: Mapping[str, tuple[int, int] | None]
    width_hint: str = ""  # appended to a width mismatch: what layout the config reads, what to do

    def check(self, root: Any, features: Mapping[str, dict], config: str) -> None:
        """Raise `DatasetMismatch` naming the dataset `root`, the feature and what config `config` expects."""
        cameras = feats.visual_keys(dict(features))
        missing = {slot: key for slot, key in self.cameras.items() if key not in cameras}
        if missing:
            wanted = ", ".join(f"{slot} <- {key}" for slot, key in missing.items())
            raise DatasetMismatch(
                f"{root}: config {config} reads cameras {wanted}, not in the dataset; its cameras are {cameras}. "
                "Map them with --cameras ROLE=KEY (a round's YAML: cameras: [ROLE=KEY, ...]; roles base, wrist, right_wrist; "
                "KEY none: masked)"
            )
        for key, width in self.columns.items():
            if key not in features:
                hint = (f"; add the RECAP columns with `python -m jobs.prepare --input {root} --output NEW_DIR`"
                        if key in recap_columns.COLUMNS else "")  # fmt: skip
                raise DatasetMismatch(f"{root}: config {config} needs feature {key!r}, not in the dataset; its features are {sorted(features)}{hint}")  # fmt: skip
            shape = list(features[key].get("shape") or [])
            if width is not None and not (len(shape) == 1 and width[0] <= shape[0] <= width[1]):
                raise DatasetMismatch(
                    f"{root}: feature {key!r} has shape {shape}; config {config} expects a vector of width {width[0]} to {width[1]}"
                    f"{self.width_hint}"
                )  # fmt: skip


class SampleError(RuntimeError):
    """Making a sample failed; the message names the episode and frame(s)."""


@dataclasses.dataclass(frozen=True)
class SampleKey:
    """One sample: where it is in the data, and where in the run's order (seeds its randomness)."""

    episode: int  # episode index in the dataset
    frame: int  # frame index within the episode
    seed: int  # run seed
    epoch: int  # epoch of the order
    position: int  # place in the epoch's global order

    def seed_sequence(self, stream: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.seed, self.epoch, self.position, stream])

    def rng(self, stream: int) -> np.random.Generator:
        """numpy generator of this sample's `stream`."""
        return np.random.default_rng(self.seed_sequence(stream))


@dataclasses.dataclass(frozen=True)
class SampleIndex:
    """Every (episode, frame) of the selected episodes, episode-major."""

    episodes: np.ndarray  # int64 (N,)
    frames: np.ndarray  # int64 (N,)

    @classmethod
    def build(cls, meta: meta_mod.Meta, episodes: Sequence[int] | None = None) -> SampleIndex:
        """All frames of `episodes` (all episodes when None; given ones sorted, duplicates refused)."""
        selected = range(len(meta.episodes)) if episodes is None else sorted(int(e) for e in episodes)
        if len(set(selected)) != len(selected):
            raise ValueError(f"sample index: episodes {list(episodes or [])} hold duplicates")
        lengths = [meta.episode(e).length for e in selected]
        eps = np.repeat(np.asarray(selected, np.int64), lengths)
        frames = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]) if lengths else eps
        return cls(eps, frames)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def episode_ids(self) -> list[int]:
        return sorted(set(self.episodes.tolist()))

    def digest(self) -> str:
        """Short hash of the (episode, frame) list, to recognise the same selection on resume."""
        h = hashlib.sha256(self.episodes.astype("<i8").tobytes() + self.frames.astype("<i8").tobytes())
        return h.hexdigest()[:16]


class EpisodeColumns:
    """The non-video columns a maker needs, plus the per-frame task text, read once per episode."""

    def __init__(self, ds: dataset_mod.Dataset, keys: Sequence[str], episodes: Sequence[int]):
        self._data: dict[int, dict[str, np.ndarray]] = {}
        tasks = np.asarray(ds.meta.tasks, dtype=object)
        for ep in episodes:
            table = ds.episode_table(ep)
            cols = {k: feats.column_to_numpy(table.column(k)) for k in keys}
            cols[TASK_KEY] = tasks[feats.column_to_numpy(table.column("task_index"))]
            self._data[ep] = cols

    def get(self, episode: int) -> dict[str, np.ndarray]:
        return self._data[episode]


class SampleMaker(Protocol):
    """Turns one frame's camera images and its episode's columns into a model sample."""

    video_keys: tuple[str, ...]  # dataset cameras decoded for every sample
    column_keys: tuple[str, ...]  # non-video columns read per episode

    def __call__(self, key: SampleKey, images: Arrays, columns: Arrays) -> Sample: ...


class ValueSamples:
    """Value-model samples (what `ValueModel.loss` takes) plus the `value_label` target.

    Sample: images uint8 (C, S, S, 3) (cameras `config.cameras`, resized with pad; an unfed one black with mask
    False; mapped to [-1, 1] and augmented as pistar's on the device, in the training step),
    image_masks bool (C,), tokens int32 (L,) and token_mask bool (L,) of the episode task (pistar's
    value prompt), value_label float32 (). `cameras`: role -> dataset camera (see `camera_roles`).
    """

    column_keys = ("value_label",)

    def __init__(
        self,
        config: value_config.ValueModelConfig,
        tokenizer: value_tokenizer.ValueTokenizer,
        *,
        cameras: Mapping[str, str | None] = YAM_CAMERA_ROLES,
    ):
        if tokenizer.max_len != config.max_token_len:
            raise ValueError(
                f"ValueSamples: tokenizer max_len {tokenizer.max_len} != config max_token_len {config.max_token_len}"
            )
        self.config = config
        self.camera_map = dict(self.requirements(config, cameras).cameras)
        self.video_keys = tuple(self.camera_map.values())
        self._tokenize = functools.lru_cache(maxsize=4096)(tokenizer.tokenize_one)

    @classmethod
    def requirements(cls, config: value_config.ValueModelConfig, cameras: Mapping[str, str | None]) -> Needs:
        """The config's cameras that `cameras` feeds (at least one) and the value_label column."""
        fed = {slot: key for slot, key in slot_cameras(cameras, VALUE_SLOTS).items() if slot in config.cameras}
        if not fed:
            raise ValueError(f"value config {config.name}: cameras {dict(cameras)} feed none of its cameras {list(config.cameras)}")  # fmt: skip
        return Needs(cameras=fed, columns={k: None for k in cls.column_keys})

    def __call__(self, key: SampleKey, images: Arrays, columns: Arrays) -> Sample:
        cams = self.config.cameras
        frames = {c: images[self.camera_map[c]][None] for c in cams if c in self.camera_map}
        resized, masks = value_preprocess.camera_batch_uint8(frames, cams, self.config.image_size)
        tokens, token_mask = self._tokenize(str(columns[TASK_KEY][key.frame]))
        return {
            "images": resized[0],
            "image_masks": masks[0],
            "tokens": tokens,
            "token_mask": token_mask,
            "value_label": np.float32(np.asarray(columns["value_label"][key.frame]).reshape(())),
        }


class PolicySamples:
    """pi0.6 policy samples: the raw dataset sample through `transforms.policy_inputs`.

    Raw sample: the fed cameras at t (`cameras`: role -> dataset camera, see `camera_roles`; cam_high
    is required, an unfed wrist camera is black with mask False), observation.state at t, action
    rows t..t+H-1 (past the episode end the last action repeats, as lerobot's delta_timestamps
    clamping), prompt = the frame's task, adv_ind at t (pistar models only). The advantage clause is
    dropped with the config's probability from the sample's own generator.
    """

    def __init__(
        self,
        config: policy_configs.PolicyConfig,
        norm_stats: Mapping[str, norm_stats_mod.NormStats],
        tokenizer: tokenizer_mod.PromptTokenizer,
        *,
        cameras: Mapping[str, str | None] = YAM_CAMERA_ROLES,
    ):
        self.config, self.norm_stats, self.tokenizer = config, norm_stats, tokenizer
        needs = self.requirements(config, cameras)
        self.camera_map = dict(needs.cameras)
        self.video_keys = tuple(self.camera_map.values())
        self.column_keys = tuple(needs.columns)
        self.dropout = config.adv_ind_dropout_prob if config.adv_ind_dropout else 0.0

    def __call__(self, key: SampleKey, images: Arrays, columns: Arrays) -> Sample:
        t, actions = key.frame, columns["action"]
        rows = np.minimum(np.arange(t, t + self.config.model.action_horizon), len(actions) - 1)
        raw: dict[str, Any] = {k: images[k] for k in self.video_keys}
        raw["observation.state"], raw["action"] = columns["observation.state"][t], actions[rows]
        raw["prompt"] = columns[TASK_KEY][t]
        if "adv_ind" in columns:
            raw["adv_ind"] = columns["adv_ind"][t]
        pipeline = transforms.policy_inputs(
            self.config.model,
            self.norm_stats,
            self.tokenizer,
            default_prompt=self.config.default_prompt,
            adv_ind_dropout=self.dropout,
            rng=key.rng(DROPOUT_STREAM) if self.dropout else None,
            delta_actions=self.config.use_delta_joint_actions,
            cameras=self.camera_map,
            adapt_to_pi=self.config.adapt_to_pi,
        )
        return pipeline(raw)

    @staticmethod
    def requirements(config: policy_configs.PolicyConfig, cameras: Mapping[str, str | None]) -> Needs:
        """The fed Aloha cameras (cam_high among them); state and action at least Aloha's width (its delta mask) and at
        most the model's padded width (exactly Aloha's with `adapt_to_pi`); adv_ind for pistar models."""
        fed = slot_cameras(cameras, POLICY_SLOTS)
        if "cam_high" not in fed:
            raise ValueError(f"policy config {config.name}: the base camera (cam_high) must be fed; cameras {dict(cameras)}")  # fmt: skip
        width = (POLICY_WIDTH, POLICY_WIDTH if config.adapt_to_pi else config.model.action_dim)
        columns: dict[str, tuple[int, int] | None] = {"observation.state": width, "action": width}
        if config.model.pistar:
            columns["adv_ind"] = None
        hint = (f"; its first {POLICY_WIDTH} dims are Aloha's [left arm 6, gripper, right arm 6, gripper] (the delta "
                "mask): write the robot's vectors in that layout (a smaller robot's zero-padded)")  # fmt: skip
        return Needs(cameras=fed, columns=columns, width_hint=hint)


def stack(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sample dicts (nested dicts allowed) -> one dict of arrays with a leading batch axis."""
    out: dict[str, Any] = {}
    for k, first in samples[0].items():
        parts = [s[k] for s in samples]
        out[k] = stack(parts) if isinstance(first, Mapping) else np.stack([np.asarray(p) for p in parts])
    return out


def make_batch(
    ds: dataset_mod.Dataset, columns: EpisodeColumns, maker: SampleMaker, keys: Sequence[SampleKey]
) -> dict[str, Any]:
    """Decode the frames of `keys` (one `frames` call per episode and camera) and stack their samples."""
    by_episode: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        by_episode.setdefault(k.episode, []).append(i)
    images: list[dict[str, np.ndarray]] = [{} for _ in keys]
    for ep, members in by_episode.items():
        frames = [keys[i].frame for i in members]
        for video_key in maker.video_keys:
            try:
                decoded = ds.frames(ep, video_key, frames)
            except Exception as err:
                where = f"frame {frames[0]}" if len(frames) == 1 else f"frames {frames}"
                raise SampleError(f"{ds.root}: episode {ep}, {where}, {video_key}: {err}") from err
            for i, image in zip(members, decoded):
                images[i][video_key] = image
    samples = []
    for k, sample_images in zip(keys, images):
        try:
            samples.append(maker(k, sample_images, columns.get(k.episode)))
        except Exception as err:
            raise SampleError(f"{ds.root}: episode {k.episode}, frame {k.frame}: {err}") from err
    return stack(samples)
