"""The status board: the one place where the runtime's live state is written and read.

Writers (station, outbox, delivery, adapters, upstream client) set values here; the OPC UA
status server and ``linegate demo`` read them. It is a plain in-process object with no I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Health keys: writers and the status fields use these names (gateway/STATUS.md), never
# literals, so that a renamed key cannot silently publish a default.
OUTBOX_BACKLOG = "outbox_backlog"
OUTBOX_OLDEST_AGE_S = "outbox_oldest_age_s"
DEAD_LETTERS = "dead_letters"
STORE_HIGH_WATER = "store_high_water"
STORE_FULL = "store_full"
OUTBOX_DEAD_ALARM = "outbox_dead_alarm"
UPSTREAM_STATE = "upstream_state"
RESERVE_LEVEL = "reserve_level"
RESERVE_ERROR = "reserve_error"
CERT_EXPIRY = "cert_expiry"
UPSTREAM_ERROR = "upstream_error"
# Alarms: a non-empty string is the reason; published together in the ``alarms`` field.
ALARM_KEYS = (STORE_FULL, OUTBOX_DEAD_ALARM, UPSTREAM_ERROR, RESERVE_ERROR)


@dataclass
class StatusBoard:
    # seed fields the runtime knows directly
    cmd: str = ""  # last command remotely executed (OIP command or OPC UA method)
    user: str = ""  # currently logged-in user (OIP LOGIN)
    script: str = ""  # the currently loaded order (Ordnr)
    # gateway health, by name (documented in the README's status section)
    counters: dict[str, int] = field(default_factory=dict)
    health: dict[str, object] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)  # adapter name -> state
    started_at: float = field(default_factory=time.time)

    def incr(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def set_health(self, name: str, value: object) -> None:
        self.health[name] = value

    def set_adapter(self, name: str, state: str) -> None:
        self.adapters[name] = state

    def raise_alarm(self, name: str, where: str, reason: str) -> None:
        """An alarm with several independent sources (e.g. UPSTREAM_ERROR per stream): the
        health value is ``{where: reason}``; each source clears only its own entry."""
        entries = self.health.get(name)
        if not isinstance(entries, dict):
            entries = {}
        self.health[name] = {**entries, where: reason}

    def clear_alarm(self, name: str, where: str) -> None:
        entries = self.health.get(name)
        if isinstance(entries, dict) and where in entries:
            rest = {k: v for k, v in entries.items() if k != where}
            self.health[name] = rest or ""
