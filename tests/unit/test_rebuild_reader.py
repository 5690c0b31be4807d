"""A rebuild's reader is stopped even when it swallows the cancellation (Python 3.11's
asyncio.wait_for does when its inner wait completes at the same moment) and then blocks on the
full queue nobody reads any more: the hang a parallel rebuild once showed in the test suite."""

from __future__ import annotations

import asyncio

from gridloop_events.rebuild import _stop_reader


async def test_a_reader_that_swallows_its_cancellation_is_still_stopped() -> None:
    chunks: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
    await chunks.put("a chunk nobody will apply")
    swallowed = asyncio.Event()

    async def reader() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # as wait_for does: the cancellation is lost
        await chunks.put("the next chunk")  # the queue is full: blocks
        await chunks.put("and the one after")

    task = asyncio.create_task(reader())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(_stop_reader(task, chunks))  # type: ignore[arg-type]
    # asyncio.wait does not cancel what it waits for: a hang shows as "not done".
    done, _ = await asyncio.wait([stopping], timeout=10)
    hung = stopping not in done
    for t in (stopping, task):
        t.cancel()
    assert not hung, "the reader was not stopped"
    assert swallowed.is_set() and task.done()


async def test_a_reader_that_already_finished_is_left_as_it_is() -> None:
    chunks: asyncio.Queue[object] = asyncio.Queue(maxsize=2)

    async def reader() -> None:
        await chunks.put(None)

    task = asyncio.create_task(reader())
    await task
    await _stop_reader(task, chunks)  # type: ignore[arg-type]
    assert not task.cancelled() and chunks.qsize() == 1
