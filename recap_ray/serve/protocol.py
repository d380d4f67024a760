"""What a client may send: decoding and validation of one observation, with errors that say what is wrong.

An observation is openpi's Aloha request (serving spec §1.5): `images` (a dict of `cam_high`,
required, and any of `cam_left_wrist`, `cam_right_wrist`, `cam_low`; each uint8 or float in
[0, 1], CHW [3, H, W] or HWC [H, W, 3]), `state` (a finite float vector of the trained width),
and optionally `prompt` (str) and `adv_ind` (str; accepted and then overridden by the server).
Any other key is an error. Every failure raises `InvalidRequest` naming the field, what was
expected and what came.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from recap_ray.serve import msgpack_numpy

# The serve proxy (uvicorn) closes a connection whose message exceeds 16 MiB (code 1009).
PROXY_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
REQUIRED_CAMERAS: tuple[str, ...] = ("cam_high",)
OPTIONAL_CAMERAS: tuple[str, ...] = ("cam_left_wrist", "cam_right_wrist", "cam_low")
KNOWN_KEYS: tuple[str, ...] = ("images", "state", "prompt", "adv_ind")


class InvalidRequest(ValueError):
    """A client sent something the policy cannot take; the message is meant for that client."""


@dataclasses.dataclass(frozen=True)
class ObservationSpec:
    """Limits an observation must meet."""

    state_dim: int = 14  # width of `state` (the norm stats' width)
    max_image_side: int = 2048  # largest H or W accepted
    max_message_bytes: int = 12 * 1024 * 1024  # largest request frame (below the proxy's 16 MiB)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decode(message: bytes | str | None, spec: ObservationSpec) -> dict[str, Any]:
    """One websocket frame -> observation dict (not yet validated)."""
    if isinstance(message, str):
        raise InvalidRequest("got a text frame; send the observation as a binary msgpack frame (openpi's codec)")
    if message is None:
        raise InvalidRequest("got an empty frame; send the observation as a binary msgpack frame")
    if len(message) > spec.max_message_bytes:
        raise InvalidRequest(f"message of {len(message)} bytes exceeds the limit of {spec.max_message_bytes} bytes")
    try:
        obs = msgpack_numpy.unpackb(message)
    except Exception as err:  # msgpack and the ndarray hook raise many types on garbage
        raise InvalidRequest(f"malformed msgpack message ({type(err).__name__}: {err})") from err
    if not isinstance(obs, dict):
        raise InvalidRequest(f"the observation must be a msgpack map, got {type(obs).__name__}")
    return obs


def _check_image(name: str, image: Any, spec: ObservationSpec) -> None:
    where = f"images[{name!r}]"
    if not isinstance(image, np.ndarray):
        raise InvalidRequest(f"{where}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise InvalidRequest(f"{where}: expected dtype uint8 (or float in [0, 1]), got {image.dtype}")
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise InvalidRequest(f"{where}: expected shape (3, H, W) or (H, W, 3), got {image.shape}")
    hw = image.shape[1:] if image.shape[0] == 3 and image.shape[-1] != 3 else image.shape[:2]
    if min(hw) < 1 or max(hw) > spec.max_image_side:
        raise InvalidRequest(f"{where}: image side must be in [1, {spec.max_image_side}], got H x W = {hw[0]} x {hw[1]}")
    if image.dtype != np.uint8 and not np.all(np.isfinite(image)):
        raise InvalidRequest(f"{where}: float image has non-finite values")
    if image.dtype != np.uint8 and (image.min() < 0 or image.max() > 1):  # the server scales floats by 255
        raise InvalidRequest(f"{where}: float image values must be in [0, 1], got values in "
                             f"[{image.min():g}, {image.max():g}]; send uint8 for 0..255 pixels")  # fmt: skip


def _check_text(key: str, value: Any, types: tuple[type, ...]) -> None:
    if value is not None and not isinstance(value, types):
        raise InvalidRequest(f"{key!r}: expected a string, got {type(value).__name__}")


def validate(obs: Any, spec: ObservationSpec) -> dict[str, Any]:
    """Raise `InvalidRequest` unless `obs` is a well-formed observation; returns it unchanged."""
    if not isinstance(obs, dict):
        raise InvalidRequest(f"the observation must be a dict, got {type(obs).__name__}")
    unknown = sorted(str(k) for k in obs if k not in KNOWN_KEYS)
    if unknown:
        raise InvalidRequest(f"unknown keys {unknown}; an observation has {list(KNOWN_KEYS)}")
    missing = [k for k in ("images", "state") if k not in obs]
    if missing:
        raise InvalidRequest(f"missing keys {missing}; got {sorted(str(k) for k in obs)}")
    images = obs["images"]
    if not isinstance(images, dict):
        raise InvalidRequest(f"'images': expected a dict of camera -> array, got {type(images).__name__}")
    cameras = set(images)
    bad = sorted(str(c) for c in cameras - {*REQUIRED_CAMERAS, *OPTIONAL_CAMERAS})
    if bad:
        raise InvalidRequest(f"'images': unknown cameras {bad}; expected {list(REQUIRED_CAMERAS + OPTIONAL_CAMERAS)}")
    absent = [c for c in REQUIRED_CAMERAS if c not in cameras]
    if absent:
        raise InvalidRequest(f"'images': missing required cameras {absent}; got {sorted(cameras)}")
    for name, image in images.items():
        _check_image(name, image, spec)
    state = obs["state"]
    if not isinstance(state, np.ndarray) or not (np.issubdtype(state.dtype, np.floating)
                                                 or np.issubdtype(state.dtype, np.integer)):  # fmt: skip
        kind = state.dtype if isinstance(state, np.ndarray) else type(state).__name__
        raise InvalidRequest(f"'state': expected a float numpy array of shape ({spec.state_dim},), got {kind}")
    if state.shape != (spec.state_dim,):
        raise InvalidRequest(f"'state': expected shape ({spec.state_dim},), got {state.shape}")
    if not np.all(np.isfinite(state)):
        raise InvalidRequest("'state': has non-finite values")
    _check_text("prompt", obs.get("prompt"), (str,))
    _check_text("adv_ind", obs.get("adv_ind"), (str, bytes))
    return obs
