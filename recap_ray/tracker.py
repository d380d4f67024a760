"""Metric trackers passed into long-running loops: TensorBoard event files, or nothing (tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol

import numpy as np


class Tracker(Protocol):
    """Where scalars and histograms go; loops take one instead of reaching for a global."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def histogram(self, step: int, name: str, values: np.ndarray) -> None: ...

    def image(self, step: int, name: str, image: np.ndarray) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    """Drops everything."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def histogram(self, step: int, name: str, values: np.ndarray) -> None:
        pass

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    """TensorBoard event files under `log_dir` (tensorboardX: no TensorFlow needed)."""

    def __init__(self, log_dir: str | Path):
        from tensorboardX import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(log_dir), flush_secs=10)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._writer.add_scalar(name, float(value), step)

    def histogram(self, step: int, name: str, values: np.ndarray) -> None:
        self._writer.add_histogram(name, np.asarray(values, np.float64).ravel(), step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """`image`: uint8 (H, W, 3)."""
        self._writer.add_image(name, np.asarray(image), step, dataformats="HWC")

    def close(self) -> None:
        self._writer.close()
