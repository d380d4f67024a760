"""Observation decoding and validation: every bad input gets an error naming the field."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from recap_ray.serve import msgpack_numpy, protocol

SPEC = protocol.ObservationSpec(state_dim=14, max_image_side=512, max_message_bytes=64 * 1024)


def good() -> dict:
    return {"images": {"cam_high": np.zeros((3, 48, 64), np.uint8), "cam_left_wrist": np.zeros((48, 64, 3), np.uint8)},
            "state": np.zeros(14, np.float32), "prompt": "hand over", "adv_ind": "negative"}  # fmt: skip


def _with(**changes) -> dict:
    obs = good()
    for key, value in changes.items():
        if value is None:
            obs.pop(key)
        else:
            obs[key] = value
    return obs


def test_good_observations_pass_through():
    obs = good()
    assert protocol.validate(obs, SPEC) is obs
    assert protocol.validate(_with(prompt=None, adv_ind=None), SPEC)
    floats = _with(images={"cam_high": np.full((48, 64, 3), 0.5, np.float32)}, state=np.arange(14))
    assert protocol.validate(floats, SPEC)
    decoded = protocol.decode(msgpack_numpy.packb(obs), SPEC)
    np.testing.assert_array_equal(decoded["images"]["cam_high"], obs["images"]["cam_high"])


@pytest.mark.parametrize(("obs", "message"), [
    ([1, 2], "must be a dict, got list"),
    (_with(extra=1), r"unknown keys \['extra'\]"),
    (_with(state=None), r"missing keys \['state'\]"),
    (_with(images=None), r"missing keys \['images'\]"),
    (_with(images=[np.zeros((3, 4, 4), np.uint8)]), "'images': expected a dict"),
    (_with(images={"cam_low": np.zeros((3, 8, 8), np.uint8)}), r"missing required cameras \['cam_high'\]"),
    (_with(images={"cam_high": np.zeros((3, 8, 8), np.uint8), "top": np.zeros((3, 8, 8), np.uint8)}),
     r"unknown cameras \['top'\]"),
    (_with(images={"cam_high": np.zeros((48, 64), np.uint8)}), r"images\['cam_high'\]: expected shape .* got \(48, 64\)"),
    (_with(images={"cam_high": np.zeros((4, 48, 64), np.uint8)}), r"expected shape \(3, H, W\) or \(H, W, 3\)"),
    (_with(images={"cam_high": np.zeros((3, 48, 64), np.int16)}), "expected dtype uint8 .* got int16"),
    (_with(images={"cam_high": "pixels"}), "expected a numpy array, got str"),
    (_with(images={"cam_high": np.zeros((3, 600, 64), np.uint8)}), r"image side must be in \[1, 512\], got H x W = 600 x 64"),
    (_with(images={"cam_high": np.full((3, 8, 8), np.nan, np.float32)}), "non-finite"),
    # float pixels in 0..255 (a common client slip) would be scaled by 255 and wrap around as uint8
    (_with(images={"cam_high": np.full((3, 8, 8), 128.0, np.float32)}), r"float image .* in \[0, 1\], got values in \[128, 128\]"),
    (_with(images={"cam_high": np.full((3, 8, 8), -0.5, np.float32)}), r"float image .* in \[0, 1\]"),
    (_with(state=np.zeros(7, np.float32)), r"'state': expected shape \(14,\), got \(7,\)"),
    (_with(state=[0.0] * 14), "'state': expected a float numpy array .* got list"),
    (_with(state=np.array(["a"] * 14)), "'state': expected a float numpy array"),
    (_with(state=np.full(14, np.inf, np.float32)), "'state': has non-finite values"),
    (_with(prompt=3), "'prompt': expected a string, got int"),
    (_with(adv_ind=1.0), "'adv_ind': expected a string, got float"),
])  # fmt: skip
def test_bad_observations_are_named(obs, message):
    with pytest.raises(protocol.InvalidRequest, match=message):
        protocol.validate(obs, SPEC)


def test_bad_frames():
    with pytest.raises(protocol.InvalidRequest, match="text frame"):
        protocol.decode("{}", SPEC)
    with pytest.raises(protocol.InvalidRequest, match="malformed msgpack"):
        protocol.decode(b"\xc1\x00\x01", SPEC)
    with pytest.raises(protocol.InvalidRequest, match="malformed msgpack"):  # array header larger than its data
        protocol.decode(msgpack.packb({b"__ndarray__": True, b"data": b"12", b"dtype": "<f4", b"shape": [100]}), SPEC)
    with pytest.raises(protocol.InvalidRequest, match="must be a msgpack map, got list"):
        protocol.decode(msgpack.packb([1, 2]), SPEC)
    big = msgpack_numpy.packb(_with(images={"cam_high": np.zeros((3, 200, 200), np.uint8)}))
    with pytest.raises(protocol.InvalidRequest, match=rf"message of {len(big)} bytes exceeds the limit of 65536"):
        protocol.decode(big, SPEC)
