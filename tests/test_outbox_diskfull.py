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

RESERVE = 384 * 1024  # store.disk_reserve_bytes on the 2 MiB file system


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
    settings = StoreSettings(path=store, min_free_disk_mb=0, disk_reserve_bytes=RESERVE,
                             group_commit_window_ms=0.0)
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
    # refused by the free-space check (a checkpoint may take the last page) or by SQLITE_FULL
    assert "SQLITE_FULL" in refusal.reason or "0.0 MB free" in refusal.reason
    assert str(small_fs) in refusal.reason
    assert len(accepted) >= 20
    # a real ENOSPC for work that adds no messages (not limited by the capacity check): it is
    # refused alone, even after the disk reserve was given back and it was tried once more
    with pytest.raises(StoreFull, match="SQLITE_FULL"):
        await ob.submit(state={"big": "z" * 1_000_000})
    assert "big" not in await ob.get_state()
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


async def _fill_with_submits(ob: Outbox, accepted: list[str], tag: str) -> StoreFull:
    for i in range(5000):
        keys = [f"{tag}{i}-{j}" for j in range(5)]
        try:
            await ob.submit([NewMessage("event", "E", k, {"blob": "x" * 800}) for k in keys])
        except StoreFull as exc:
            return exc
        accepted.extend(keys)
    raise AssertionError("the 2 MiB file system never filled up")


async def _refused(ob: Outbox, key: str) -> bool:
    try:
        await ob.submit([NewMessage("event", "E", key, {})])
    except StoreFull:
        return True
    return False



@pytest.mark.parametrize("filled_by", ["the outbox", "another process"])
async def test_a_full_disk_keeps_delivering_refuses_new_work_and_recovers(
        small_fs: Path, tmp_path: Path, filled_by: str) -> None:
    """The issue: at a limit the gateway refuses new work and KEEPS DELIVERING; a real ENOSPC
    recovers by itself. Deleting delivered rows needs WAL space too: without the disk
    reserve, delivery results could never be committed on a disk full to the last byte."""
    store = small_fs / "outbox.sqlite"
    reserve = small_fs / "outbox.sqlite.reserve"
    ob = await Outbox.open(StoreSettings(path=store, min_free_disk_mb=0,
                                         disk_reserve_bytes=RESERVE, group_commit_window_ms=0))
    assert reserve.stat().st_size == RESERVE
    accepted = ["warmup"]
    await ob.submit([NewMessage("event", "E", "warmup", {})])
    filler = small_fs / "filler"
    if filled_by == "another process":
        await asyncio.to_thread(_fill, filler, 100_000)
    refusal = await _fill_with_submits(ob, accepted, "k")
    assert "disk" in refusal.reason and str(small_fs) in refusal.reason
    assert len(accepted) > 10
    assert await _refused(ob, "refused-at-once")
    assert os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize < 64 * 1024
    assert (await ob.stats()).full_reason

    up = MiniUpstream(tmp_path / "up.sqlite")
    await up.start()
    client = MiniUpstreamClient(f"opc.tcp://127.0.0.1:{up.port}/")
    delivery = Delivery(ob, client, DeliverySettings(batch_max=200, retry_initial_s=0.05,
                                                     retry_max_s=0.2), StatusBoard())
    task = asyncio.create_task(delivery.serve())
    refused_while_draining = 0
    try:
        for _ in range(400):
            if (await ob.stats()).pending == 0:
                break
            if filled_by == "another process":  # the disk stays full of the filler
                refused_while_draining += await _refused(ob, f"x{_}")
            await asyncio.sleep(0.05)
        assert (await ob.stats()).pending == 0, "the backlog did not drain on a full disk"
        assert [key for _, key, _ in applied(tmp_path / "up.sqlite")] == accepted
        if filled_by == "another process":
            assert refused_while_draining >= 1
            # drained, but the filler still leaves no room for the reserve: still refused
            assert await _refused(ob, "still-full")
            assert (await ob.stats()).full_reason
            filler.unlink()
        # recovers by itself: the reserve is made again and new work is accepted
        await ob.submit([NewMessage("event", "E", "after", {})])
        assert reserve.stat().st_size == RESERVE
        assert (await ob.stats()).full_reason is None
        for _ in range(200):
            if (await ob.stats()).pending == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await ob.close()
        await up.stop()
    assert [key for _, key, _ in applied(tmp_path / "up.sqlite")] == [*accepted, "after"]
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    conn.close()


async def test_disk_full_at_open_is_a_clear_error_not_corruption(small_fs: Path) -> None:
    store = small_fs / "outbox.sqlite"
    ob = await Outbox.open(StoreSettings(path=store, min_free_disk_mb=0,
                                         disk_reserve_bytes=RESERVE))
    await ob.submit([NewMessage("event", "E", f"k{i}", {"n": i}) for i in range(20)])
    await ob.close()
    await asyncio.to_thread(_fill, small_fs / "filler", 0)
    try:
        ob = await Outbox.open(StoreSettings(path=store, min_free_disk_mb=0,
                                             disk_reserve_bytes=RESERVE))
    except StoreFull as exc:  # acceptable: refused with a reason
        assert "disk is full" in exc.reason and str(store) in exc.reason
    else:
        assert (await ob.stats()).pending == 20
        await ob.close()
    assert not [n for n in os.listdir(small_fs) if ".corrupt-" in n]  # never moved aside
    (small_fs / "filler").unlink()
    ob = await Outbox.open(StoreSettings(path=store, min_free_disk_mb=0,
                                         disk_reserve_bytes=RESERVE))
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


async def test_high_water_warns_before_min_free_disk_refuses_on_a_small_disk(
        small_fs: Path) -> None:
    ob = await Outbox.open(StoreSettings(path=small_fs / "o.sqlite", min_free_disk_mb=1,
                                         high_water_percent=80, disk_reserve_bytes=0))
    warned_before = False
    with pytest.raises(StoreFull, match="min_free_disk_mb"):
        for i in range(5000):
            await ob.submit([NewMessage("event", "K", f"k{i}", {"b": "x" * 2000})])
            warned_before = warned_before or ob.high_water
    assert warned_before, "the high-water warning came only with the refusal"
    assert (await ob.stats()).high_water
    await ob.close()
