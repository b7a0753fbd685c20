"""The single-gateway lock on a store: real files and real flock, two processes."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.instance_lock import AlreadyRunning, InstanceLock

HOLD = """
import sys, time
from gateway.instance_lock import InstanceLock
lock = InstanceLock(sys.argv[1]); lock.acquire(); print("held", flush=True); time.sleep(60)
"""
ROOT = Path(__file__).resolve().parent.parent


def test_a_store_reached_through_a_symlink_shares_the_lock(tmp_path: Path) -> None:
    store = tmp_path / "data" / "outbox.sqlite"
    store.parent.mkdir()
    store.write_bytes(b"")
    alias = tmp_path / "alias.sqlite"
    alias.symlink_to(store)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        other = InstanceLock(alias)
        assert other.held_by_other()
        with pytest.raises(AlreadyRunning, match=f"pid {holder.pid}"):
            other.acquire(patience_s=0.2)
    finally:
        holder.kill()
        holder.wait()
    lock = InstanceLock(alias)  # the kernel dropped the dead holder's lock
    assert not lock.held_by_other()
    lock.acquire()
    assert (tmp_path / "data" / "outbox.sqlite.lock").read_text().strip() == str(os.getpid())
    lock.release()


def test_a_moment_of_probing_by_check_does_not_stop_a_starting_gateway(tmp_path: Path) -> None:
    """check takes a shared lock for an instant; run tries again for a while."""
    lock = InstanceLock(tmp_path / "outbox.sqlite")
    lock.path.write_text("")
    fd = os.open(lock.path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    threading.Timer(0.3, os.close, (fd,)).start()  # closing drops the probe's lock
    started = time.monotonic()
    lock.acquire(patience_s=5.0)
    assert time.monotonic() - started >= 0.2  # it did wait for the probe to end
    lock.release()
