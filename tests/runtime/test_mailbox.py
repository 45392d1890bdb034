"""The device thread's reports reach the loop in order, a burst with one wake-up."""

from __future__ import annotations

import asyncio
import threading
from unittest import mock

import pytest

from services.runtime.mailbox import LoopMailbox, held_reports


async def _drained() -> None:
    # Two turns of the loop: the drain handle, then anything it scheduled.
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_reports_from_threads_arrive_in_posting_order() -> None:
    loop = asyncio.get_running_loop()
    mailbox = LoopMailbox(loop)
    seen: list[tuple[int, int]] = []
    done = asyncio.Event()

    def worker(name: int) -> None:
        for index in range(500):
            mailbox.post(seen.append, (name, index))
        mailbox.post(lambda: loop.call_soon(done.set) if name == 1 else None)

    threads = [threading.Thread(target=worker, args=(name,)) for name in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    await asyncio.wait_for(done.wait(), 10)
    await _drained()
    for name in (0, 1):
        assert [index for who, index in seen if who == name] == list(range(500))


async def test_a_burst_wakes_the_loop_once() -> None:
    loop = asyncio.get_running_loop()
    mailbox = LoopMailbox(loop)
    seen: list[int] = []
    with mock.patch.object(loop, "call_soon_threadsafe", wraps=loop.call_soon_threadsafe) as wake:
        thread = threading.Thread(target=lambda: [mailbox.post(seen.append, i) for i in range(16)])
        thread.start()
        thread.join()
        await _drained()
        assert seen == list(range(16))
        assert wake.call_count == 1
        mailbox.post(seen.append, 16)  # the drain ran: the next report wakes the loop again
        await _drained()
        assert wake.call_count == 2
    assert seen == list(range(17))


async def test_a_failing_report_does_not_drop_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    mailbox = LoopMailbox(loop)
    seen: list[int] = []

    def fail() -> None:
        raise ValueError("boom")

    mailbox.post(seen.append, 1)
    mailbox.post(fail)
    mailbox.post(seen.append, 2)
    await _drained()
    assert seen == [1, 2]
    assert "device-thread report failed" in caplog.text


def test_posts_after_the_loop_closed_are_dropped() -> None:
    loop = asyncio.new_event_loop()
    mailbox = LoopMailbox(loop)
    loop.close()
    mailbox.post(print, "never")  # no error: shutdown races the device thread
    mailbox.post(print, "never")


async def test_held_reports_wake_the_loop_once_when_the_block_ends() -> None:
    loop = asyncio.get_running_loop()
    mailboxes = [LoopMailbox(loop), LoopMailbox(loop)]
    seen: list[tuple[int, int]] = []
    woken_inside: list[int] = []

    def step() -> None:
        with held_reports():
            for index in range(8):
                for which, mailbox in enumerate(mailboxes):
                    mailbox.post(seen.append, (which, index))
                with held_reports():  # nested blocks leave the sending to the outer one
                    mailboxes[0].post(seen.append, (0, 100 + index))
            woken_inside.append(wake.call_count)

    with mock.patch.object(loop, "call_soon_threadsafe", wraps=loop.call_soon_threadsafe) as wake:
        thread = threading.Thread(target=step)
        thread.start()
        thread.join()
        await _drained()
        assert woken_inside == [0]
        assert wake.call_count == 2  # one per mailbox
    assert [i for who, i in seen if who == 1] == list(range(8))
    assert [i for who, i in seen if who == 0] == [x for i in range(8) for x in (i, 100 + i)]
    mailboxes[0].wake()  # nothing pending: nothing scheduled
    await _drained()
    assert len(seen) == 24
