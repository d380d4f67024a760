"""Training-time image augmentation of the value model (spec value_model.md §8), in JAX.

What openpi's `preprocess_observation` asks augmax (0.4.1) for, per sample and camera, in [0, 1]:
cameras whose name lacks "wrist" get RandomCrop(95%) -> Resize back -> Rotate(uniform +-5 deg),
fused into one bilinear resampling with black outside; every camera gets augmax's ColorJitter
(brightness 0.3, contrast 0.4, saturation 0.5, hue left at its default 0.1, p left at 0.5), which
works in HSV: brightness and contrast move V (augmax's invertible curves), hue shifts H, and the
saturation change is computed but discarded by augmax, so it has no effect here either. The random
streams differ from augmax's; the distributions of the perturbations are the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the value model's training augmentation (pistar's effective values)."""

    # Side of the random crop as a fraction of the image side (non-wrist cameras).
    crop_fraction: float = 0.95
    # Rotation drawn uniformly from [-max_rotation_deg, max_rotation_deg] (non-wrist cameras).
    max_rotation_deg: float = 5.0
    # Brightness amount drawn from [-brightness, brightness], applied to HSV value.
    brightness: float = 0.3
    # Contrast amount drawn from [-contrast, contrast], applied to HSV value.
    contrast: float = 0.4
    # Hue shift drawn from [-hue, hue] (hue in [0, 1) turns).
    hue: float = 0.1
    # Probability that the colour jitter is applied to an image at all.
    jitter_probability: float = 0.5


def _geometric(key: jax.Array, image: jax.Array, config: AugmentConfig) -> jax.Array:
    """Random crop -> resize back -> rotate, as one bilinear resampling of image (S, S, 3)."""
    size = image.shape[0]
    crop = int(config.crop_fraction * size)
    k_y, k_x, k_a = jax.random.split(key, 3)
    off_y = jax.random.randint(k_y, (), 0, size - crop + 1).astype(jnp.float32)
    off_x = jax.random.randint(k_x, (), 0, size - crop + 1).astype(jnp.float32)
    angle = jnp.deg2rad(jax.random.uniform(k_a, (), minval=-config.max_rotation_deg, maxval=config.max_rotation_deg))
    grid = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
    yy, xx = jnp.meshgrid(grid, grid, indexing="ij")
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    ry, rx = cos * yy - sin * xx, sin * yy + cos * xx  # output pixel rotated back into the crop frame
    scale = crop / size
    src_y = off_y + (ry + (size - 1) / 2.0 + 0.5) * scale - 0.5
    src_x = off_x + (rx + (size - 1) / 2.0 + 0.5) * scale - 0.5
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
    """augmax ColorJitter on one image (S, S, 3) in [0, 1]; one draw of each amount per image."""
    k_b, k_c, k_h, k_p = jax.random.split(key, 4)
    draw = lambda k, s: jax.random.uniform(k, (), minval=-s, maxval=s)  # noqa: E731
    hue, saturation, value = _rgb_to_hsv(image)
    value = _contrast(_brightness(value, draw(k_b, config.brightness)), draw(k_c, config.contrast))
    jittered = _hsv_to_rgb(hue + draw(k_h, config.hue), saturation, value)
    apply = jax.random.bernoulli(k_p, config.jitter_probability)
    return jnp.clip(jnp.where(apply, jittered, image), 0.0, 1.0)


def augment(
    key: jax.Array, images: jax.Array, cameras: Sequence[str], config: AugmentConfig = AugmentConfig()
) -> jax.Array:
    """images (B, C, S, S, 3) in [-1, 1], cameras = their C names -> augmented, same shape and range.

    Sample b of camera c uses split(fold_in(key, c), B)[b]; pistar folds the step into the key first.
    """
    if images.shape[1] != len(cameras):
        raise ValueError(f"augment: {images.shape[1]} camera images for {len(cameras)} camera names")
    out = []
    for c, name in enumerate(cameras):
        keys = jax.random.split(jax.random.fold_in(key, c), images.shape[0])
        x = images[:, c].astype(jnp.float32) / 2.0 + 0.5

        def one(k: jax.Array, im: jax.Array, geometric: bool = "wrist" not in name) -> jax.Array:
            k_geo, k_col = jax.random.split(k)
            if geometric:
                im = _geometric(k_geo, im, config)
            return _jitter(k_col, im, config)

        out.append(jax.vmap(one)(keys, x) * 2.0 - 1.0)
    return jnp.stack(out, axis=1).astype(images.dtype)
