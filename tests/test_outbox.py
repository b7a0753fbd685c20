"""The outbox on real SQLite files: group commit, dedup, savepoints, capacity, migration,
corruption, retention, and the ``linegate outbox`` CLI in a real process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import outbox_schema
from gateway.errors import StoreCorrupt, StoreFull
from gateway.model import DeliveryResult, NewMessage, Origin, Outcome, StoredMessage
from gateway.outbox import Outbox
from gateway.settings import StoreSettings
from tests.conftest import ROOT


def msg(n: int, stream: str = "event", **body: object) -> NewMessage:
    return NewMessage(stream, "SIDCommissioningEvent", f"key-{stream}-{n}", {"n": n, **body})


def origin(tsn: int, payload: str = "p", peer: str = "10.0.0.7") -> Origin:
    return Origin("tcp", peer, tsn, payload)


@pytest.fixture
async def outbox(tmp_path: Path):
    ob = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite"), dedup_window=5)
    yield ob
    await ob.close()


async def test_concurrent_submits_share_commits(outbox: Outbox) -> None:
    before = outbox.commits
    results = await asyncio.gather(*(outbox.submit([msg(i)]) for i in range(300)))
    commits = outbox.commits - before
    assert all(r.status == "accepted" for r in results)
    assert 1 <= commits <= 30, f"300 concurrent submits took {commits} commits"
    ids = [r.ids[0] for r in results]
    assert ids == sorted(ids)  # committed in submission order: the stream sequence
    pending = await outbox.pending("event", 1000)
    assert [m.body["n"] for m in pending] == list(range(300))


async def test_read_back_bodies_keep_the_stored_text(outbox: Outbox) -> None:
    """Delivery may send the stored JSON text as it is: it is exactly what was committed,
    and the decoded body is the same as the submitted one."""
    body = {"serials": ["0107612345678903", "21\u00e9"], "n": 1.5, "nested": {"a": None}}
    await outbox.submit([NewMessage("event", "K", "k1", body),
                         NewMessage("event", "K", "k2", {}, body_json='{"pre":"encoded"}')])
    with sqlite3.connect(outbox.path) as conn:
        stored = [r[0] for r in conn.execute("SELECT body FROM messages ORDER BY id")]
    first, second = await outbox.pending("event", 10)
    assert [first.body_json, second.body_json] == stored
    assert first.body == body and second.body == {"pre": "encoded"}
    assert first == StoredMessage(first.id, "event", "K", "k1", body, first.created_at, 0)
    assert first != second
    assert StoredMessage(1, "s", "K", "k", body, 0.0, 0).body_json == stored[0]


@pytest.mark.parametrize(("level", "code"), [("FULL", 2), ("NORMAL", 1)])
async def test_submit_returns_after_commit_at_the_chosen_level(tmp_path: Path, level: str,
                                                               code: int) -> None:
    path = tmp_path / "o.sqlite"
    ob = await Outbox.open(StoreSettings(path=path, synchronous=level))  # type: ignore[arg-type]

    def probe(conn: sqlite3.Connection) -> object:
        return (conn.execute("PRAGMA synchronous").fetchone()[0],
                conn.execute("PRAGMA journal_mode").fetchone()[0])

    result = await ob.submit([msg(1)], state={"order": "A1"}, hook=probe)
    assert result.hook_result == (code, "wal")
    # a second, independent connection sees it at once: it is committed, not buffered
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT key FROM messages").fetchall() == [("key-event-1",)]
    other.close()
    await ob.close()


async def test_delivery_marks_skip_the_fsync_but_submits_never_do(tmp_path: Path) -> None:
    ob = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite", synchronous="FULL"))

    def probe(conn: sqlite3.Connection) -> object:
        return conn.execute("PRAGMA synchronous").fetchone()[0]

    await ob.submit([msg(1), msg(2)])
    batch = await ob.pending("event", 10)
    await ob.record(batch[:1], [DeliveryResult(Outcome.DONE)])  # a relaxed commit
    assert (await ob.submit([msg(3)], hook=probe)).hook_result == 2  # FULL again
    # in one group, a submit makes the whole group commit at FULL
    results = await asyncio.gather(ob.record(batch[1:], [DeliveryResult(Outcome.DONE)]),
                                   ob.submit(hook=probe))
    assert results[1].hook_result == 2
    await ob.close()


async def test_duplicate_and_conflict(outbox: Outbox) -> None:
    first = await outbox.submit([msg(1)], dedup=origin(7, "abc"), reply="ACK 7")
    dup = await outbox.submit([msg(2)], dedup=origin(7, "abc"))
    clash = await outbox.submit([msg(3)], dedup=origin(7, "xyz"))
    assert (first.status, dup.status, clash.status) == ("accepted", "duplicate", "conflict")
    assert dup.reply == "ACK 7" and clash.reply == "ACK 7"
    assert [m.key for m in await outbox.pending("event", 10)] == ["key-event-1"]
    # the same tsn from another peer is independent; dedup_peer overrides the origin's peer
    other = await outbox.submit([msg(4)], dedup=origin(7, "xyz", peer="10.0.0.8"))
    as_user = await outbox.submit([msg(5)], dedup=origin(7, "abc", peer="10.0.0.9"),
                                  dedup_peer="10.0.0.7")
    assert (other.status, as_user.status) == ("accepted", "duplicate")


async def test_dedup_window_keeps_newest_per_peer(outbox: Outbox) -> None:
    for tsn in range(1, 8):  # window is 5
        assert (await outbox.submit(dedup=origin(tsn))).status == "accepted"
    assert (await outbox.submit(dedup=origin(7))).status == "duplicate"
    assert (await outbox.submit(dedup=origin(3))).status == "duplicate"
    assert (await outbox.submit(dedup=origin(2))).status == "accepted"  # fell out of the window
    await outbox.submit(dedup_peer="10.0.0.7", clear_window=True)  # INIT
    assert (await outbox.submit(dedup=origin(7, "new"))).status == "accepted"


async def test_dedup_window_is_pruned_in_strides_and_stays_bounded(tmp_path: Path) -> None:
    """A window of 64 is pruned every 4 inserts of a peer (64 // 16): each peer keeps the
    newest 64 at least and never more than 67, also across a reopen; peers do not share."""
    path = tmp_path / "o.sqlite"

    def sizes() -> dict[str, int]:
        with sqlite3.connect(path) as conn:
            return dict(conn.execute("SELECT peer, COUNT(*) FROM dedup GROUP BY peer"))

    seen: list[int] = []
    tsn = 0
    for _reopen in range(2):
        ob = await Outbox.open(StoreSettings(path=path), dedup_window=64)
        for _ in range(150):
            tsn += 1
            await ob.submit(dedup=origin(tsn))
            await ob.submit(dedup=origin(tsn, peer="10.0.0.8"))
            if tsn > 64:
                seen.extend(sizes().values())
        assert (await ob.submit(dedup=origin(tsn - 63))).status == "duplicate"
        assert (await ob.submit(dedup=origin(tsn - 63, "other"))).status == "conflict"
        await ob.close()
    assert min(seen) == 64 and max(seen) == 67, (min(seen), max(seen))


async def test_dedup_window_stays_bounded_when_groups_are_rolled_back(tmp_path: Path) -> None:
    """Every group also holds a submit that fails, so it is rolled back and run again: a
    prune undone by the rollback must be redone, or the window grows without bound."""
    path = tmp_path / "o.sqlite"
    ob = await Outbox.open(StoreSettings(path=path), dedup_window=64)

    def fails(conn: sqlite3.Connection) -> None:
        raise ValueError("refused")

    most = 0
    for tsn in range(1, 201):
        done, failed = await asyncio.gather(ob.submit(dedup=origin(tsn)), ob.submit(hook=fails),
                                            return_exceptions=True)
        assert done.status == "accepted" and isinstance(failed, ValueError)
        with sqlite3.connect(path) as conn:
            most = max(most, conn.execute("SELECT COUNT(*) FROM dedup").fetchone()[0])
    await ob.close()
    assert most <= 67, most


async def test_failing_hook_rolls_back_only_its_own_submit(outbox: Outbox) -> None:
    def make_table(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS reserve (serial TEXT PRIMARY KEY)")

    await outbox.submit(hook=make_table)

    def take(serial: str, fail: bool):
        def hook(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO reserve VALUES (?)", (serial,))
            if fail:
                raise ValueError(f"reserve refused {serial}")
            return f'["{serial}"]'
        return hook

    results = await asyncio.gather(
        outbox.submit([msg(1)], dedup=origin(1), hook=take("S1", False)),
        outbox.submit([msg(2)], dedup=origin(2), state={"x": "2"}, hook=take("S2", True)),
        outbox.submit([msg(3)], dedup=origin(3), hook=take("S3", False)),
        return_exceptions=True)
    assert results[0].status == "accepted" and results[0].reply == '["S1"]'
    assert isinstance(results[1], ValueError) and "S2" in str(results[1])
    assert results[2].hook_result == '["S3"]'
    assert [m.body["n"] for m in await outbox.pending("event", 10)] == [1, 3]
    assert await outbox.get_state() == {}
    # the failed one left no dedup entry: a retransmission is applied afresh
    again = await outbox.submit([msg(2)], dedup=origin(2), hook=take("S2", False))
    assert again.status == "accepted"
    assert (await outbox.submit(dedup=origin(1))).reply == '["S1"]'  # stored hook reply
    # a lone submit runs without a savepoint: its failure rolls back what its hook wrote
    with pytest.raises(ValueError, match="S4"):
        await outbox.submit([msg(4)], dedup=origin(4), state={"x": "4"}, hook=take("S4", True))
    rows = await outbox._read(lambda c: c.execute("SELECT serial FROM reserve").fetchall())
    assert sorted(r[0] for r in rows) == ["S1", "S2", "S3"]
    assert await outbox.get_state() == {}
    assert (await outbox.submit(dedup=origin(4))).status == "accepted"


async def test_state_table(outbox: Outbox) -> None:
    await outbox.submit(state={"order": "{}", "user": "anna"})
    await outbox.submit(state={"user": None})
    assert await outbox.get_state() == {"order": "{}"}


async def test_capacity_limits_refuse_messages_but_not_duplicates(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.outbox")
    ob = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite", max_bytes=65536,
                                         high_water_percent=50))
    accepted = 0
    with pytest.raises(StoreFull) as info:
        for i in range(2000):
            await ob.submit([msg(i, blob="x" * 500)], dedup=origin(i))
            accepted += 1
    assert "store.max_bytes" in info.value.reason and "64.0 KiB" in info.value.reason
    stats = await ob.stats()
    assert stats.high_water and stats.full_reason == info.value.reason
    assert stats.pending == accepted > 10
    warnings = [r for r in caplog.records if "high water" in r.getMessage()]
    assert len(warnings) == 1, "one WARNING per crossing, not one per submit"
    # a retransmission of an accepted command is still answered; pure state still applies
    assert (await ob.submit([msg(0)], dedup=origin(0))).status == "duplicate"
    assert (await ob.submit(state={"user": "bo"})).status == "accepted"
    # delivery frees space: new work is accepted again
    batch = await ob.pending("event", 1000)
    await ob.record(batch, [DeliveryResult(Outcome.DONE)] * len(batch))
    assert (await ob.submit([msg(99999)])).status == "accepted"
    await ob.close()


async def test_stats_show_the_capacity_state_of_now(tmp_path: Path) -> None:
    ob = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite", max_bytes=65536))
    with pytest.raises(StoreFull):
        for i in range(2000):
            await ob.submit([msg(i, blob="x" * 500)])
    assert (await ob.stats()).full_reason
    batch = await ob.pending("event", 1000)
    await ob.record(batch, [DeliveryResult(Outcome.DONE)] * len(batch))
    await ob.purge()
    stats = await ob.stats()  # no submit since: still computed from the store as it is now
    assert (stats.pending, stats.full_reason) == (0, None)
    await ob.close()


async def test_min_free_disk_refuses_with_reason(tmp_path: Path) -> None:
    ob = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite",
                                         min_free_disk_mb=10**9))
    with pytest.raises(StoreFull, match=r"store.min_free_disk_mb = 1000000000"):
        await ob.submit([msg(1)])
    assert (await ob.stats()).pending == 0
    await ob.close()


async def test_an_os_error_in_the_capacity_check_does_not_stop_the_writer(
        tmp_path: Path) -> None:
    # A real OSError: the store's directory is renamed underneath the open outbox, so the
    # capacity check's os.statvfs(store.path.parent) fails (SQLite keeps its open files).
    folder = tmp_path / "data"
    folder.mkdir()
    ob = await Outbox.open(StoreSettings(path=folder / "o.sqlite"))
    await ob.submit([msg(0)])
    folder.rename(tmp_path / "elsewhere")
    try:
        first = await asyncio.wait_for(ob.submit([msg(1)]), 10)  # never hangs
        assert first.status == "accepted"  # last known capacity state: accepting
    finally:
        (tmp_path / "elsewhere").rename(folder)
    assert (await asyncio.wait_for(ob.submit([msg(2)]), 10)).status == "accepted"
    assert [m.body["n"] for m in await ob.pending("event", 10)] == [0, 1, 2]
    await ob.close()


async def test_migration_from_v1_keeps_the_backlog(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.executescript(outbox_schema.SCHEMA_V1)
        old.execute("PRAGMA user_version = 1")
        for i in range(5):
            old.execute("INSERT INTO messages (stream, kind, key, body, created_at, delivered) "
                        "VALUES ('event', 'K', ?, ?, ?, ?)",
                        (f"k{i}", json.dumps({"n": i}), time.time(), int(i == 0)))
        old.execute("INSERT INTO kv VALUES ('order', 'A7')")
    old.close()
    ob = await Outbox.open(StoreSettings(path=path, delivered_retention_s=3600))
    stats = await ob.stats()
    assert (stats.pending, stats.delivered) == (4, 1)
    assert [m.key for m in await ob.pending("event", 10)] == ["k1", "k2", "k3", "k4"]
    assert await ob.get_state() == {"order": "A7"}
    new = await ob.submit([NewMessage("event", "K", "k5", {})])
    assert new.ids == (6,)  # the sequence continues after the migrated rows
    await ob.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == outbox_schema.SCHEMA_VERSION
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2


async def test_newer_schema_is_refused_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreCorrupt, match="schema version 99 is newer"):
        await Outbox.open(StoreSettings(path=path))


def _aside(folder: Path) -> list[Path]:
    return sorted(folder / n for n in os.listdir(folder) if n.startswith("o.sqlite.corrupt-"))


async def test_corrupt_file_is_moved_aside_never_recreated(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = await Outbox.open(StoreSettings(path=path))
    await ob.submit([msg(i, blob="y" * 300) for i in range(200)])
    await ob.close()
    data = bytearray(path.read_bytes())
    data[4096 * 3: 4096 * 3 + 2000] = b"\xde\xad\xbe\xef" * 500  # smash a b-tree page
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="moved aside"):
        await Outbox.open(StoreSettings(path=path))
    aside = _aside(tmp_path)
    assert not path.exists()
    assert len([p for p in aside if not p.name.endswith(("-wal", "-shm"))]) == 1
    assert aside[0].read_bytes()[:16] == b"SQLite format 3\x00"  # the data is kept
    # a restart (systemd, an operator) does not quietly start over with an empty outbox
    with pytest.raises(StoreCorrupt, match=r"corrupt outbox moved aside earlier.*move it out"):
        await Outbox.open(StoreSettings(path=path))
    assert not path.exists()
    saved = tmp_path / "saved"
    saved.mkdir()
    for p in aside:
        p.rename(saved / p.name)
    ob = await Outbox.open(StoreSettings(path=path))  # the operator saved it: start afresh
    assert (await ob.stats()).pending == 0
    await ob.close()


async def test_garbage_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(StoreCorrupt):
        await Outbox.open(StoreSettings(path=path))
    assert not path.exists() and len(_aside(tmp_path)) == 1


async def test_retention_really_deletes_and_reclaims(tmp_path: Path) -> None:
    now = [1_000_000.0]
    path = tmp_path / "o.sqlite"
    ob = await Outbox.open(StoreSettings(path=path, delivered_retention_s=3600,
                                         dead_retention_s=7200), clock=lambda: now[0])
    await ob.submit([msg(i, blob="z" * 1000) for i in range(3000)])
    batch = await ob.pending("event", 3000)
    results = [DeliveryResult(Outcome.PERMANENT, "bad")] + [DeliveryResult(Outcome.DONE)] * 2999
    await ob.record(batch, results)
    assert await ob.purge() == 0  # still within retention
    big = path.stat().st_size
    now[0] += 3601
    assert await ob.purge() == 2999
    assert (await ob.stats()).dead == 1
    now[0] += 3600
    assert await ob.purge() == 1
    stats = await ob.stats()
    assert (stats.pending, stats.delivered, stats.dead) == (0, 0, 0)
    await ob.close()
    assert path.stat().st_size < big / 10, (big, path.stat().st_size)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


async def test_dead_letters_list_show_retry(outbox: Outbox) -> None:
    await outbox.submit([msg(1), msg(2), msg(3)])
    batch = await outbox.pending("event", 10)
    await outbox.record(batch, [DeliveryResult(Outcome.DONE),
                                DeliveryResult(Outcome.PERMANENT, "BadSerial: S2 unknown")])
    [dead] = await outbox.dead_list()
    assert dead.message.key == "key-event-2" and dead.reason == "BadSerial: S2 unknown"
    assert (await outbox.dead_show(dead.message.id)) == dead
    assert await outbox.dead_show(999) is None
    assert [m.body["n"] for m in await outbox.pending("event", 10)] == [3]
    assert await outbox.dead_retry(dead.message.id)
    assert not await outbox.dead_retry(dead.message.id)  # no longer dead
    assert [m.body["n"] for m in await outbox.pending("event", 10)] == [2, 3]


async def test_close_commits_pending_submits(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = await Outbox.open(StoreSettings(path=path, group_commit_window_ms=200))
    tasks = [asyncio.create_task(ob.submit([msg(i)])) for i in range(20)]
    await asyncio.sleep(0)
    await ob.close()
    assert all(t.result().status == "accepted" for t in tasks)
    ob = await Outbox.open(StoreSettings(path=path))
    assert ob.backlog_at_open == 20
    await ob.close()


def _cli(settings: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "outbox", *args,
                           "--settings", str(settings)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


async def test_cli_stats_and_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"store": {"path": str(path)}}))
    ob = await Outbox.open(StoreSettings(path=path))
    await ob.submit([msg(1), msg(2, stream="pool")])
    batch = await ob.pending("event", 10)
    await ob.record(batch, [DeliveryResult(Outcome.PERMANENT, "BadLabel: too long")])
    await ob.close()
    stats = json.loads(_cli(settings, "stats", "--json").stdout)
    assert stats["pending"] == 1 and stats["dead"] == 1
    assert stats["streams"]["pool"]["pending"] == 1
    assert "pool" in _cli(settings, "stats").stdout
    listed = json.loads(_cli(settings, "dead", "list", "--json").stdout)
    assert [d["reason"] for d in listed] == ["BadLabel: too long"]
    dead_id = str(listed[0]["id"])
    assert "BadLabel: too long" in _cli(settings, "dead", "show", dead_id).stdout
    missing = _cli(settings, "dead", "show", "4242")
    assert missing.returncode == 1 and "no dead letter with id 4242" in missing.stderr
    assert _cli(settings, "dead", "retry", dead_id).returncode == 0
    assert json.loads(_cli(settings, "stats", "--json").stdout)["pending"] == 2


async def test_a_pre_encoded_body_is_stored_as_given(tmp_path):
    outbox = await Outbox.open(StoreSettings(path=tmp_path / "o.sqlite"))
    try:
        text = '{"a":[1,"\u00e9"],"b":{"c":null}}'
        await outbox.submit([NewMessage("s", "K", "k1", body_json=text),
                             NewMessage("s", "K", "k2", {"d": "é"})])
        got = await outbox.pending("s", 10)
        assert [m.body for m in got] == [{"a": [1, "é"], "b": {"c": None}}, {"d": "é"}]
    finally:
        await outbox.close()
