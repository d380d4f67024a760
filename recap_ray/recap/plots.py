"""Diagnostic plots of a relabel, drawn with Pillow into RGB arrays (no matplotlib needed).

`value_curves`: V(o_t) per frame of a few episodes, intervention spans shaded; `advantage_histogram`:
autonomous-frame advantages with each threshold as a vertical line; `positive_fraction`: share of
positive frames per episode. Arrays out; `png` encodes one. Deterministic: same input, same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WHITE, BLACK, GREY = (255, 255, 255), (40, 40, 40), (200, 200, 200)
BLUE, RED, SHADE = (31, 119, 180), (214, 39, 40), (255, 221, 170)
PALETTE = ((214, 39, 40), (44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194), (23, 190, 207))
MARGIN = (48, 22, 12, 26)  # left, top, right, bottom


class _Panel:
    """One plot area in data coordinates on a shared Pillow canvas."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], x: tuple[float, float], y: tuple[float, float]):
        self.draw, self.font = draw, ImageFont.load_default()
        left, top, right, bottom = box
        self.area = (left + MARGIN[0], top + MARGIN[1], right - MARGIN[2], bottom - MARGIN[3])
        self.x = x if x[1] > x[0] else (x[0] - 0.5, x[0] + 0.5)
        self.y = y if y[1] > y[0] else (y[0] - 0.5, y[0] + 0.5)

    def px(self, x: float | np.ndarray, y: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        l, t, r, b = self.area
        fx = (np.asarray(x, np.float64) - self.x[0]) / (self.x[1] - self.x[0])
        fy = (np.asarray(y, np.float64) - self.y[0]) / (self.y[1] - self.y[0])
        return l + fx * (r - l), b - fy * (b - t)

    def frame(self, title: str, xlabel: str, yticks: int = 3) -> None:
        l, t, r, b = self.area
        self.draw.rectangle(self.area, outline=BLACK)
        self.draw.text((l, t - 16), title, fill=BLACK, font=self.font)
        self.draw.text((r - 6 * len(xlabel), b + 12), xlabel, fill=BLACK, font=self.font)
        for v in np.linspace(*self.y, yticks):
            _, py = self.px(self.x[0], v)
            self.draw.line([(l - 3, py), (l, py)], fill=BLACK)
            self.draw.text((l - 44, py - 6), f"{v:.2f}", fill=BLACK, font=self.font)
        for v in np.linspace(*self.x, 3):
            px, _ = self.px(v, self.y[0])
            self.draw.text((px - 10, b + 2), f"{v:.3g}", fill=BLACK, font=self.font)

    def vspan(self, x0: float, x1: float, color: tuple[int, int, int]) -> None:
        (a, b), (top, bottom) = self.px([x0, x1], [self.y[1], self.y[0]])
        self.draw.rectangle([(float(a), float(top)), (float(b), float(bottom))], fill=color)

    def line(self, xs: np.ndarray, ys: np.ndarray, color: tuple[int, int, int], width: int = 1) -> None:
        px, py = self.px(xs, ys)
        if px.size == 1:
            self.draw.ellipse([(px[0] - 1, py[0] - 1), (px[0] + 1, py[0] + 1)], fill=color)
        else:
            self.draw.line(list(zip(px.tolist(), py.tolist())), fill=color, width=width)


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs where `mask` is true."""
    m = np.concatenate([[0], np.asarray(mask, np.int8).reshape(-1), [0]])
    edges = np.flatnonzero(np.diff(m))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def value_curves(
    episodes: Sequence[tuple[str, np.ndarray, np.ndarray]], v_range: tuple[float, float] = (-1.0, 0.0), columns: int = 2
) -> np.ndarray:
    """Panels of (title, values (T,), intervention (T,)): V per frame, intervention spans shaded."""
    if not episodes:
        raise ValueError("value_curves: no episodes to plot")
    w, h = 420, 200
    rows = -(-len(episodes) // columns)
    image = Image.new("RGB", (w * min(columns, len(episodes)), h * rows), WHITE)
    draw = ImageDraw.Draw(image)
    for i, (title, values, intervention) in enumerate(episodes):
        x0, y0 = (i % columns) * w, (i // columns) * h
        v = np.asarray(values, np.float64).reshape(-1)
        panel = _Panel(draw, (x0, y0, x0 + w, y0 + h), (0.0, float(max(v.size - 1, 1))), v_range)
        for a, b in _spans(np.asarray(intervention).reshape(-1) != 0):
            panel.vspan(a - 0.5, b - 0.5, SHADE)
        panel.frame(f"{title} (shaded: intervention)", "frame")
        panel.line(np.arange(v.size), np.clip(v, *v_range), BLUE, width=2)
    return np.asarray(image)


def advantage_histogram(advantages: np.ndarray, thresholds: Mapping[str, float], bins: int = 60) -> np.ndarray:
    """Histogram of `advantages` with one vertical line per named threshold."""
    adv = np.asarray(advantages, np.float64).reshape(-1)
    if adv.size == 0:
        raise ValueError("advantage_histogram: no advantages")
    lo, hi = float(min(adv.min(), *thresholds.values())), float(max(adv.max(), *thresholds.values()))
    counts, edges = np.histogram(adv, bins=bins, range=(lo, hi) if hi > lo else None)
    image = Image.new("RGB", (720, 320), WHITE)
    draw = ImageDraw.Draw(image)
    panel = _Panel(draw, (0, 0, 720, 320), (float(edges[0]), float(edges[-1])), (0.0, float(counts.max())))
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        (pa, pb), (pt, pbot) = panel.px([a, b], [c, 0.0])
        draw.rectangle([(float(pa), float(pt)), (max(float(pa), float(pb) - 1), float(pbot))], fill=BLUE)
    panel.frame(f"advantage of autonomous frames (n={adv.size})", "advantage", yticks=2)
    l, t, _, _ = panel.area
    for k, (name, thr) in enumerate(thresholds.items()):
        color = PALETTE[k % len(PALETTE)]
        panel.line(np.array([thr, thr]), np.array(panel.y), color, width=2)
        draw.text((l + 6, t + 4 + 12 * k), f"threshold {name}: {thr:.4f}", fill=color, font=panel.font)
    return np.asarray(image)


def positive_fraction(fractions: Mapping[int, float]) -> np.ndarray:
    """Bar per episode: share of its frames labelled positive."""
    if not fractions:
        raise ValueError("positive_fraction: no episodes")
    eps = sorted(fractions)
    image = Image.new("RGB", (max(360, min(1600, 60 + 8 * len(eps))), 260), WHITE)
    draw = ImageDraw.Draw(image)
    panel = _Panel(draw, (0, 0, image.width, image.height), (-0.5, len(eps) - 0.5), (0.0, 1.0))
    for i, e in enumerate(eps):
        (a, b), (top, bottom) = panel.px([i - 0.4, i + 0.4], [fractions[e], 0.0])
        draw.rectangle([(float(a), float(top)), (max(float(a), float(b)), float(bottom))], fill=GREY if fractions[e] >= 1.0 else BLUE)
    panel.frame(f"positive fraction per episode ({eps[0]}..{eps[-1]}; grey: all positive)", "episode (position)")
    return np.asarray(image)


def png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 array."""
    out = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(out, format="PNG")
    return out.getvalue()
