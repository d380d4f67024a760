"""Plots render deterministically, shade intervention spans, and encode as PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from recap_ray.recap import plots


def test_value_curves_shade_interventions_and_are_deterministic():
    v = np.linspace(-1, 0, 50)
    inter = np.zeros(50)
    inter[20:30] = 1
    a = plots.value_curves([("ep 0", v, inter), ("ep 1", v[::-1], np.zeros(50))])
    b = plots.value_curves([("ep 0", v, inter), ("ep 1", v[::-1], np.zeros(50))])
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape[2] == 3
    shade = np.all(a == plots.SHADE, axis=-1)
    assert shade[:, : a.shape[1] // 2].any() and not shade[:, a.shape[1] // 2 :].any()


def test_histogram_and_fraction_png_roundtrip():
    adv = np.random.default_rng(0).normal(size=300)
    hist = plots.advantage_histogram(adv, {"task 0": 0.5})
    assert np.all(hist == plots.PALETTE[0], axis=-1).any()  # the threshold line
    frac = plots.positive_fraction({0: 0.3, 1: 1.0, 5: 0.0})
    for image in (hist, frac):
        back = np.asarray(Image.open(io.BytesIO(plots.png(image))).convert("RGB"))
        np.testing.assert_array_equal(back, image)
