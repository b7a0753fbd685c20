"""A real ENOSPC: the outbox on a 2 MiB tmpfs, filled until SQLite reports SQLITE_FULL.

Needs root to mount (this project's CI runs as root). Without mount permission the test is
skipped on a developer machine and fails under CI=true (like a missing tool).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import outbox_schema
from gateway.board import StatusBoard
from gateway.delivery import Delivery
from gateway.errors import StoreFull
from gateway.model import NewMessage
from gateway.outbox import Outbox
from gateway.settings import DeliverySettings, StoreSettings
from tests.tooling import in_ci
from tools.mini_upstream import MiniUpstream, MiniUpstreamClient, applied


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        msg = f"cannot mount a 2 MiB tmpfs (needs root): {done.stderr.strip()}"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path, free_bytes: int) -> None:
    """Occupy the file system except ``free_bytes``."""
    vfs = os.statvfs(path.parent)
    size = max(0, vfs.f_bavail * vfs.f_frsize - free_bytes)
    with open(path, "wb") as f:
        f.write(b"\0" * size)


async def test_disk_full_refuses_with_reason_loses_nothing_and_recovers(
        small_fs: Path, tmp_path: Path) -> None:
    store = small_fs / "outbox.sqlite"
    settings = StoreSettings(path=store, min_free_disk_mb=0, group_commit_window_ms=0.0)
    ob = await Outbox.open(settings)
    await ob.submit([NewMessage("event", "E", "warmup", {})])
    filler = small_fs / "filler"
    await asyncio.to_thread(_fill, filler, 300_000)

    accepted: list[str] = []
    refusal: StoreFull | None = None
    for i in range(5000):
        keys = [f"k{i}-{j}" for j in range(5)]
        try:
            await ob.submit([NewMessage("event", "E", k, {"blob": "x" * 800}) for k in keys])
        except StoreFull as exc:
            refusal = exc
            break
        accepted.extend(keys)
    assert refusal is not None, "the 2 MiB file system never filled up"
    assert "SQLITE_FULL" in refusal.reason and str(small_fs) in refusal.reason
    assert len(accepted) >= 20
    # while the disk stays full, work keeps being refused (a checkpoint after SQLITE_FULL may
    # free a little WAL space, so a submit may fit) and the process and file are fine
    refused = 0
    for i in range(20):
        key = f"again{i}"
        try:
            await ob.submit([NewMessage("event", "E", key, {"blob": "y" * 4000})])
            accepted.append(key)
        except StoreFull:
            refused += 1
    assert refused >= 10

    # space comes back: new work is accepted again without a restart
    filler.unlink()
    await ob.submit([NewMessage("event", "E", "after", {})])
    accepted = ["warmup", *accepted, "after"]
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    conn.close()

    # and everything acknowledged drains upstream, in order
    up = MiniUpstream(tmp_path / "up.sqlite")
    await up.start()
    client = MiniUpstreamClient(f"opc.tcp://127.0.0.1:{up.port}/")
    delivery = Delivery(ob, client, DeliverySettings(batch_max=200), StatusBoard())
    task = asyncio.create_task(delivery.serve())
    try:
        for _ in range(600):
            if (await ob.stats()).pending == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await ob.close()
        await up.stop()
    assert [key for _, key, _ in applied(tmp_path / "up.sqlite")] == accepted


async def test_disk_full_at_open_is_a_clear_error_not_corruption(small_fs: Path) -> None:
    store = small_fs / "outbox.sqlite"
    ob = await Outbox.open(StoreSettings(path=store, min_free_disk_mb=0))
    await ob.submit([NewMessage("event", "E", f"k{i}", {"n": i}) for i in range(20)])
    await ob.close()
    await asyncio.to_thread(_fill, small_fs / "filler", 0)
    try:
        ob = await Outbox.open(StoreSettings(path=store, min_free_disk_mb=0))
    except StoreFull as exc:  # acceptable: refused with a reason
        assert "disk is full" in exc.reason and str(store) in exc.reason
    else:
        assert (await ob.stats()).pending == 20
        await ob.close()
    assert not [n for n in os.listdir(small_fs) if ".corrupt-" in n]  # never moved aside
    (small_fs / "filler").unlink()
    ob = await Outbox.open(StoreSettings(path=store, min_free_disk_mb=0))
    assert [m.key for m in await ob.pending("event", 100)] == [f"k{i}" for i in range(20)]
    await ob.close()


def _old_file(path: Path, version: int, rows: int) -> None:
    """An outbox file of an older layout (v1) or of v2 without incremental auto-vacuum."""
    with sqlite3.connect(path) as old:
        if version == 1:
            old.executescript(outbox_schema.SCHEMA_V1)
        else:
            outbox_schema._run_script(old, outbox_schema._V2_TABLES)
        old.execute(f"PRAGMA user_version = {version}")
        old.executemany("INSERT INTO messages (stream, kind, key, body, created_at) "
                        "VALUES ('event', 'K', ?, ?, 0)",
                        [(f"k{i}", json.dumps({"b": "x" * 600})) for i in range(rows)])
    old.close()


async def test_migration_on_a_full_disk_is_store_full_and_keeps_the_file(
        small_fs: Path) -> None:
    path = small_fs / "old.sqlite"
    await asyncio.to_thread(_old_file, path, 1, 600)
    await asyncio.to_thread(_fill, small_fs / "filler", 150_000)
    with pytest.raises(StoreFull, match="disk is full") as info:
        await Outbox.open(StoreSettings(path=path, min_free_disk_mb=0))
    # the cause, not "cannot rollback - no transaction is active" (SQLite rolled back itself)
    assert "database or disk is full" in info.value.reason and "rollback" not in info.value.reason
    assert str(path) in info.value.reason
    assert not [n for n in os.listdir(small_fs) if ".corrupt-" in n]  # never moved aside
    with sqlite3.connect(path) as conn:  # untouched: still v1 with its whole backlog
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 600
    conn.close()
    (small_fs / "filler").unlink()  # space is back: the migration runs and keeps everything
    ob = await Outbox.open(StoreSettings(path=path, min_free_disk_mb=0))
    assert (await ob.stats()).pending == 600
    await ob.close()


async def test_the_one_time_vacuum_on_a_full_disk_does_not_stop_the_outbox(
        small_fs: Path) -> None:
    path = small_fs / "novacuum.sqlite"
    await asyncio.to_thread(_old_file, path, outbox_schema.SCHEMA_VERSION, 600)
    await asyncio.to_thread(_fill, small_fs / "filler", 150_000)
    ob = await Outbox.open(StoreSettings(path=path, min_free_disk_mb=0))
    assert [m.key for m in await ob.pending("event", 1000)] == [f"k{i}" for i in range(600)]
    await ob.close()
    (small_fs / "filler").unlink()
    ob = await Outbox.open(StoreSettings(path=path, min_free_disk_mb=0))
    await ob.close()
    with sqlite3.connect(path) as conn:  # converted at the first start with room for it
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 600
    conn.close()
