"""Training batches from a dataset version: order, per-process slices, prefetch, resume.

Order: epoch e is a permutation of the sample index drawn from (seed, e); global batch b of
epoch e is positions [b*B, (b+1)*B) of it (the remainder of an epoch is dropped); process p of P
takes the contiguous slice [p*B/P, (p+1)*B/P) of every global batch. A `Position` (epoch and
batch of the next batch, plus what it is only valid for) is JSON-serialisable; a loader started
from a saved one yields exactly what the interrupted loader would have yielded next, for any P
that divides B. A thread pool decodes whole per-process batches ahead, in order, at most
`prefetch` batches in flight; each thread reads through its own `Dataset` (decoders are stateful).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np

from recap_ray.data import dataset as dataset_mod
from recap_ray.data import versions
from recap_ray.train import samples


class PositionError(ValueError):
    """A saved position does not fit this loader (other dataset, selection, seed or global batch)."""


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run's data stands: the next global batch, and the order it belongs to."""

    epoch: int  # epoch of the next batch
    batch: int  # index of the next global batch within its epoch
    seed: int  # order and per-sample randomness seed
    global_batch: int  # samples per global batch (all processes together)
    dataset_fingerprint: str  # `versions.fingerprint` of the dataset version
    sample_index: str  # `SampleIndex.digest` of the selected frames

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Position:
        """Inverse of `to_dict`; missing or unknown keys and wrong types raise `PositionError`."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        missing, extra = sorted(set(fields) - set(data)), sorted(set(data) - set(fields))
        if missing or extra:
            raise PositionError(f"data position: missing keys {missing}, unknown keys {extra}")
        for name, kind in fields.items():
            want = int if kind == "int" else str
            if type(data[name]) is not want:
                raise PositionError(f"data position: {name} is {data[name]!r}, expected {want.__name__}")
        return cls(**data)


class Order:
    """Per-epoch permutations of `num_samples` and the global batches cut from them."""

    def __init__(self, num_samples: int, global_batch: int, seed: int):
        if global_batch <= 0:
            raise ValueError(f"order: global batch must be positive, got {global_batch}")
        if seed < 0:
            raise ValueError(f"order: seed must be non-negative, got {seed}")
        if num_samples < global_batch:
            raise ValueError(f"order: {num_samples} samples cannot fill one global batch of {global_batch}")
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        """Sample ids (N,) in epoch `epoch`'s order."""
        if self._cached is None or self._cached[0] != epoch:
            seq = np.random.SeedSequence([self.seed, epoch, samples.ORDER_STREAM])
            self._cached = (epoch, np.random.default_rng(seq).permutation(self.num_samples))
        return self._cached[1]

    def batch_positions(self, batch: int, process_index: int = 0, process_count: int = 1) -> range:
        """Positions in the epoch's order of process `process_index`'s share of global batch `batch`."""
        if not 0 <= batch < self.batches_per_epoch:
            raise IndexError(f"order: batch {batch} outside [0, {self.batches_per_epoch})")
        check_processes(self.global_batch, process_index, process_count)
        per = self.global_batch // process_count
        start = batch * self.global_batch + process_index * per
        return range(start, start + per)


def check_processes(global_batch: int, process_index: int, process_count: int) -> None:
    """Raise unless 0 <= process_index < process_count and process_count divides the global batch."""
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"process {process_index} of {process_count}: expected 0 <= index < count")
    if global_batch % process_count:
        raise ValueError(
            f"global batch {global_batch} does not divide by {process_count} processes; "
            "choose a global batch that is a multiple of the process count"
        )


class BatchLoader:
    """This process's batches of a dataset version, decoded ahead, resumable from `position`.

    Iterating yields numpy batch dicts (the maker's samples stacked) for batch after batch,
    crossing epochs, forever unless `num_epochs` is set. `position` is the next batch to be
    yielded (not the next one decoded). An error while making a batch closes the loader and is
    raised by `next()`, naming the episode and frame. Use as a context manager or call `close()`.

    `threads` workers decode whole batches, at most `prefetch` ahead (0 threads: decode in `next()`);
    `episodes` restricts the sample index; `fingerprint` skips hashing the dataset when known.
    """

    def __init__(
        self,
        root: str | Path,
        maker: samples.SampleMaker,
        *,
        global_batch: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        episodes: Sequence[int] | None = None,
        position: Position | Mapping[str, Any] | None = None,
        num_epochs: int | None = None,
        threads: int = 4,
        prefetch: int = 8,
        fingerprint: str | None = None,
    ):
        check_processes(global_batch, process_index, process_count)
        if threads < 0 or prefetch < 1:
            raise ValueError(f"batch loader: threads must be >= 0 and prefetch >= 1, got {threads} and {prefetch}")
        self.root, self.maker = Path(root), maker
        self.process_index, self.process_count, self.num_epochs = process_index, process_count, num_epochs
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[dataset_mod.Dataset] = []
        self._pending: collections.deque[futures.Future] = collections.deque()
        self._pool: futures.ThreadPoolExecutor | None = None
        self._closed = False
        try:
            ds = self._dataset()
            missing = [k for k in (*maker.video_keys, *maker.column_keys) if k not in ds.features]
            if missing:
                raise KeyError(f"{self.root}: the sample maker needs features {missing}, not in the dataset")
            self.index = samples.SampleIndex.build(ds.meta, episodes)
            self.columns = samples.EpisodeColumns(ds, maker.column_keys, self.index.episode_ids)
            self.order = Order(len(self.index), global_batch, seed)
            self._fingerprint = fingerprint or versions.fingerprint(self.root)
            self._digest = self.index.digest()
            self._next = self._start(position)
        except BaseException:
            self.close()
            raise
        self._submit = self._next
        self._prefetch = prefetch
        if threads:
            self._pool = futures.ThreadPoolExecutor(threads, thread_name_prefix="recap-batches")

    # -- position -------------------------------------------------------------------------

    @property
    def position(self) -> Position:
        """The position of the next batch `next()` returns."""
        epoch, batch = self._next
        return Position(epoch, batch, self.order.seed, self.order.global_batch, self._fingerprint, self._digest)

    def _start(self, position: Position | Mapping[str, Any] | None) -> tuple[int, int]:
        if position is None:
            return 0, 0
        pos = position if isinstance(position, Position) else Position.from_dict(position)
        now = {"dataset_fingerprint": self._fingerprint, "sample_index": self._digest,
               "seed": self.order.seed, "global_batch": self.order.global_batch}  # fmt: skip
        for name, value in now.items():
            if getattr(pos, name) != value:
                raise PositionError(
                    f"{self.root}: the saved data position has {name} {getattr(pos, name)!r}, this loader {value!r}"
                )
        if pos.epoch < 0 or not 0 <= pos.batch < self.order.batches_per_epoch:
            raise PositionError(
                f"{self.root}: saved position epoch {pos.epoch}, batch {pos.batch} is outside "
                f"[0, {self.order.batches_per_epoch}) batches per epoch"
            )
        return pos.epoch, pos.batch

    def _advance(self, at: tuple[int, int]) -> tuple[int, int]:
        epoch, batch = at[0], at[1] + 1
        return (epoch + 1, 0) if batch == self.order.batches_per_epoch else (epoch, batch)

    def _finished(self, at: tuple[int, int]) -> bool:
        return self.num_epochs is not None and at[0] >= self.num_epochs

    # -- decoding -------------------------------------------------------------------------

    def _dataset(self) -> dataset_mod.Dataset:
        """This thread's reader of the dataset."""
        ds = getattr(self._local, "ds", None)
        if ds is None:
            ds = dataset_mod.open(self.root)
            self._local.ds = ds
            with self._lock:
                self._opened.append(ds)
        return ds

    def keys(self, epoch: int, batch: int) -> list[samples.SampleKey]:
        """The sample keys of this process's share of global batch `batch` of `epoch`."""
        positions = self.order.batch_positions(batch, self.process_index, self.process_count)
        ids = self.order.permutation(epoch)[positions.start : positions.stop]
        return [
            samples.SampleKey(int(self.index.episodes[i]), int(self.index.frames[i]), self.order.seed, epoch, p)
            for i, p in zip(ids, positions)
        ]

    def _make(self, keys: list[samples.SampleKey]) -> dict[str, Any]:
        return samples.make_batch(self._dataset(), self.columns, self.maker, keys)

    def _fill(self) -> None:
        assert self._pool is not None
        while len(self._pending) < self._prefetch and not self._finished(self._submit):
            self._pending.append(self._pool.submit(self._make, self.keys(*self._submit)))
            self._submit = self._advance(self._submit)

    # -- iteration ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._closed:
            raise RuntimeError(f"{self.root}: the batch loader is closed")
        if self._pool is None:
            if self._finished(self._next):
                raise StopIteration
            make = functools.partial(self._make, self.keys(*self._next))
        else:
            self._fill()
            if not self._pending:
                raise StopIteration
            make = self._pending.popleft().result
            self._fill()  # keep `prefetch` batches in flight while this one finishes
        try:
            batch = make()
        except BaseException:
            self.close()
            raise
        self._next = self._advance(self._next)
        return batch

    def close(self) -> None:
        """Cancel pending work, join the threads, close the readers. Idempotent."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        with self._lock:
            for ds in self._opened:
                ds.close()
            self._opened.clear()

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
