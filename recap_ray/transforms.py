"""Policy input/output transforms: small frozen dataclasses, one sample dict in, one dict out.

Training inputs: RepackYam -> AlohaInputs -> DeltaActions -> Normalize -> InjectDefaultPrompt ->
ResizeImages -> TokenizePrompt -> PadStatesAndActions -> ModelInputs. Serving skips the repack (clients
send `images/state/prompt/adv_ind`). Outputs: Unnormalize (state and actions, back from 32 dims on
the first len(q01) dims) -> AbsoluteActions -> AlohaOutputs (first 14 dims).

`adapt_to_pi` (openpi's Aloha default, for Trossen arms recorded in Aloha's own joint space): AlohaInputs
maps state and actions into the space pi0 models were trained in (joint signs flipped, the gripper's
linear position as an angle) and AlohaOutputs maps actions back; YAM data uses no conversion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from recap_ray import trossen
from recap_ray.models import pi05_config, tokenizer, value_preprocess

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]

# Aloha cameras (dataset side) -> model cameras, in the model's prefix order.
ALOHA_CAMERAS: dict[str, str] = {
    "cam_high": "base_0_rgb",
    "cam_left_wrist": "left_wrist_0_rgb",
    "cam_right_wrist": "right_wrist_0_rgb",
}
# YAM dataset columns -> Aloha-style keys (pi06_yam repack).
YAM_REPACK: dict[str, str] = {
    "images/cam_high": "observation.images.head_camera",
    "images/cam_left_wrist": "observation.images.left_wrist_camera",
    "images/cam_right_wrist": "observation.images.right_wrist_camera",
    "state": "observation.state",
    "actions": "action",
    "adv_ind": "adv_ind",
    "prompt": "prompt",
}
# 14-dim bimanual layout: [left joints 6, left gripper, right joints 6, right gripper].
ALOHA_DELTA_MASK: tuple[bool, ...] = (True,) * 6 + (False,) + (True,) * 6 + (False,)


@dataclasses.dataclass(frozen=True)
class Compose:
    """Apply transforms in order."""

    transforms: tuple[Transform, ...]

    def __call__(self, data: Sample) -> Sample:
        for t in self.transforms:
            data = t(data)
        return data


@dataclasses.dataclass(frozen=True)
class RepackYam:
    """Rename YAM dataset columns to Aloha keys ('a/b' keys nest); columns absent from the sample are skipped."""

    mapping: tuple[tuple[str, str], ...] = tuple(YAM_REPACK.items())

    def __call__(self, data: Sample) -> Sample:
        out: Sample = {}
        for new, old in self.mapping:
            if old in data:
                *parents, leaf = new.split("/")
                node = out
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = data[old]
        return out


def repack_mapping(cameras: Mapping[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """YAM_REPACK with its images taken from `cameras` (Aloha camera -> dataset camera) when given."""
    if cameras is None:
        return tuple(YAM_REPACK.items())
    rest = tuple((k, v) for k, v in YAM_REPACK.items() if not k.startswith("images/"))
    return tuple((f"images/{cam}", key) for cam, key in cameras.items()) + rest


def _to_hwc_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = np.transpose(image, (1, 2, 0))
    if np.issubdtype(image.dtype, np.floating):
        image = (255 * image).astype(np.uint8)
    return image


def _as_float(x: Any) -> np.ndarray:
    """A float array in its own precision (float32 for non-float input): as openpi, the state stays float64
    up to the discretised prompt when a client sends float64; PadStatesAndActions makes it float32."""
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AlohaInputs:
    """Aloha cameras -> model cameras (HWC uint8, missing ones black with mask False); state/actions as is,
    or into pi0's space with `adapt_to_pi`."""

    adapt_to_pi: bool = False  # Trossen joint/gripper conversion (openpi's Aloha default); off for YAM

    def __call__(self, data: Sample) -> Sample:
        images = data.get("images", {})
        unknown = set(images) - {*ALOHA_CAMERAS, "cam_low"}
        if unknown:
            raise ValueError(f"AlohaInputs: unknown cameras {sorted(unknown)}; expected {sorted(ALOHA_CAMERAS)}")
        if "cam_high" not in images:
            raise ValueError(f"AlohaInputs: cam_high is required; got cameras {sorted(images)}")
        base = _to_hwc_uint8(images["cam_high"])
        out_images, masks = {}, {}
        for src, dst in ALOHA_CAMERAS.items():
            present = src in images
            out_images[dst] = _to_hwc_uint8(images[src]) if present else np.zeros_like(base)
            masks[dst] = np.bool_(present)
        state = _as_float(data["state"])
        out = {"images": out_images, "image_masks": masks, "state": trossen.state_to_pi(state) if self.adapt_to_pi else state}
        for key in ("actions", "prompt", "adv_ind"):
            if key in data:
                out[key] = data[key]
        if self.adapt_to_pi and "actions" in out:
            out["actions"] = trossen.actions_to_pi(out["actions"])
        return out


@dataclasses.dataclass(frozen=True)
class AlohaOutputs:
    """Keep the robot's action dims (the model's are padded to 32); back to Aloha's space with `adapt_to_pi`."""

    action_dim: int = 14  # robot action width (Aloha/YAM: 14)
    adapt_to_pi: bool = False  # inverse Trossen conversion of the actions

    def __call__(self, data: Sample) -> Sample:
        actions = np.asarray(data["actions"])[..., : self.action_dim]
        return {**data, "actions": trossen.actions_from_pi(actions) if self.adapt_to_pi else actions}


@dataclasses.dataclass(frozen=True)
class DeltaActions:
    """actions[..., mask] -= state[mask] (joints relative, grippers absolute)."""

    mask: tuple[bool, ...] = ALOHA_DELTA_MASK  # dims made relative to the state

    def __call__(self, data: Sample) -> Sample:
        if "actions" not in data:
            return data
        m = np.asarray(self.mask)
        actions = np.array(data["actions"], np.float32, copy=True)
        actions[..., : m.size] -= np.where(m, np.asarray(data["state"])[..., : m.size], 0)[..., None, :]
        return {**data, "actions": actions}


@dataclasses.dataclass(frozen=True)
class AbsoluteActions:
    """Inverse of DeltaActions: actions[..., mask] += state[mask]."""

    mask: tuple[bool, ...] = ALOHA_DELTA_MASK  # dims made absolute again

    def __call__(self, data: Sample) -> Sample:
        m = np.asarray(self.mask)
        actions = np.array(data["actions"], np.float32, copy=True)
        actions[..., : m.size] += np.where(m, np.asarray(data["state"])[..., : m.size], 0)[..., None, :]
        return {**data, "actions": actions}


@dataclasses.dataclass(frozen=True)
class Normalize:
    """Quantile normalisation y = (x - q01) / (q99 - q01 + 1e-6) * 2 - 1 of `state` / `actions` (no clip).

    Computed in the promoted dtype of sample and stats, as openpi (float64 stats from norm_stats.json give
    float64): rounding y to float32 here would move values within ~1e-7 of a state-token bin edge into the
    next bin, so the prompt would differ from openpi's (tests/test_openpi_transforms_parity.py).
    """

    stats: Mapping[str, Any]  # key -> NormStats-like (fields q01, q99)

    def __call__(self, data: Sample) -> Sample:
        out = dict(data)
        for key, s in self.stats.items():
            if key in out:
                x = _as_float(out[key])
                q01, q99 = np.asarray(s.q01)[..., : x.shape[-1]], np.asarray(s.q99)[..., : x.shape[-1]]
                out[key] = (x - q01) / (q99 - q01 + 1e-6) * 2.0 - 1.0
        return out


@dataclasses.dataclass(frozen=True)
class Unnormalize:
    """Inverse quantile normalisation on the first len(q01) dims; every stats key must be present."""

    stats: Mapping[str, Any]  # key -> NormStats-like (fields q01, q99)

    def __call__(self, data: Sample) -> Sample:
        out = dict(data)
        for key, s in self.stats.items():
            if key not in out:
                raise KeyError(f"Unnormalize: sample has no {key!r} (keys {sorted(out)})")
            x = np.array(out[key], np.float32, copy=True)
            q01, q99 = np.asarray(s.q01), np.asarray(s.q99)
            d = min(q01.shape[-1], x.shape[-1])
            x[..., :d] = (x[..., :d] + 1.0) / 2.0 * (q99[:d] - q01[:d] + 1e-6) + q01[:d]
            out[key] = x
        return out


@dataclasses.dataclass(frozen=True)
class InjectDefaultPrompt:
    """Set `prompt` when the sample has none."""

    prompt: str | None  # default task text; None: leave the sample alone

    def __call__(self, data: Sample) -> Sample:
        if self.prompt is not None and data.get("prompt") is None:
            return {**data, "prompt": self.prompt}
        return data


@dataclasses.dataclass(frozen=True)
class ResizeImages:
    """Resize-with-pad every image to size x size."""

    size: int = 224  # output side

    def __call__(self, data: Sample) -> Sample:
        images = {k: value_preprocess.resize_with_pad(v, self.size, self.size) for k, v in data["images"].items()}
        return {**data, "images": images}


@dataclasses.dataclass(frozen=True)
class TokenizePrompt:
    """Pop `prompt` and `adv_ind`; add `tokenized_prompt` / `tokenized_prompt_mask` (pistar rules).

    With `adv_ind_required` a missing/None adv_ind raises. At train time (`dropout_prob > 0`) the
    advantage clause is dropped with that probability, drawn from `rng`; `_infer` configs use 0.
    """

    tokenizer: tokenizer.PromptTokenizer  # sentencepiece wrapper with max_len
    adv_ind_required: bool = True  # pistar: the model is trained with the advantage clause
    dropout_prob: float = 0.0  # pistar trains with 0.3
    discrete_state_input: bool = True  # pi0.5: the state goes into the prompt
    rng: np.random.Generator | None = None  # dropout draws; required when dropout_prob > 0

    def __call__(self, data: Sample) -> Sample:
        out = dict(data)
        prompt = out.pop("prompt", None)
        if prompt is None:
            raise ValueError("no prompt: the observation has none and the policy config sets no default_prompt (send `prompt`)")
        prompt = prompt.item() if isinstance(prompt, np.ndarray) else prompt
        adv_ind = _as_str(out.pop("adv_ind", None))
        if adv_ind is None and self.adv_ind_required:
            raise ValueError("TokenizePrompt: adv_ind is required by this pi0.6 config (positive/negative/none)")
        if adv_ind is not None and self.dropout_prob > 0:
            if self.rng is None:
                raise ValueError("TokenizePrompt: dropout_prob > 0 needs an rng")
            if self.rng.random() < self.dropout_prob:
                adv_ind = None
        state = np.asarray(out["state"]) if self.discrete_state_input else None
        out["tokenized_prompt"], out["tokenized_prompt_mask"] = self.tokenizer.tokenize(prompt, state, adv_ind)
        return out


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode()
    return str(value)


@dataclasses.dataclass(frozen=True)
class PadStatesAndActions:
    """Zero-pad `state` and `actions` on the last axis to `dim` (never truncates)."""

    dim: int = 32  # model action/state width

    def __call__(self, data: Sample) -> Sample:
        out = dict(data)
        for key in ("state", "actions"):
            if key in out:
                x = np.asarray(out[key], np.float32)
                if x.shape[-1] > self.dim:
                    raise ValueError(f"PadStatesAndActions: {key} has {x.shape[-1]} dims, more than {self.dim}")
                out[key] = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, self.dim - x.shape[-1])])
        return out


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """Keeps the keys the model reads (plus state/actions). Images stay uint8: the model maps them to [-1, 1] on the
    device (`siglip.pixels`, as openpi's `Observation.from_dict`), so loaders stack, queue and send a quarter of the
    bytes of float32."""

    def __call__(self, data: Sample) -> Sample:
        images = {k: np.asarray(v) for k, v in data["images"].items()}
        if bad := {k: str(v.dtype) for k, v in images.items() if v.dtype != np.uint8}:
            raise TypeError(f"ModelInputs: images must be uint8 by now (ResizeImages makes them so); got {bad}")
        out = {"images": images, "image_masks": {k: np.bool_(v) for k, v in data["image_masks"].items()}}
        for key in ("tokenized_prompt", "tokenized_prompt_mask", "state", "actions"):
            if key in data:
                out[key] = data[key]
        return out


def policy_inputs(
    model: pi05_config.Pi05Config,
    norm_stats: Mapping[str, Any],
    prompt_tokenizer: tokenizer.PromptTokenizer,
    *,
    default_prompt: str | None,
    adv_ind_dropout: float = 0.0,
    rng: np.random.Generator | None = None,
    repack: bool = True,
    delta_actions: bool = True,
    cameras: Mapping[str, str] | None = None,
    adapt_to_pi: bool = False,
) -> Compose:
    """The input pipeline for training (`repack=True`, dropout > 0) or serving (`repack=False`, dropout 0).

    `cameras` (Aloha camera -> dataset camera) replaces the YAM cameras of the training repack.
    """
    steps: list[Transform] = [RepackYam(repack_mapping(cameras))] if repack else []
    steps.append(AlohaInputs(adapt_to_pi))
    if delta_actions:
        steps.append(DeltaActions())
    steps += [
        Normalize(norm_stats),
        InjectDefaultPrompt(default_prompt),
        ResizeImages(model.image_size),
        TokenizePrompt(prompt_tokenizer, adv_ind_required=model.pistar, dropout_prob=adv_ind_dropout, rng=rng,
                       discrete_state_input=model.discrete_state_input),  # fmt: skip
        PadStatesAndActions(model.action_dim),
        ModelInputs(),
    ]
    return Compose(tuple(steps))


def policy_outputs(norm_stats: Mapping[str, Any], *, delta_actions: bool = True, action_dim: int = 14,
                   adapt_to_pi: bool = False) -> Compose:  # fmt: skip
    """{"state": the model-input state, "actions": model output (H, 32)} -> robot actions (H, action_dim).

    Both keys are unnormalised (openpi's strict Unnormalize), then joints made absolute again.
    """
    steps: list[Transform] = [Unnormalize(norm_stats)]
    if delta_actions:
        steps.append(AbsoluteActions())
    steps.append(AlohaOutputs(action_dim, adapt_to_pi))
    return Compose(tuple(steps))
