"""Metric trackers passed into long-running loops: TensorBoard event files, or nothing (tests)."""

from __future__ import annotations

import tempfile
import time
from typing import Mapping, Protocol

import numpy as np
from etils import epath


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
    """TensorBoard event files under `log_dir` (tensorboardX: no TensorFlow needed).

    In a bucket (`gs://...`, `s3://...`) the events are written to a local directory and copied up
    through epath every `upload_secs` (checked as metrics arrive) and at close. tensorboardX's own
    bucket writers are avoided: each stays alive until the process exits (an atexit hook holds it)
    and its GCS writer uploads once more then, retrying for 120 s when the bucket is unreachable.
    """

    def __init__(self, log_dir: epath.PathLike, upload_secs: float = 60.0):
        from tensorboardX import SummaryWriter

        self.log_dir = epath.Path(log_dir)
        self._remote = "://" in str(self.log_dir)
        self._local = epath.Path(tempfile.mkdtemp(prefix="tensorboard-")) if self._remote else self.log_dir
        self._writer = SummaryWriter(str(self._local), flush_secs=10)
        self._upload_secs, self._uploaded = upload_secs, time.monotonic()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._writer.add_scalar(name, float(value), step)
        self._upload()

    def histogram(self, step: int, name: str, values: np.ndarray) -> None:
        self._writer.add_histogram(name, np.asarray(values, np.float64).ravel(), step)
        self._upload()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """`image`: uint8 (H, W, 3)."""
        self._writer.add_image(name, np.asarray(image), step, dataformats="HWC")
        self._upload()

    def close(self) -> None:
        self._writer.close()
        self._upload(final=True)
        if self._remote:
            self._local.rmtree()

    def _upload(self, final: bool = False) -> None:
        """Copy the event files to the bucket (whole: an object cannot be appended to)."""
        if not self._remote or (not final and time.monotonic() - self._uploaded < self._upload_secs):
            return
        self._writer.flush()
        for f in self._local.iterdir():
            (self.log_dir / f.name).write_bytes(f.read_bytes())
        self._uploaded = time.monotonic()
