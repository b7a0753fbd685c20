"""Result backups: the local audit trail of everything the line reported.

The ``results`` stream of the outbox is delivered here instead of upstream: each message is
appended as one JSON line to ``result_bkup_dir/<Ordnr>.jsonl`` and fsynced before it counts as
delivered. A retry after a crash between the append and the outbox's mark finds the message's
key already in the file and does not write it twice. The status server counts these files
(``num_files``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from gateway.model import DeliveryResult, Outcome, StoredMessage

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def backup_file(directory: Path, ordnr: str) -> Path:
    name = _UNSAFE.sub("_", ordnr) or "_no_order"
    return directory / f"{name}.jsonl"


class ResultBackup:
    """An Upstream for the ``results`` stream that writes JSON lines files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def deliver(self, stream: str, batch: Sequence[StoredMessage]) -> list[DeliveryResult]:
        return await asyncio.to_thread(self._write, batch)

    def _write(self, batch: Sequence[StoredMessage]) -> list[DeliveryResult]:
        self.directory.mkdir(parents=True, exist_ok=True)
        results: list[DeliveryResult] = []
        for message in batch:
            path = backup_file(self.directory, str(message.body.get("Ordnr", "")))
            try:
                if not self._already_written(path, message.key):
                    line = json.dumps({"key": message.key, "kind": message.kind,
                                       "created_at": message.created_at, **message.body},
                                      separators=(",", ":"))
                    with path.open("a", encoding="utf-8") as fh:
                        fh.write(line + "\n")
                        fh.flush()
                        os.fsync(fh.fileno())
            except OSError as exc:
                log.warning("result backup %s: %s (will retry)", path, exc)
                results.append(DeliveryResult(Outcome.RETRY, f"result backup: {exc}"))
                break
            results.append(DeliveryResult(Outcome.DONE))
        return results

    @staticmethod
    def _already_written(path: Path, key: str) -> bool:
        if not path.exists():
            return False
        needle = f'"key":{json.dumps(key)}'
        with path.open(encoding="utf-8") as fh:
            return any(needle in line for line in fh)
