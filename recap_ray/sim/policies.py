"""Local policies with the served-policy interface: openpi observation dict in, action chunk out.

`Scripted` turns a scripted controller into such a policy. The controller needs the true world,
so the policy is bound to the environment being evaluated and plans its chunk on a copy of it;
it checks that the observation it is handed is that environment's. `Random` ignores the
observation. Both return `{"actions": float32 (horizon, 14)}` like an openpi server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import numpy as np

from recap_ray.sim import env as env_lib
from recap_ray.sim import kinematics, scripted, world

Controller = Callable[[world.World], tuple[np.ndarray, scripted.Plan]]


class Scripted:
    """A scripted controller planning `horizon` steps ahead on a copy of the environment's world.

    A controller with per-episode state (`scripted.Degraded`) is reset, from this policy's own
    seeded stream, whenever the environment starts a new episode.
    """

    def __init__(self, environment: env_lib.HandoverEnv, controller: Controller, horizon: int = 10,
                 seed: int | Sequence[int] = 0) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.env = environment
        self.controller = controller
        self.horizon = horizon
        self.rng = np.random.default_rng(seed)
        self._episode: world.World | None = None

    def __call__(self, observation: dict) -> dict[str, np.ndarray]:
        """The next `horizon` actions the controller would take from the current state."""
        state = np.asarray(observation["state"], dtype=np.float32)
        if not np.array_equal(state, self.env.state):
            raise ValueError("Scripted policy: observation state is not its environment's current state")
        if self.env.world is not self._episode:
            self._episode = self.env.world
            if isinstance(self.controller, scripted.Degraded):
                self.controller.reset(self.rng)
        sim = self.env.world.copy()
        actions = np.empty((self.horizon, kinematics.STATE_DIM), dtype=np.float32)
        for h in range(self.horizon):
            action, _ = self.controller(sim)
            actions[h] = action
            world.advance(self.env.config, sim, action)
        return {"actions": actions}


class Random:
    """Uniformly random joint targets over [-pi, pi] and gripper commands over [0, 1]."""

    def __init__(self, seed: int | Sequence[int] = 0, horizon: int = 10) -> None:
        self.rng = np.random.default_rng(seed)
        self.horizon = horizon

    def __call__(self, observation: dict) -> dict[str, np.ndarray]:
        """A chunk of random actions; the observation is ignored."""
        actions = self.rng.uniform(-np.pi, np.pi, (self.horizon, kinematics.STATE_DIM))
        actions[:, list(world.GRIPPERS)] = self.rng.uniform(0.0, 1.0, (self.horizon, 2))
        return {"actions": actions.astype(np.float32)}
