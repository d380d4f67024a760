"""ContinuousBatcher: a lone request runs at once; requests queued during a call share the next one."""

from __future__ import annotations

import asyncio
import threading

import pytest

from recap_ray.serve.batcher import ContinuousBatcher


def test_requests_queued_while_a_batch_runs_form_the_next_batch() -> None:
    release = threading.Event()
    seen: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        seen.append(list(items))
        if len(seen) == 1:
            release.wait(5)  # hold the first batch until the others have queued
        return [i * 10 for i in items]

    async def main() -> list[int]:
        b = ContinuousBatcher(fn, max_batch_size=4)
        first = asyncio.create_task(b.submit(0))
        while not seen:
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(b.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50, 60]
    # Ray Serve's @serve.batch with no wait would give [0], [1], [2], ... here.
    assert seen == [[0], [1, 2, 3, 4], [5, 6]]


def test_an_exception_entry_goes_to_its_caller_only_and_a_crash_to_the_whole_batch() -> None:
    def fn(items: list[int]) -> list[object]:
        if 99 in items:
            raise RuntimeError("model crashed")
        return [ValueError(f"bad {i}") if i < 0 else i for i in items]

    async def main() -> tuple[list[object], list[object]]:
        b = ContinuousBatcher(fn, max_batch_size=8, wait_s=0.02)
        mixed = await asyncio.gather(*(b.submit(i) for i in (1, -2, 3)), return_exceptions=True)
        crashed = await asyncio.gather(b.submit(99), b.submit(4), return_exceptions=True)
        return mixed, crashed

    mixed, crashed = asyncio.run(main())
    assert mixed[0] == 1 and mixed[2] == 3 and isinstance(mixed[1], ValueError) and "bad -2" in str(mixed[1])
    assert all(isinstance(c, RuntimeError) for c in crashed)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        ContinuousBatcher(lambda items: items, max_batch_size=0)
    with pytest.raises(ValueError, match="wait_s"):
        ContinuousBatcher(lambda items: items, max_batch_size=1, wait_s=-1)
