"""The delivery loop: outbox -> upstream, in order per stream, exactly once in effect.

Rules (also in gateway/OUTBOX.md):

- One reader task per stream reads pending messages ``ORDER BY id`` (the commit sequence) in
  batches of up to ``delivery.batch_max`` and calls ``upstream.deliver(stream, batch)``. Only
  one batch per stream is ever in flight, so nothing later in a stream is sent before
  everything earlier was answered DONE or PERMANENT.
- The results align with the batch prefix; fewer results mean the rest was not attempted
  (it is sent next, at once, unless a RETRY or no answer at all calls for a backoff).
  The results are recorded in one outbox transaction (DONE -> delivered/deleted,
  PERMANENT -> dead letter). A crash between the upstream applying a batch and that commit
  re-sends the batch after restart with the same idempotency keys; the upstream applies a
  key once and answers a replay as success, so the effect is exactly once.
- RETRY (or a transport failure / UpstreamError(permanent=False)) stops the stream at that
  message: it is retried after a capped exponential backoff with jitter
  (``retry_initial_s`` doubling up to ``retry_max_s``); the stream's later messages wait.
- PERMANENT (a per-message result: the upstream says the data itself is invalid)
  dead-letters the message with the reason, logs ERROR and raises the ``outbox_dead`` alarm
  on the status board; the stream then CONTINUES with the next message.
- An UpstreamError(permanent=True) raised for the whole call is NOT about one message's data
  (a password file with the wrong mode, a refused session, a missing manager object): the
  stream stalls as for RETRY, with backoff and an ERROR log, and the reason shows on the
  status board (``upstream_error``) until a call gets through. Dead-lettering would condemn
  the whole backlog, one message per call, for a configuration fault.
  Rationale: a refused message will be refused again however long we wait, so blocking would
  stop the line's whole stream for one bad record. The order of what *is* delivered is kept;
  an operator can fix the cause and ``linegate outbox dead retry ID``, which re-queues the
  message in its original position (its id), so it leads the stream's next batch.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from typing import Protocol

from gateway import board as board_keys
from gateway.aio import cancel_requested
from gateway.board import StatusBoard
from gateway.errors import StoreFull, TransportError, UpstreamError
from gateway.model import DeliveryResult, Outcome, StoredMessage
from gateway.outbox import Outbox
from gateway.settings import DeliverySettings

log = logging.getLogger(__name__)

FALLBACK_POLL_S = 5.0  # also notice work committed by another process (CLI dead retry)
PURGE_INTERVAL_S = 60.0


class Upstream(Protocol):
    """Sends one batch of one stream, in order; answers per message for a prefix of it.

    Carry each message's ``key`` upstream as its idempotency key. Raise TransportError (or
    OSError/TimeoutError) when the call may not have arrived, UpstreamError(permanent=...)
    when the whole call was refused; return DeliveryResult(RETRY) for a transient refusal
    of one message and DeliveryResult(PERMANENT, reason) when its data is invalid.
    """

    async def deliver(self, stream: str,
                      batch: Sequence[StoredMessage]) -> Sequence[DeliveryResult]: ...


def backoff_s(failures: int, settings: DeliverySettings, rng: random.Random) -> float:
    """Capped exponential backoff with jitter, for the ``failures``-th failure (1..)."""
    cap = min(settings.retry_max_s, settings.retry_initial_s * 2 ** min(failures - 1, 30))
    return rng.uniform(cap / 2, cap)


class Delivery:
    """A supervised service: ``await serve()`` until cancelled."""

    def __init__(self, outbox: Outbox, upstream: Upstream, settings: DeliverySettings,
                 board: StatusBoard, *, name: str = "delivery", seed: int | None = None) -> None:
        self.name = name
        self._outbox = outbox
        self._upstream = upstream
        self._settings = settings
        self._board = board
        self._rng = random.Random(seed)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.delivered = 0
        self.dead = 0

    async def serve(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._housekeeping(), name=f"{self.name}-housekeeping")
                while True:
                    self._outbox.streams_changed.clear()
                    for stream in await self._outbox.pending_streams() + list(
                            self._outbox.known_streams()):
                        task = self._tasks.get(stream)
                        if task is not None and task.done():
                            # a failure would have stopped the whole group; a stream task
                            # that ended anyway was cancelled by something other than our
                            # own shutdown: restart it, loudly, rather than leave it stalled
                            log.error("delivery of stream %s stopped unexpectedly (%s); "
                                      "restarting it", stream,
                                      "cancelled" if task.cancelled() else "returned")
                            task = None
                        if task is None:
                            self._tasks[stream] = tg.create_task(
                                self._stream(stream), name=f"{self.name}-{stream}")
                    await self._wait(self._outbox.streams_changed, FALLBACK_POLL_S)
        finally:
            self._tasks.clear()

    @staticmethod
    async def _wait(event: asyncio.Event, within_s: float) -> None:
        try:
            async with asyncio.timeout(within_s):
                await event.wait()
        except TimeoutError:
            pass

    async def _stream(self, stream: str) -> None:
        event = self._outbox.event(stream)
        failures = 0
        stalled_at: int | None = None  # the message the stream waits on, while it waits
        resumed = False  # it waited since the backlog was last empty
        while True:
            event.clear()
            batch = await self._outbox.pending(stream, self._settings.batch_max)
            if not batch:
                if resumed:
                    log.info("delivery on %s: backlog delivered, the stream is empty again",
                             stream)
                    resumed = False
                await self._wait(event, FALLBACK_POLL_S)
                continue
            results, error = await self._attempt(stream, batch)
            try:
                await self._outbox.record(batch, results, error)
            except StoreFull as exc:  # cannot even record: the batch is re-sent later (same keys)
                log.error("cannot record delivery results on %s: %s", stream, exc.reason)
                results, error = [], exc.reason
            done = sum(1 for r in results if r.outcome is Outcome.DONE)
            self.delivered += done
            self._board.incr("outbox_delivered", done)
            for msg, res in zip(batch, results, strict=False):
                if res.outcome is Outcome.PERMANENT:
                    self.dead += 1
                    log.error("DEAD LETTER %d on stream %s (%s key=%s): %s; the stream "
                              "continues; see `linegate outbox dead show %d`", msg.id, stream,
                              msg.kind, msg.key, res.reason, msg.id)
                    self._board.set_health(board_keys.OUTBOX_DEAD_ALARM, f"message {msg.id}: "
                                           f"{res.reason}")
            # progress without a RETRY (a prefix answered) goes on at once with the rest
            stalled = not results or any(r.outcome is Outcome.RETRY for r in results)
            if not stalled:
                if stalled_at is not None:
                    log.info("delivery on %s goes on (message %d got through)", stream,
                             stalled_at)
                failures, stalled_at = 0, None
                continue
            first = batch[min(len(results), len(batch) - 1)]
            if first.id != stalled_at:  # a new message to wait on: its attempts count anew
                failures, stalled_at, resumed = 0, first.id, True
            failures += 1
            delay = backoff_s(failures, self._settings, self._rng)
            reason = error or next((r.reason for r in results if r.outcome is Outcome.RETRY), "")
            log.warning("delivery on %s stalled at message %d (attempt %d: %s); retry in %.1f s",
                        stream, first.id, failures, reason or "not attempted", delay)
            await asyncio.sleep(delay)

    async def _attempt(self, stream: str, batch: list[StoredMessage],
                       ) -> tuple[list[DeliveryResult], str]:
        try:
            results = list(await self._upstream.deliver(stream, batch))
        except asyncio.CancelledError as exc:
            if cancel_requested():
                raise
            return [], f"the upstream call was cancelled underneath us: {exc!r}"
        except UpstreamError as exc:
            if exc.permanent:
                log.error("delivery on %s: the upstream call failed for a reason that will not "
                          "pass by itself: %s; the stream waits (nothing is dead-lettered)",
                          stream, exc)
                self._board.raise_alarm(board_keys.UPSTREAM_ERROR, f"stream {stream}", str(exc))
            return [], str(exc)
        except (TransportError, OSError, TimeoutError) as exc:
            return [], f"{type(exc).__name__}: {exc}"
        self._board.clear_alarm(board_keys.UPSTREAM_ERROR, f"stream {stream}")
        if len(results) > len(batch):
            log.error("upstream returned %d results for %d messages; ignoring the extra",
                      len(results), len(batch))
            results = results[: len(batch)]
        return results, ""

    async def _housekeeping(self) -> None:
        """Status board every second; retention purge every minute."""
        last_purge = time.monotonic()
        while True:
            stats = await self._outbox.stats()
            self._board.set_health(board_keys.OUTBOX_BACKLOG, stats.pending)
            self._board.set_health(board_keys.OUTBOX_OLDEST_AGE_S,
                                   round(stats.oldest_pending_age_s, 1))
            self._board.set_health(board_keys.DEAD_LETTERS, stats.dead)
            if not stats.dead:  # retried or purged: nothing left to alarm about
                self._board.set_health(board_keys.OUTBOX_DEAD_ALARM, "")
            elif not self._board.health.get(board_keys.OUTBOX_DEAD_ALARM):
                # dead letters of an earlier run (or made by the CLI): the alarm says so too
                newest = await self._outbox.dead_newest()
                if newest is not None:
                    self._board.set_health(board_keys.OUTBOX_DEAD_ALARM,
                                           f"message {newest.message.id}: {newest.reason}")
            self._board.set_health(board_keys.STORE_HIGH_WATER, stats.high_water)
            self._board.set_health(board_keys.STORE_FULL, stats.full_reason or "")
            if time.monotonic() - last_purge >= PURGE_INTERVAL_S:
                last_purge = time.monotonic()
                try:
                    await self._outbox.purge()
                except StoreFull as exc:
                    log.warning("retention purge postponed: %s", exc.reason)
            await asyncio.sleep(1.0)
