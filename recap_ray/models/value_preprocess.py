"""Image preprocessing for the value model (spec value_model.md §8): arrays in, arrays out.

Inference/labelling: uint8 HWC frames per camera -> resize with pad to the tower's size (PIL
bilinear, aspect kept, black centred padding, as openpi_client's `resize_with_pad`), still uint8: the
model maps them to x/255*2-1 on the device (`siglip.pixels`). Cameras go in the model in the order
given (pistar's order is the sorted camera keys); a missing camera becomes a black image with mask
False, as in pistar's `ValueInputs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image


def _resize_with_pad_one(image: np.ndarray, height: int, width: int) -> np.ndarray:
    cur_h, cur_w = image.shape[:2]
    if (cur_h, cur_w) == (height, width):
        return image
    ratio = max(cur_w / width, cur_h / height)
    new_h, new_w = max(1, int(cur_h / ratio)), max(1, int(cur_w / ratio))  # a sliver stays a 1-pixel line
    resized = Image.fromarray(image).resize((new_w, new_h), resample=Image.BILINEAR)
    canvas = Image.new(resized.mode, (width, height), 0)
    canvas.paste(resized, (max(0, int((width - new_w) / 2)), max(0, int((height - new_h) / 2))))
    return np.asarray(canvas)


def resize_with_pad(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 images (..., H, W, 3) -> (..., height, width, 3), aspect kept, zero padding centred."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"resize_with_pad: expected uint8 images, got {images.dtype}")
    if images.shape[-3:-1] == (height, width):
        return images
    flat = images.reshape(-1, *images.shape[-3:])
    out = np.stack([_resize_with_pad_one(im, height, width) for im in flat])
    return out.reshape(*images.shape[:-3], height, width, images.shape[-1])


def to_uint8(images: np.ndarray) -> np.ndarray:
    """pistar's decode rule: float images (in [0, 1]) x255 -> uint8; CHW -> HWC."""
    images = np.asarray(images)
    if np.issubdtype(images.dtype, np.floating):
        images = (255 * images).astype(np.uint8)
    if images.ndim >= 3 and images.shape[-3] == 3 and images.shape[-1] != 3:
        images = np.moveaxis(images, -3, -1)
    return images


def camera_batch_uint8(
    frames: Mapping[str, np.ndarray | None], cameras: Sequence[str], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-camera frame batches (B, H, W, 3) -> uint8 images (B, C, size, size, 3), masks (B, C).

    A camera absent from `frames` (or None) gets a black image, mask False. Unknown camera names
    in `frames` raise, naming them.
    """
    unknown = sorted(set(frames) - set(cameras))
    if unknown:
        raise KeyError(f"camera_batch: cameras {unknown} not in the model's cameras {list(cameras)}")
    present = [c for c in cameras if frames.get(c) is not None]
    if not present:
        raise ValueError(f"camera_batch: none of {list(cameras)} given")
    batch = np.asarray(frames[present[0]]).shape[0]
    images = np.zeros((batch, len(cameras), size, size, 3), np.uint8)
    masks = np.zeros((batch, len(cameras)), bool)
    for i, cam in enumerate(cameras):
        if frames.get(cam) is None:
            continue
        frame = to_uint8(frames[cam])
        if frame.ndim != 4 or frame.shape[0] != batch or frame.shape[-1] != 3:
            raise ValueError(f"camera_batch: {cam} has shape {frame.shape}, expected ({batch}, H, W, 3)")
        images[:, i] = resize_with_pad(frame, size, size)
        masks[:, i] = True
    return images, masks
