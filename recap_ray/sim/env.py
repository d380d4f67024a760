"""The handover task as an environment: seeded resets, steps, time limit, camera frames and the
openpi-style observation a served policy receives.

The observation follows openpi's Aloha request (serving spec §1.5): `images` under `cam_high`,
`cam_left_wrist`, `cam_right_wrist` (YAM's head / left wrist / right wrist cameras) as uint8,
channels first by default as openpi's AlohaInputs expects; `state` float32 (14,); `prompt`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from recap_ray.sim import render, world

# YAM dataset feature key -> openpi/Aloha request image key.
OPENPI_CAMERAS = {
    "head_camera": "cam_high",
    "left_wrist_camera": "cam_left_wrist",
    "right_wrist_camera": "cam_right_wrist",
}
IMAGE_KEY_PREFIX = "observation.images."

ImageLayout = Literal["chw", "hwc"]


def openpi_observation(frames: dict[str, np.ndarray], state: np.ndarray, prompt: str,
                       layout: ImageLayout = "chw") -> dict:
    """The request dict a policy sees: images keyed like openpi's Aloha cameras, state, prompt."""
    if layout not in ("chw", "hwc"):
        raise ValueError(f"image layout must be 'chw' or 'hwc', got {layout!r}")
    images = {}
    for yam, key in OPENPI_CAMERAS.items():
        image = frames[yam]
        images[key] = np.ascontiguousarray(image.transpose(2, 0, 1)) if layout == "chw" else image
    return {"images": images, "state": np.asarray(state, dtype=np.float32), "prompt": prompt}


class HandoverEnv:
    """One simulated episode at a time: `reset(seed)`, then `step(action)` until `done`."""

    def __init__(self, config: world.TaskConfig = world.TaskConfig()) -> None:
        self.config = config
        self._world: world.World | None = None
        self.success = False
        self._frames: tuple[int, dict[str, np.ndarray]] | None = None  # (moves, frames) of the last render
        self._moves = 0  # resets + steps so far: names the current state for the render cache

    @property
    def world(self) -> world.World:
        """The full simulator state (privileged: scripted controllers read it, policies do not)."""
        if self._world is None:
            raise RuntimeError("HandoverEnv: call reset(seed) before using the environment")
        return self._world

    def reset(self, seed: int | np.random.SeedSequence | list[int] | tuple[int, ...]) -> None:
        """Start a new episode; the same seed always gives the same start and goal."""
        self._world = world.reset(self.config, np.random.default_rng(seed))
        self.success = False
        self._moves += 1

    @property
    def steps(self) -> int:
        """Steps taken in this episode."""
        return self.world.steps

    @property
    def done(self) -> bool:
        """True once the episode succeeded or ran out of time."""
        return self.success or self.world.steps >= self.config.max_steps

    @property
    def state(self) -> np.ndarray:
        """The robot state, float32 (14,): joints and grippers only."""
        return self.world.q.astype(np.float32)

    def step(self, action: np.ndarray) -> bool:
        """Apply one 14-d action; returns `done`."""
        if self.done:
            raise RuntimeError(f"HandoverEnv.step: episode already done after {self.world.steps} steps")
        world.advance(self.config, self.world, action)
        self._moves += 1
        self.success = world.success(self.config, self.world)
        return self.done

    def frames(self) -> dict[str, np.ndarray]:
        """The three camera images, uint8 (H, W, 3), keyed by YAM camera name; rendered once a state
        (a DAgger session's recorder and its policy both look at every state the policy is asked in)."""
        if self._frames is None or self._frames[0] != self._moves:
            self._frames = (self._moves, render.render(self.config, self.world))
        return dict(self._frames[1])

    def observation(self, layout: ImageLayout = "chw") -> dict:
        """The openpi-style observation dict for the current state."""
        return openpi_observation(self.frames(), self.state, self.config.prompt, layout)
