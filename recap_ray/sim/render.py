"""The three YAM cameras, rasterized with numpy: a few coloured discs and bars on a table.

Every camera looks straight down with an orthographic view. The head camera sees the whole
table: goal, object, both arms and grippers; things closer to it (higher z) are drawn larger.
Each wrist camera sees a square around its own fingertip, zooming in as the gripper descends.
Only the images show where the object and the goal are; the 14-d state does not.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from recap_ray.sim import kinematics, world

CAMERAS = ("head_camera", "left_wrist_camera", "right_wrist_camera")  # YAM names, in order

HEAD_CENTER = (0.0, 0.2)  # table point under the head camera's image centre
HEAD_HALF = 0.37  # half the side of the square the head camera sees, metres
HEAD_HEIGHT = 0.9  # head camera height: apparent size grows as 1 / (1 - z / HEAD_HEIGHT)
WRIST_HALF_MIN = 0.05  # wrist view half side with the fingertip on the table ...
WRIST_ZOOM = 0.5  # ... growing by this much per metre of fingertip height
TABLE = (-0.5, 0.5, -0.05, 0.62)  # table top x0, x1, y0, y1

FLOOR = (60, 60, 70)
TABLE_TOP = (205, 195, 170)
GOAL = (40, 175, 70)
OBJECT = (255, 140, 0)
LINK = (95, 95, 105)
BASE = (35, 35, 35)
PALM = ((50, 90, 230), (225, 55, 55))  # left, right
FINGER = ((20, 35, 110), (110, 20, 20))
LINK_HALF_WIDTH = 0.012
PALM_RADIUS = 0.016
FINGER_RADIUS = 0.007
BASE_RADIUS = 0.03


@dataclasses.dataclass(frozen=True)
class View:
    """An axis-aligned top-down view centred on (cx, cy), far side up, with square pixels:
    `half` is half the height it sees; a wider image sees proportionally wider."""

    cx: float
    cy: float
    half: float
    height: int
    width: int

    @property
    def half_width(self) -> float:
        """Half the width it sees, metres."""
        return self.half * self.width / self.height

    def pixel(self, x: float, y: float) -> tuple[float, float]:
        """(row, col) of a table point, in pixel-centre units (pixel (0, 0) is centred at 0, 0)."""
        col = (x - (self.cx - self.half_width)) / (2 * self.half_width) * self.width - 0.5
        row = ((self.cy + self.half) - y) / (2 * self.half) * self.height - 0.5
        return row, col

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """World y of every row (H,) and x of every column (W,), at pixel centres."""
        step = 2 * self.half / self.height
        xs = self.cx - self.half_width + (np.arange(self.width) + 0.5) * step
        ys = self.cy + self.half - (np.arange(self.height) + 0.5) * step
        return ys, xs


class _Canvas:
    """An image plus the view that maps world points onto it."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.image = np.empty((view.height, view.width, 3), dtype=np.uint8)
        self.ys, self.xs = view.grid()

    def _window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[int, int, int, int] | None:
        r_top, c_left = self.view.pixel(x0, y1)
        r_bot, c_right = self.view.pixel(x1, y0)
        c0, c1 = max(0, math.floor(c_left)), min(self.view.width, math.ceil(c_right) + 1)
        r0, r1 = max(0, math.floor(r_top)), min(self.view.height, math.ceil(r_bot) + 1)
        return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None

    def fill(self, color: tuple[int, int, int]) -> None:
        self.image[:] = color

    def rect(self, x0: float, x1: float, y0: float, y1: float, color: tuple[int, int, int]) -> None:
        """Fill every pixel whose centre lies inside the rectangle."""
        cols = np.flatnonzero((self.xs >= x0) & (self.xs <= x1))
        rows = np.flatnonzero((self.ys >= y0) & (self.ys <= y1))
        if cols.size and rows.size:  # both runs are contiguous: xs rise, ys fall
            self.image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = color

    def disc(self, x: float, y: float, radius: float, color: tuple[int, int, int]) -> None:
        """Fill every pixel whose centre lies within `radius` of (x, y)."""
        win = self._window(x - radius, x + radius, y - radius, y + radius)
        if win is None:
            return
        r0, r1, c0, c1 = win
        d2 = (self.xs[c0:c1][None, :] - x) ** 2 + (self.ys[r0:r1][:, None] - y) ** 2
        self.image[r0:r1, c0:c1][d2 <= radius * radius] = color

    def bar(self, p: np.ndarray, q: np.ndarray, half_width: float, color: tuple[int, int, int]) -> None:
        """Fill every pixel whose centre lies within `half_width` of the segment p-q (table plane)."""
        win = self._window(min(p[0], q[0]) - half_width, max(p[0], q[0]) + half_width,
                           min(p[1], q[1]) - half_width, max(p[1], q[1]) + half_width)
        if win is None:
            return
        r0, r1, c0, c1 = win
        px = self.xs[c0:c1][None, :] - p[0]
        py = self.ys[r0:r1][:, None] - p[1]
        dx, dy = q[0] - p[0], q[1] - p[1]
        length2 = dx * dx + dy * dy
        t = np.clip((px * dx + py * dy) / length2, 0.0, 1.0) if length2 > 0 else 0.0
        d2 = (px - t * dx) ** 2 + (py - t * dy) ** 2
        self.image[r0:r1, c0:c1][d2 <= half_width * half_width] = color


def head_view(config: world.TaskConfig) -> View:
    """The head camera's view of the table."""
    return View(HEAD_CENTER[0], HEAD_CENTER[1], HEAD_HALF, config.image_height, config.image_width)


def wrist_view(config: world.TaskConfig, tip: np.ndarray) -> View:
    """A wrist camera's view around its fingertip `tip` (3,)."""
    half = WRIST_HALF_MIN + WRIST_ZOOM * max(0.0, float(tip[2]))
    return View(float(tip[0]), float(tip[1]), half, config.image_height, config.image_width)


Chain = tuple[np.ndarray, np.ndarray, np.ndarray]


def _draw(canvas: _Canvas, config: world.TaskConfig, state: world.World, chains: list[Chain], head: bool) -> None:
    def size(z: float) -> float:  # the head camera sees higher things larger
        return 1.0 / (1.0 - min(z, 0.5 * HEAD_HEIGHT) / HEAD_HEIGHT) if head else 1.0

    canvas.fill(FLOOR)
    canvas.rect(*TABLE, TABLE_TOP)
    canvas.disc(state.goal[0], state.goal[1], config.goal_radius, GOAL)
    obj = state.obj
    held = bool(state.held.any())
    if not held:
        canvas.disc(obj[0], obj[1], config.object_radius * size(obj[2]), OBJECT)
    for arm, (elbow, wrist, _) in zip(config.arms, chains):
        base = np.asarray(arm.base)
        canvas.bar(base, elbow, LINK_HALF_WIDTH * size(elbow[2] / 2), LINK)
        canvas.bar(elbow, wrist, LINK_HALF_WIDTH * size((elbow[2] + wrist[2]) / 2), LINK)
        canvas.disc(base[0], base[1], BASE_RADIUS, BASE)
    for side, (_, _, tip) in enumerate(chains):
        canvas.disc(tip[0], tip[1], PALM_RADIUS * size(tip[2]), PALM[side])
    if held:
        canvas.disc(obj[0], obj[1], config.object_radius * size(obj[2]), OBJECT)
    for side, ((_, _, tip), sl) in enumerate(zip(chains, world.ARM_SLICES)):
        opening = float(state.q[world.GRIPPERS[side]])
        axis = float(kinematics.finger_axis(state.q[sl]))
        offset = (0.012 + 0.016 * opening) * size(tip[2])
        for sign in (-1.0, 1.0):
            canvas.disc(tip[0] + sign * offset * math.cos(axis), tip[1] + sign * offset * math.sin(axis),
                        FINGER_RADIUS * size(tip[2]), FINGER[side])


def render(config: world.TaskConfig, state: world.World) -> dict[str, np.ndarray]:
    """All three camera images, uint8 (H, W, 3), keyed by YAM camera name."""
    chains = [kinematics.chain(arm, state.q[sl]) for arm, sl in zip(config.arms, world.ARM_SLICES)]
    views = (head_view(config), wrist_view(config, chains[0][2]), wrist_view(config, chains[1][2]))
    frames = {}
    for name, view in zip(CAMERAS, views):
        canvas = _Canvas(view)
        _draw(canvas, config, state, chains, head=name == "head_camera")
        frames[name] = canvas.image
    return frames
