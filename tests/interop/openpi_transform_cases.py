"""The inputs make_openpi_transforms_fixture.py feeds openpi: robot observations and norm stats (no upstream code).

Observations are as robots send them to openpi's AlohaInputs (channel-first images), with shapes and dtypes chosen
to exercise resizing, float images, missing cameras and state-token bin edges.
"""

from __future__ import annotations

import numpy as np

HORIZON = 50  # action chunk length of pi05_aloha


def image(rng, shape, kind, noise=0):
    """Smooth content plus +-noise levels (kept small so the fixture compresses), CHW; kind 'u8' or 'f32'
    (LeRobot's [0, 1] float)."""
    c, h, w = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([np.sin(6 * xx + i) * np.cos(4 * yy - i) for i in range(c)]) * 100 + 128
    img = np.clip(base + rng.integers(-noise, noise + 1, (c, h, w)), 0, 255)
    if kind == "u8":
        return img.astype(np.uint8)
    return (img / 255.0).astype(np.float32)


def norm_stats(rng):
    def one(dim, scale):
        q01 = rng.uniform(-1.5, -0.2, dim) * scale
        q99 = q01 + rng.uniform(0.3, 3.0, dim) * scale
        q99[6], q99[13] = q01[6] + 1.0, q01[13] + 0.9  # grippers
        return {"mean": (q01 + q99) / 2, "std": (q99 - q01) / 4, "q01": q01, "q99": q99}

    return {"state": one(14, 1.0), "actions": one(14, 0.5)}


def serve_cases(rng, tiny=False):
    """Observations as a robot sends them (openpi's AlohaInputs expects CHW); `tiny`: 6x8 images."""
    if tiny:
        shapes = dict.fromkeys(("4x3", "4x3w", "wide_h", "wide_l", "wide_r", "tall_h", "tall_l", "sq", "low"), (3, 6, 8))
    else:
        shapes = {"4x3": (3, 72, 96), "4x3w": (3, 60, 80), "wide_h": (3, 20, 125), "wide_l": (3, 15, 100),
                  "wide_r": (3, 17, 113), "tall_h": (3, 250, 61), "tall_l": (3, 97, 23), "sq": (3, 224, 224),
                  "low": (3, 24, 32)}  # fmt: skip
    cases = {}
    state = lambda dt=np.float32: rng.uniform(-2.0, 2.0, 14).astype(dt)  # noqa: E731 (some beyond q01/q99)
    cases["chw_u8_4x3"] = {
        "images": {"cam_high": image(rng, shapes["4x3"], "u8", noise=3), "cam_left_wrist": image(rng, shapes["4x3w"], "u8"),
                   "cam_right_wrist": image(rng, shapes["4x3w"], "u8")},
        "state": state(), "prompt": "hand over the cup",
    }  # fmt: skip
    cases["chw_f32_wide_with_actions"] = {
        "images": {"cam_high": image(rng, shapes["wide_h"], "f32"), "cam_left_wrist": image(rng, shapes["wide_l"], "f32"),
                   "cam_right_wrist": image(rng, shapes["wide_r"], "f32")},
        "state": state(), "actions": rng.uniform(-2.0, 2.0, (HORIZON, 14)).astype(np.float32), "prompt": "  fold_the towel\nnow ",
    }  # fmt: skip
    cases["missing_wrist_default_prompt"] = {
        "images": {"cam_high": image(rng, shapes["tall_h"], "u8"), "cam_left_wrist": image(rng, shapes["tall_l"], "u8")},
        "state": state(),
    }
    cases["square224_cam_low_f64_state"] = {
        "images": {"cam_high": image(rng, shapes["sq"], "u8"), "cam_low": image(rng, shapes["low"], "u8"),
                   "cam_right_wrist": image(rng, shapes["sq"], "u8")},
        "state": state(np.float64), "prompt": "stack the blocks",
    }  # fmt: skip
    return cases


def edge_states(rng, q01, q99):
    """States whose normalised values sit just below a bin edge of pi0.5's 256-bin state discretisation
    (edges k/128 - 1): float64 (y a hair below the edge), and float32 (y below the edge in float64 but
    rounding onto it in float32). A pipeline that rounds to float32 before discretising gets other tokens."""
    scale = q99 - q01 + 1e-6
    edges = rng.integers(20, 236, q01.shape) / 128 - 1
    x64 = q01 + (edges - 2e-9 + 1) / 2 * scale
    x32 = np.empty(q01.shape, np.float32)
    for i, (x, e) in enumerate(zip(x64, edges)):
        cands = [np.float32(x)]
        for _ in range(4):
            cands += [np.nextafter(cands[-2 if len(cands) > 1 else 0], np.float32(-np.inf)),
                      np.nextafter(cands[-1], np.float32(np.inf))]  # fmt: skip
        ys = [(float(c) - q01[i]) / scale[i] * 2 - 1 for c in cands]
        flips = [c for c, y in zip(cands, ys) if y < e and np.float32(y) >= e]
        x32[i] = flips[0] if flips else max((c for c, y in zip(cands, ys) if y < e), key=float)
    return x64, x32
