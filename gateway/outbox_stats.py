"""Plain result types of the outbox (kept apart so the CLI and status code import little)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Literal

from gateway.model import StoredMessage

SubmitStatus = Literal["accepted", "duplicate", "conflict"]


@dataclass(frozen=True)
class SubmitResult:
    """What ``Outbox.submit`` did.

    ``accepted``: applied and committed. ``duplicate``: the same (peer, tsn, payload) was
    already accepted; nothing was applied and ``reply`` is the reply stored then.
    ``conflict``: the tsn was used before for a different payload; nothing was applied.
    """

    status: SubmitStatus
    reply: str | None = None
    hook_result: object = None
    ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class DeadLetter:
    message: StoredMessage
    reason: str
    dead_at: float

    def to_dict(self) -> dict[str, object]:
        return {**self.message.to_dict(), "reason": self.reason, "dead_at": self.dead_at,
                "dead_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.dead_at))}


@dataclass(frozen=True)
class OutboxStats:
    streams: dict[str, dict[str, int]] = field(default_factory=dict)  # stream -> state -> n
    pending: int = 0
    delivered: int = 0  # kept for audit (store.delivered_retention_s > 0)
    dead: int = 0
    oldest_pending_age_s: float = 0.0
    bytes: int = 0  # live bytes inside the database (what store.max_bytes limits)
    file_bytes: int = 0  # database + WAL on disk
    max_bytes: int = 0
    high_water: bool = False
    full_reason: str | None = None
    commits: int | None = 0  # committed by this process; None when opened read-only (CLI)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
