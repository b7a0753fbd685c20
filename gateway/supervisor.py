"""Supervision: every long-lived task has an owner, failures are logged and restarted.

A *service* is any object with a ``name`` and an ``async serve()`` that runs until cancelled.
``supervise()`` runs one service forever: when ``serve()`` raises (or returns on its own) the
failure is logged with its traceback, the board shows the adapter as failed, and the service is
started again after a capped exponential backoff with jitter. A service that ran for a while
before failing starts again from the initial delay. This is the one place in linegate where
``except Exception`` is right: a broken adapter must never take the gateway down.

A service that cannot start for a reason of the machine or the settings (a port in use, an
address that is not here, a missing certificate) raises ``StartFailed``: that is logged as one
line that names the settings key and the cause, not as a traceback, since it is not a bug.
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


class StartFailed(Exception):
    """A service could not start for a reason the operator fixes (its text says which key and
    why); the supervisor logs it as one line and retries like any failure."""


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
        except StartFailed as exc:
            cannot_start: StartFailed | None = exc
            reason = f"cannot start ({exc})"
        except Exception:  # the supervisor contains failures
            log.exception("service %s failed", service.name)
            cannot_start, reason = None, "failed"
        else:
            log.error("service %s returned on its own; restarting it", service.name)
            cannot_start, reason = None, "exited"
        board.incr(f"restarts_{service.name}")
        if time.monotonic() - started > HEALTHY_AFTER_S:
            attempt = 0
        delay = backoff_delay(attempt, settings.restart_initial_s, settings.restart_max_s)
        attempt += 1
        board.set_adapter(service.name, f"{reason}, restarting in {delay:.1f} s")
        if cannot_start is not None:  # one line: the key and the cause, no traceback
            log.error("service %s cannot start: %s; retry %d in %.1f s", service.name,
                      cannot_start, attempt, delay)
        else:
            log.warning("service %s %s; restart %d in %.1f s", service.name, reason, attempt,
                        delay)
        await asyncio.sleep(delay)
