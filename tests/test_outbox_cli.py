"""``linegate outbox`` in a real process against real files: read-only where it only reads,
one clear line (no traceback) on a store error, the capacity state of now."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from gateway.errors import StoreFull
from gateway.model import NewMessage
from gateway.outbox import Outbox
from gateway.settings import StoreSettings
from tests.test_outbox import _cli
from tests.test_outbox_diskfull import RESERVE, _fill
from tests.test_outbox_diskfull import small_fs as small_fs  # the fixture


def _settings(folder: Path, store: Path, **more: object) -> Path:
    settings = folder / "settings.json"
    settings.write_text(json.dumps({"store": {"path": str(store), **more}}))
    return settings


async def test_cli_stats_show_a_full_store_and_no_commit_count(tmp_path: Path) -> None:
    store = tmp_path / "o.sqlite"
    ob = await Outbox.open(StoreSettings(path=store, max_bytes=65536, high_water_percent=50))
    with pytest.raises(StoreFull):
        for i in range(2000):
            await ob.submit([NewMessage("event", "K", f"k{i}", {"b": "x" * 500})])
    await ob.close()
    done = _cli(_settings(tmp_path, store, max_bytes=65536, high_water_percent=50),
                "stats", "--json")
    stats = json.loads(done.stdout)
    assert stats["high_water"] is True and "store.max_bytes" in stats["full_reason"]
    assert stats["commits"] is None  # a count of this process only: none in a reader


async def test_cli_on_a_corrupt_file_reports_it_and_leaves_it_in_place(tmp_path: Path) -> None:
    store = tmp_path / "o.sqlite"
    store.write_bytes(b"this is not a database at all" * 200)
    for args in (("stats",), ("dead", "list"), ("dead", "show", "1")):
        done = _cli(_settings(tmp_path, store), *args)
        assert done.returncode == 3, done
        assert "Traceback" not in done.stderr and str(store) in done.stderr
        assert store.exists() and not [n for n in os.listdir(tmp_path) if ".corrupt-" in n]


async def test_cli_reads_the_outbox_on_a_full_disk(small_fs: Path, tmp_path: Path) -> None:
    store = small_fs / "o.sqlite"
    ob = await Outbox.open(StoreSettings(path=store, min_free_disk_mb=0,
                                         disk_reserve_bytes=RESERVE))
    await ob.submit([NewMessage("event", "K", f"k{i}", {}) for i in range(7)])
    await ob.close()
    await asyncio.to_thread(_fill, small_fs / "filler", 0)
    settings = _settings(tmp_path, store, min_free_disk_mb=0, disk_reserve_bytes=RESERVE)
    done = _cli(settings, "stats", "--json")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done
    assert json.loads(done.stdout)["pending"] == 7
    (small_fs / "o.sqlite.reserve").unlink()  # no reserve either: a write fails clearly
    done = _cli(settings, "dead", "retry", "1")
    assert "Traceback" not in done.stderr and done.returncode in (1, 3), done


async def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`linegate outbox dead list | head -1`: the reader stops early. An end-to-end review
    saw a BrokenPipeError traceback; a Unix tool ends quietly (exit 141, as for SIGPIPE)."""
    import sys

    from tests.conftest import ROOT

    store = tmp_path / "o.sqlite"
    ob = await Outbox.open(StoreSettings(path=store))
    await ob.submit([NewMessage("event", "E", "k1", {"n": 1})])
    await ob.close()
    settings = _settings(tmp_path, store)
    code = ("import os, sys\n"
            "r, w = os.pipe(); os.close(r); os.dup2(w, 1)  # nobody reads stdout\n"
            "from gateway.cli import main\n"
            f"sys.exit(main(['outbox', 'stats', '--settings', {str(settings)!r}]))\n")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, cwd=ROOT,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 141, err
    assert b"Traceback" not in err, err
