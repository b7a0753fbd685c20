"""Supervision: every long-lived task has an owner, failures are logged and restarted.

A *service* is any object with a ``name`` and an ``async serve()`` that runs until cancelled.
``supervise()`` runs one service forever: when ``serve()`` raises (or returns on its own) the
failure is logged with its traceback, the board shows the adapter as failed, and the service is
started again after a capped exponential backoff with jitter. A service that ran for a while
before failing starts again from the initial delay. This is the one place in linegate where
``except Exception`` is right: a broken adapter must never take the gateway down.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Protocol

from gateway.board import StatusBoard
from gateway.settings import SupervisorSettings

log = logging.getLogger(__name__)

HEALTHY_AFTER_S = 30.0


class Service(Protocol):
    name: str

    async def serve(self) -> None: ...


def backoff_delay(attempt: int, initial_s: float, max_s: float,
                  rng: random.Random | None = None) -> float:
    """Capped exponential backoff with full jitter in [delay/2, delay]."""
    delay = min(max_s, initial_s * (2 ** max(0, attempt)))
    r = (rng or random).random()
    return delay / 2 + r * delay / 2


async def supervise(service: Service, settings: SupervisorSettings, board: StatusBoard) -> None:
    """Run ``service`` until cancelled, restarting it whenever it fails."""
    attempt = 0
    while True:
        started = time.monotonic()
        board.set_adapter(service.name, "running")
        try:
            await service.serve()
        except asyncio.CancelledError:
            board.set_adapter(service.name, "stopped")
            raise
        except Exception:  # the supervisor contains failures
            log.exception("service %s failed", service.name)
            reason = "failed"
        else:
            log.error("service %s returned on its own; restarting it", service.name)
            reason = "exited"
        board.incr(f"restarts_{service.name}")
        if time.monotonic() - started > HEALTHY_AFTER_S:
            attempt = 0
        delay = backoff_delay(attempt, settings.restart_initial_s, settings.restart_max_s)
        attempt += 1
        board.set_adapter(service.name, f"{reason}, restarting in {delay:.1f} s")
        log.warning("service %s %s; restart %d in %.1f s", service.name, reason, attempt, delay)
        await asyncio.sleep(delay)
