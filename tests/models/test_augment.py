"""Training augmentation: properties and hand-computed curves (openpi parity: test_openpi_training_parity.py)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recap_ray.models import augment as aug

OFF = aug.AugmentConfig(crop_fraction=1.0, max_rotation_deg=0.0, jitter_probability=0.0)


def _images(seed: int = 3, batch: int = 2, size: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def test_identity_when_switched_off_and_wrist_cameras_keep_their_geometry():
    x = _images()
    out = aug.augment(jax.random.key(0), {"base_0_rgb": x, "left_wrist_0_rgb": x}, OFF)
    np.testing.assert_allclose(np.asarray(out["base_0_rgb"]), x, atol=1e-5)
    geo_only = dataclasses.replace(OFF, crop_fraction=0.95, max_rotation_deg=5.0)
    out = aug.augment(jax.random.key(0), {"base_0_rgb": x, "left_wrist_0_rgb": x}, geo_only)
    np.testing.assert_allclose(np.asarray(out["left_wrist_0_rgb"]), x, atol=1e-5)
    assert np.abs(np.asarray(out["base_0_rgb"]) - x).mean() > 0.05


def test_rotation_alone_keeps_the_centre_pixel_of_an_odd_image():
    """Crop 1.0: a rotation about the image centre; the centre pixel maps onto itself."""
    x = _images(size=29)
    rot = dataclasses.replace(OFF, max_rotation_deg=30.0)
    out = np.asarray(aug.augment(jax.random.key(5), {"base_0_rgb": x}, rot)["base_0_rgb"])
    np.testing.assert_allclose(out[:, 14, 14], x[:, 14, 14], atol=1e-5)
    assert np.abs(out - x).mean() > 0.1


def test_one_key_for_every_camera_as_openpi():
    """Cameras of one kind see the same draws (two wrist cameras: same jitter); samples differ."""
    x = np.repeat(_images(batch=1), 2, axis=0)  # two identical samples
    out = aug.augment(jax.random.key(7), {"left_wrist_0_rgb": x, "right_wrist_0_rgb": x, "base_0_rgb": x},
                      dataclasses.replace(aug.AugmentConfig(), jitter_probability=1.0))  # fmt: skip
    left, right, base = (np.asarray(out[k]) for k in ("left_wrist_0_rgb", "right_wrist_0_rgb", "base_0_rgb"))
    np.testing.assert_array_equal(left, right)
    assert not np.allclose(left[0], left[1])  # per-sample keys
    assert not np.allclose(base, left)


def test_deterministic_under_jit_and_in_range():
    x = _images()
    full = jax.jit(lambda k, im: aug.augment(k, {"base_0_rgb": im, "wrist_0_rgb": im}))
    a, b = full(jax.random.key(1), x), full(jax.random.key(1), x)
    for name in a:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
        assert a[name].shape == x.shape and a[name].dtype == x.dtype
        assert float(a[name].min()) >= -1.0 - 1e-6 and float(a[name].max()) <= 1.0 + 1e-6
    bf16 = aug.augment(jax.random.key(1), {"base_0_rgb": jnp.asarray(x, jnp.bfloat16)})["base_0_rgb"]
    assert bf16.dtype == jnp.bfloat16


def test_jitter_with_zero_amounts_is_the_hsv_round_trip():
    x = _images()
    always = dataclasses.replace(OFF, jitter_probability=1.0)
    still = dataclasses.replace(always, brightness=0.0, contrast=0.0, hue=0.0)
    np.testing.assert_allclose(np.asarray(aug.augment(jax.random.key(2), {"wrist": x}, still)["wrist"]), x, atol=1e-5)
    assert not np.allclose(np.asarray(aug.augment(jax.random.key(2), {"wrist": x}, always)["wrist"]), x)


def test_jitter_curves_hand_computed():
    np.testing.assert_allclose(float(aug._brightness(jnp.array(0.5), jnp.array(0.2))), 0.6, rtol=1e-6)
    np.testing.assert_allclose(float(aug._brightness(jnp.array(0.5), jnp.array(-0.2))), 0.4, rtol=1e-6)
    slant = math.tan(1.4 * math.pi / 4)  # contrast +0.4: steeper line through (0.5, 0.5)
    np.testing.assert_allclose(float(aug._contrast(jnp.array(0.6), jnp.array(0.4))), slant * 0.1 + 0.5, rtol=1e-5)
    np.testing.assert_allclose(float(aug._contrast(jnp.array(0.1), jnp.array(0.4))), 0.1 / slant, rtol=1e-5)
    h, s, v = aug._rgb_to_hsv(jnp.array([[1.0, 0.5, 0.0]]))  # orange: hue 30 deg = 1/12 turn
    np.testing.assert_allclose([float(h[0]), float(s[0]), float(v[0])], [1 / 12, 1.0, 1.0], rtol=1e-6)


def test_cameras_of_different_batch_sizes_are_refused_by_name():
    with pytest.raises(ValueError, match="base_0_rgb.*2.*wrist_0_rgb.*3"):
        aug.augment(jax.random.key(0), {"base_0_rgb": _images(batch=2), "wrist_0_rgb": _images(batch=3)})
