"""One running gateway per outbox: an exclusive lock next to the store.

Two ``linegate run`` processes on one store would both serve the line from the session each
read at its start; after the first one stops, the second serves a stale current order and
user. ``linegate run`` therefore holds an exclusive ``flock`` on ``<store.path>.lock`` for as
long as it runs (the kernel releases it when the process ends, SIGKILL included) and a second
one exits 2 naming the first one's pid. The outbox CLI does not take the lock: its read-only
commands and ``dead retry`` work next to a running gateway.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path

from gateway.errors import LinegateError

log = logging.getLogger(__name__)


class AlreadyRunning(LinegateError):
    """Another process holds the store's instance lock."""


class InstanceLock:
    """The lock file is named after the store's real path (symlinks resolved), so two settings
    files reaching one store through different paths still share it."""

    def __init__(self, store_path: Path) -> None:
        self.path = Path(f"{Path(store_path).resolve()}.lock")
        self._fd: int | None = None

    def holder(self) -> str:
        """The pid written by the process holding the lock (or "unknown")."""
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def held_by_other(self) -> bool:
        """Whether another process holds the lock now (for ``linegate check``)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock taken just now
        return False

    def acquire(self, patience_s: float = 1.0) -> None:
        """Take the lock or raise AlreadyRunning. ``linegate check`` probes the lock for a
        moment, so a busy lock is tried again for ``patience_s`` before giving up. The pid
        is written for the messages; failing to write it (a full disk) is only a warning:
        the outbox has its own plan for a full disk and the gateway must start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + patience_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                raise AlreadyRunning(
                    f"another linegate (pid {self.holder()}) is already running with this "
                    f"outbox ({self.path.with_suffix('')}, lock {self.path}); stop it first "
                    "(systemctl stop linegate) or give this one its own store.path") from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            log.warning("instance lock %s taken, but the pid could not be written: %s",
                        self.path, exc)

    def release(self) -> None:
        """Unlock (the file stays: removing it would race with a process opening it)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
