"""The delivery loop against a real OPC UA upstream: dead letters, partial results, retry
order, prompt wake-up, the status board, and the backoff rule."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gateway import delivery as delivery_mod
from gateway.board import StatusBoard
from gateway.delivery import Delivery, Upstream, backoff_s
from gateway.errors import UpstreamError
from gateway.model import DeliveryResult, NewMessage, Outcome, StoredMessage
from gateway.outbox import Outbox
from gateway.settings import DeliverySettings, StoreSettings
from gateway.status.fields import board_values
from tests.test_faults import until
from tools.mini_upstream import MiniUpstream, MiniUpstreamClient, applied

FAST = DeliverySettings(batch_max=10, retry_initial_s=0.02, retry_max_s=0.2)


class Stuttering:
    """A real upstream client that the gateway sees answer partially: of each batch only the
    first ``take`` are sent, and every third call answers RETRY for the first of them."""

    def __init__(self, inner: Upstream, take: int) -> None:
        self.inner, self.take, self.calls = inner, take, 0

    async def deliver(self, stream: str,
                      batch: Sequence[StoredMessage]) -> Sequence[DeliveryResult]:
        self.calls += 1
        if self.calls % 3 == 0:
            return [DeliveryResult(Outcome.RETRY, "BadTooManyOperations: busy")]
        return await self.inner.deliver(stream, batch[: self.take])


class CancelledUnderneath:
    """A real upstream client whose first calls fail the way asyncua fails when a
    connection drops while a reply is awaited: a CancelledError subclass nobody asked for."""

    def __init__(self, inner: Upstream, failures: int) -> None:
        self.inner, self.failures = inner, failures

    async def deliver(self, stream: str,
                      batch: Sequence[StoredMessage]) -> Sequence[DeliveryResult]:
        if self.failures:
            self.failures -= 1
            raise StrayCancel("request future cancelled as the connection was lost")
        return await self.inner.deliver(stream, batch)


class StrayCancel(asyncio.CancelledError):
    pass


Env = tuple[Outbox, MiniUpstream, MiniUpstreamClient]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    up = MiniUpstream(tmp_path / "up.sqlite")
    await up.start()
    outbox = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite"))
    client = MiniUpstreamClient(f"opc.tcp://127.0.0.1:{up.port}/")
    yield outbox, up, client
    await client.close()
    await outbox.close()
    await up.stop()


async def _serve(delivery: Delivery) -> asyncio.Task[None]:
    return asyncio.create_task(delivery.serve())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_dead_letter_does_not_block_the_stream(env: Env) -> None:
    outbox, up, client = env
    board = StatusBoard()
    task = await _serve(Delivery(outbox, client, FAST, board))
    msgs = [NewMessage("event", "E", f"k{n}", {"n": n, **({"invalid": "BadSerial"} if n == 4
                                                            else {})}) for n in range(12)]
    await outbox.submit(msgs)

    async def settled() -> bool:
        s = await outbox.stats()
        return s.pending == 0 and board.health.get("dead_letters") == 1

    await until(settled)
    await _stop(task)
    assert [k for _, k, _ in applied(up.db_path)] == [f"k{n}" for n in range(12) if n != 4]
    [dead] = await outbox.dead_list()
    assert dead.message.key == "k4" and dead.reason == "INVALID: BadSerial"
    assert "BadSerial" in str(board.health["outbox_dead_alarm"])
    assert board.health["outbox_backlog"] == 0


async def test_partial_and_retry_results_keep_the_order(env: Env) -> None:
    outbox, up, client = env
    stutter = Stuttering(client, take=3)
    task = await _serve(Delivery(outbox, stutter, FAST, StatusBoard(), seed=3))
    for lo in range(0, 60, 20):
        await outbox.submit([NewMessage(f"s{n % 2}", "E", f"k{n}", {"n": n})
                             for n in range(lo, lo + 20)])
    await until(lambda: _drained(outbox))
    await _stop(task)
    rows = applied(up.db_path)
    for s in (0, 1):
        assert [b["n"] for st, _, b in rows if st == f"s{s}"] == list(range(s, 60, 2))
    assert stutter.calls > 20  # really went through partial batches and retries


async def _drained(outbox: Outbox) -> bool:
    return (await outbox.stats()).pending == 0


async def test_new_messages_wake_delivery_without_polling(env: Env,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        ) -> None:
    outbox, up, client = env
    monkeypatch.setattr(delivery_mod, "FALLBACK_POLL_S", 3600.0)
    task = await _serve(Delivery(outbox, client, FAST, StatusBoard()))
    await asyncio.sleep(0.2)  # idle: no stream known yet
    await outbox.submit([NewMessage("pool", "E", "p1", {})])  # a new stream
    await until(lambda: _drained(outbox), within_s=30)
    await outbox.submit([NewMessage("pool", "E", "p2", {})])  # a known, idle stream
    await until(lambda: _drained(outbox), within_s=30)
    await _stop(task)
    assert [k for _, k, _ in applied(up.db_path)] == ["p1", "p2"]


async def test_retried_dead_letter_is_sent_next(env: Env) -> None:
    outbox, _up, client = env
    await outbox.submit([NewMessage("event", "E", "a", {"invalid": "no pool"}),
                         NewMessage("event", "E", "b", {})])
    task = await _serve(Delivery(outbox, client, FAST, StatusBoard()))
    await until(lambda: _drained(outbox))
    [dead] = await outbox.dead_list()
    assert await outbox.dead_retry(dead.message.id)
    await until(lambda: _drained(outbox))
    await _stop(task)
    [again] = await outbox.dead_list()  # the upstream still refuses it: dead again
    assert again.message.key == "a" and again.message.attempts == 1


def test_backoff_is_capped_exponential_with_jitter() -> None:
    s = DeliverySettings(retry_initial_s=0.5, retry_max_s=60.0)
    rng = random.Random(1)
    for failures, cap in [(1, 0.5), (2, 1.0), (4, 4.0), (8, 60.0), (50, 60.0), (10**6, 60.0)]:
        delays = [backoff_s(failures, s, rng) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len({round(d, 6) for d in delays}) > 100  # jittered, not lock-step


async def test_a_cancel_raised_by_the_transport_is_a_retry_not_a_dead_stream(env: Env) -> None:
    """A CancelledError that nobody requested (asyncua on a lost connection) must not end the
    stream's task: the batch is retried and the stream drains; a real cancel still stops."""
    outbox, up, client = env
    board = StatusBoard()
    task = await _serve(Delivery(outbox, CancelledUnderneath(client, 3), FAST, board))
    await outbox.submit([NewMessage("event", "E", f"c{n}", {"n": n}) for n in range(5)])

    async def drained() -> bool:
        return (await outbox.stats()).pending == 0

    await until(drained)
    assert [k for _, k, _ in applied(up.db_path)] == [f"c{n}" for n in range(5)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class Misconfigured:
    """A real upstream client where one stream's calls hit a configuration fault until an
    operator fixes it: they raise UpstreamError(permanent=True), as a whole call refused for
    good does (e.g. no manager object for that stream)."""

    def __init__(self, inner: Upstream, stream: str) -> None:
        self.inner, self.stream, self.fixed, self.refused = inner, stream, False, 0

    async def deliver(self, stream: str,
                      batch: Sequence[StoredMessage]) -> Sequence[DeliveryResult]:
        if stream == self.stream and not self.fixed:
            self.refused += 1
            raise UpstreamError("OPEN-SCS opc.tcp://up:4855/: no aggregation manager object "
                                "under Objects/OPENSCSObjects", permanent=True)
        return await self.inner.deliver(stream, batch)


def _alarms(board: StatusBoard) -> dict[str, str]:
    """The ``alarms`` status field as the status server publishes it."""
    return json.loads(str(board_values(board, None)["alarms"]))


async def test_a_permanent_whole_call_failure_stalls_and_condemns_nothing(env: Env) -> None:
    outbox, up, client = env
    board = StatusBoard()
    upstream = Misconfigured(client, "aggregation")
    await outbox.submit([NewMessage("aggregation", "E", f"a{n}", {"n": n}) for n in range(5)]
                        + [NewMessage("event", "E", f"e{n}", {"n": n}) for n in range(5)])
    task = await _serve(Delivery(outbox, upstream, FAST, board, seed=5))

    async def other_stream_done_and_retried() -> bool:
        return upstream.refused >= 3 and [k for _, k, _ in applied(up.db_path)] == [
            f"e{n}" for n in range(5)]

    await until(other_stream_done_and_retried)
    # the other stream's calls got through, yet the stalled stream's alarm stays
    assert "no aggregation manager" in _alarms(board)["upstream_error"]["stream aggregation"]
    assert await outbox.dead_list() == []
    upstream.fixed = True
    await until(lambda: _drained(outbox))
    await _stop(task)
    assert await outbox.dead_list() == []
    assert [k for s, k, _ in applied(up.db_path) if s == "aggregation"] == [
        f"a{n}" for n in range(5)]
    assert "upstream_error" not in _alarms(board)


async def test_dead_letters_of_an_earlier_run_raise_the_alarm_after_a_restart(
        tmp_path: Path) -> None:
    """An end-to-end review saw dead_letters 1 and no outbox_dead_alarm after a restart: the
    alarm was set only when a letter died in the running process."""
    up = MiniUpstream(tmp_path / "up.sqlite")
    await up.start()
    client = MiniUpstreamClient(f"opc.tcp://127.0.0.1:{up.port}/")
    try:
        for run in (1, 2):  # the second run is the restart
            outbox = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite"))
            board = StatusBoard()
            task = await _serve(Delivery(outbox, client, FAST, board))
            if run == 1:
                await outbox.submit([NewMessage("event", "E", "bad", {"invalid": "BadSerial"})])

            async def alarmed(board: StatusBoard = board) -> bool:
                return ("outbox_dead_alarm" in _alarms(board)
                        and board.health.get("dead_letters") == 1)

            await until(alarmed)
            assert "BadSerial" in _alarms(board)["outbox_dead_alarm"]
            assert board.health["dead_letters"] == 1
            await _stop(task)
            await outbox.close()
    finally:
        await client.close()
        await up.stop()


async def test_dead_letter_alarm_clears_when_no_dead_letter_is_left(tmp_path: Path) -> None:
    up = MiniUpstream(tmp_path / "up.sqlite")
    await up.start()
    outbox = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite", dead_retention_s=0))
    client = MiniUpstreamClient(f"opc.tcp://127.0.0.1:{up.port}/")
    board = StatusBoard()
    task = await _serve(Delivery(outbox, client, FAST, board))
    try:
        await outbox.submit([NewMessage("event", "E", "bad", {"invalid": "BadSerial"})])

        async def dead_seen() -> bool:
            return board.health.get("dead_letters") == 1

        await until(dead_seen)
        assert "BadSerial" in _alarms(board)["outbox_dead_alarm"]
        assert await outbox.purge() == 1  # dead_retention_s = 0: the letter is deleted

        async def cleared() -> bool:
            return "outbox_dead_alarm" not in _alarms(board)

        await until(cleared)
        assert board.health["dead_letters"] == 0
    finally:
        await _stop(task)
        await client.close()
        await outbox.close()
        await up.stop()


async def test_the_log_says_when_a_stall_ends_and_attempts_count_per_message(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """An end-to-end review saw the attempt number carry over from one stalled message to
    the next, and no line when delivery resumed. Each batch here answers RETRY for its second
    message a few times (the first gets through): every stall starts at attempt 1, and the
    log says when the stream goes on and when the backlog is delivered."""
    import logging

    outbox, _, client = env

    class SecondWaits:
        def __init__(self) -> None:
            self.refusals = 0

        async def deliver(self, stream: str,
                          batch: Sequence[StoredMessage]) -> Sequence[DeliveryResult]:
            if len(batch) > 1 and self.refusals % 3 != 2:
                self.refusals += 1
                done = await client.deliver(stream, batch[:1])
                return [*done, DeliveryResult(Outcome.RETRY, "BadTooManyOperations: busy")]
            self.refusals += 1
            return await client.deliver(stream, batch)

    caplog.set_level(logging.INFO, logger="gateway.delivery")
    task = await _serve(Delivery(outbox, SecondWaits(), FAST, StatusBoard()))
    try:
        await outbox.submit([NewMessage("event", "E", f"k{n}", {"n": n}) for n in range(4)])
        await until(lambda: _drained(outbox))
        await until(lambda: _logged_async(caplog, "backlog delivered"))
    finally:
        await _stop(task)
    stalls = [r.getMessage() for r in caplog.records if "stalled at message" in r.getMessage()]
    firsts = {m.split("stalled at message ")[1].split(" ")[0]: m for m in reversed(stalls)}
    assert firsts and all("(attempt 1:" in m for m in firsts.values()), stalls
    assert await _logged_async(caplog, "goes on (message")


async def _logged_async(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)
