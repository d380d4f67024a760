"""Training-time image augmentation: openpi's `preprocess_observation(train=True)` (augmax 0.4.1), in JAX.

Per sample, in [0, 1]: cameras whose name lacks "wrist" get RandomCrop(int(0.95 W) x int(0.95 H), the crop's
centre drawn continuously) -> Resize back -> Rotate(uniform +-5 deg), one bilinear resampling with black
outside; every camera gets ColorJitter(brightness 0.3, contrast 0.4, saturation 0.5, hue 0.1, p 0.5) in HSV:
brightness and contrast move V along augmax's invertible curves, hue shifts H, and the saturation amount is
drawn but never applied (augmax discards it). Nothing is clipped (every step maps [0, 1] into itself).

The random stream is openpi's too, so one key gives openpi's images (tests/models/test_openpi_training_parity.py):
sample b of every camera uses split(key, B)[b] (openpi reuses one key for all cameras, so cameras of a kind get
the same draws: a sample's two wrist cameras share their jitter), and inside it augmax's chains split and draw
in augmax's order. pistar's value model trains with the same function and the same key protocol.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the augmentation; the defaults are openpi's (and pistar's)."""

    # Crop side as a fraction of the image side, truncated to whole pixels (non-wrist cameras).
    crop_fraction: float = 0.95
    # Rotation drawn uniformly from [-max_rotation_deg, max_rotation_deg] (non-wrist cameras).
    max_rotation_deg: float = 5.0
    # Brightness amount drawn from [-brightness, brightness], applied to HSV value.
    brightness: float = 0.3
    # Contrast amount drawn from [-contrast, contrast], applied to HSV value.
    contrast: float = 0.4
    # Saturation amount: drawn and discarded as augmax does; it only decides how augmax splits its key.
    saturation: float = 0.5
    # Hue shift drawn from [-hue, hue] (hue in turns).
    hue: float = 0.1
    # Probability that the colour jitter is applied to an image at all.
    jitter_probability: float = 0.5


def _geometric(key: jax.Array, image: jax.Array, config: AugmentConfig) -> jax.Array:
    """augmax Chain(RandomCrop, Resize back, Rotate) on one (H, W, 3) image: one resampling."""
    h, w = image.shape[:2]
    crop_h, crop_w = int(h * config.crop_fraction), int(w * config.crop_fraction)
    k_crop, _, k_rot = jax.random.split(key, 3)  # GeometricChain: a key per transform (Resize draws nothing)
    limit = jnp.array([(h - crop_h) / 2, (w - crop_w) / 2], jnp.float32)
    centre = jax.random.uniform(k_crop, (2,), minval=-limit, maxval=limit)
    max_theta = math.radians(config.max_rotation_deg)
    theta = jax.random.uniform(k_rot, minval=-max_theta, maxval=max_theta)
    yy, xx = jnp.meshgrid(jnp.arange(h) - (h / 2 - 0.5), jnp.arange(w) - (w / 2 - 0.5), indexing="ij")
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    # output pixel -> rotate -> scale into the crop -> shift to the crop's centre -> input pixel
    src_y = crop_h / h * (cos * yy + sin * xx) + centre[0] + (h / 2 - 0.5)
    src_x = crop_w / w * (cos * xx - sin * yy) + centre[1] + (w / 2 - 0.5)
    sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src_y, src_x], order=1, mode="constant")  # noqa: E731
    return jnp.stack([sample(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def _rgb_to_hsv(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    value = jnp.max(x, axis=-1)
    spread = value - jnp.min(x, axis=-1)
    top = jnp.argmax(x, axis=-1)
    second = jnp.take_along_axis(x, ((top + 1) % 3)[..., None], axis=-1)[..., 0]
    third = jnp.take_along_axis(x, ((top + 2) % 3)[..., None], axis=-1)[..., 0]
    safe = jnp.where(spread == 0, 1.0, spread)
    hue = jnp.where(spread == 0, 0.0, (2 * top + (second - third) / safe) / 6)
    saturation = jnp.where(value == 0, 0.0, spread / jnp.where(value == 0, 1.0, value))
    return hue, saturation, value


def _hsv_to_rgb(hue: jax.Array, saturation: jax.Array, value: jax.Array) -> jax.Array:
    k = jnp.mod(jnp.array([5.0, 3.0, 1.0]) + hue[..., None] * 6, 6)
    ramp = jnp.clip(jnp.minimum(k, 4 - k), 0.0, 1.0)
    return value[..., None] - value[..., None] * saturation[..., None] * ramp


def _brightness(v: jax.Array, amount: jax.Array) -> jax.Array:
    return jnp.where(amount < 0.0, v * (1.0 + amount), v * (1.0 - amount) + amount)


def _contrast(v: jax.Array, amount: jax.Array) -> jax.Array:
    slant = jnp.tan((amount + 1.0) * (jnp.pi / 4))
    low = (slant - slant**2) / (2 * (1 - slant**2))
    high = 1 - low
    mid = slant * (v - 0.5) + 0.5
    return jnp.where(v < low, v / slant, jnp.where(v > high, v / slant + 1 - 1 / slant, mid))


def _jitter(key: jax.Array, image: jax.Array, config: AugmentConfig) -> jax.Array:
    """augmax ColorJitter on one (H, W, 3) image: one draw of each amount for the whole image."""
    strengths = (config.brightness, config.contrast, config.hue, config.saturation)  # augmax's order of ops
    n_keys = sum(s > 0 for s in strengths) + (config.jitter_probability < 1)
    # augmax zips the ops with these keys by position: an op past the last key never runs (only when some
    # strengths are 0), and the saturation op, last, draws and is discarded, so it is left out here
    keys = jax.random.split(key, n_keys)
    hue, saturation, value = _rgb_to_hsv(image)
    for i, (op, strength) in enumerate(zip(("brightness", "contrast", "hue"), strengths)):
        if strength <= 0 or i >= n_keys:
            continue
        amount = jax.random.uniform(keys[i], minval=-strength, maxval=strength)
        if op == "brightness":
            value = _brightness(value, amount)
        elif op == "contrast":
            value = _contrast(value, amount)
        else:
            hue = hue + amount
    jittered = _hsv_to_rgb(hue, saturation, value)
    if config.jitter_probability >= 1:
        return jittered
    return jnp.where(jax.random.bernoulli(key, config.jitter_probability), jittered, image)


def _one_sample(key: jax.Array, image: jax.Array, geometric: bool, config: AugmentConfig) -> jax.Array:
    """augmax Chain(geometric..., ColorJitter) on one image in [0, 1], with augmax's key splits."""
    if geometric:
        k_geo, k_colour = jax.random.split(key)
        image = _geometric(k_geo, image, config)
    else:
        k_colour = jax.random.split(key, 1)[0]
    return _jitter(jax.random.split(k_colour, 1)[0], image, config)  # ColorspaceChain's own split


def augment(
    key: jax.Array, images: Mapping[str, jax.Array], config: AugmentConfig = AugmentConfig()
) -> dict[str, jax.Array]:
    """{camera: (B, H, W, 3) in [-1, 1]} -> the same, augmented; sample b of every camera uses split(key, B)[b]."""
    batch = {name: image.shape[0] for name, image in images.items()}
    if len(set(batch.values())) > 1:
        raise ValueError(f"augment: cameras differ in batch size {batch}")
    keys = jax.random.split(key, next(iter(batch.values()), 0))
    out = {}
    for name, image in images.items():
        one = lambda k, im, geo="wrist" not in name: _one_sample(k, im, geo, config)  # noqa: E731
        x = image.astype(jnp.float32) / 2.0 + 0.5
        out[name] = (jax.vmap(one)(keys, x) * 2.0 - 1.0).astype(image.dtype)
    return out
