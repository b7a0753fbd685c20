"""``linegate outbox``: stats, dead list, dead show ID, dead retry ID (each with --json).

Safe next to a running gateway: the outbox is a WAL file, so reads never block it, and a
``dead retry`` is one small transaction (the running delivery notices it within seconds).
``stats`` and ``dead list/show`` open the file read-only (no integrity move-aside, no
migration, no VACUUM; they work on a full disk); a store error is one line and exit code 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.errors import LinegateError
from gateway.outbox import SQLITE_CORRUPT, SQLITE_NOTADB, Outbox
from gateway.outbox_stats import DeadLetter, OutboxStats, fmt_bytes

EXIT_OK, EXIT_NOT_FOUND, EXIT_STORE = 0, 1, 3


def add_parser(subparsers: Any) -> None:
    outbox = subparsers.add_parser("outbox", help="inspect the store-and-forward outbox",
                                   description=__doc__)
    sub = outbox.add_subparsers(dest="outbox_command", required=True, metavar="COMMAND")

    def leaf(parent: Any, name: str, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=text, description=text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--settings", type=Path, default=None,
                       help="settings.json (default: the installation's)")
        return p

    leaf(sub, "stats", "counts per stream and state, oldest pending age, size")
    dead = sub.add_parser("dead", help="dead letters (permanently refused by upstream)",
                          description="dead letters: list, show ID, retry ID")
    dsub = dead.add_subparsers(dest="dead_command", required=True, metavar="COMMAND")
    dl = leaf(dsub, "list", "list dead letters")
    dl.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    leaf(dsub, "show", "show one dead letter").add_argument("id", type=int, help="message id")
    leaf(dsub, "retry", "queue a dead letter for delivery again").add_argument(
        "id", type=int, help="message id")


def run(args: argparse.Namespace, settings: Any) -> int:
    """Run one ``outbox`` subcommand against ``settings.store``; returns the exit code."""
    path = Path(settings.store.path)
    if not path.exists():
        print(f"no outbox at {path} (store.path); the gateway creates it on its first start",
              file=sys.stderr)
        return EXIT_STORE
    # only `dead retry` writes; everything else opens read-only: it works on a full disk and
    # never moves a corrupt file aside nor migrates or vacuums the gateway's file
    read_only = not (args.outbox_command == "dead" and args.dead_command == "retry")
    try:
        return asyncio.run(_with_outbox(settings.store, lambda ob: _dispatch(ob, args),
                                        read_only))
    except sqlite3.DatabaseError as exc:
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
            print(corrupt_text(path, exc), file=sys.stderr)
        else:
            print(f"outbox {path} (store.path): {exc}", file=sys.stderr)
        return EXIT_STORE
    except (LinegateError, sqlite3.Error) as exc:
        print(f"outbox: {exc}", file=sys.stderr)
        return EXIT_STORE


def corrupt_text(path: Path, exc: Exception) -> str:
    """What a corrupt outbox found while reading means and what to do (gateway/OUTBOX.md)."""
    return (f"outbox {path} (store.path) is corrupt: {exc}. Nothing was changed (read-only).\n"
            "Next: restart the gateway. At its start it moves the file aside as "
            f"{path.name}.corrupt-<UTC time> (with its -wal/-shm) and stops with exit 3 rather "
            "than start on an empty outbox. Save that file for recovery (e.g. "
            f"`sqlite3 {path.name}.corrupt-<time> .recover`), move it out of {path.parent}, "
            "then start the gateway again. See gateway/OUTBOX.md, \"Start-up, migration, "
            "corruption, retention\".")


async def _with_outbox(store: Any, fn: Callable[[Outbox], Awaitable[int]],
                       read_only: bool) -> int:
    outbox = await (Outbox.open_read_only(store) if read_only else Outbox.open(store))
    try:
        return await fn(outbox)
    finally:
        await outbox.close(checkpoint=False)  # leave checkpoints to a running gateway


async def _dispatch(outbox: Outbox, args: argparse.Namespace) -> int:
    as_json = bool(args.json)
    if args.outbox_command == "stats":
        _print_stats(await outbox.stats(), as_json)
        return EXIT_OK
    if args.dead_command == "list":
        letters = await outbox.dead_list(args.limit)
        if as_json:
            print(json.dumps([d.to_dict() for d in letters], indent=2))
        elif not letters:
            print("no dead letters")
        for d in [] if as_json else letters:
            m = d.message
            print(f"{m.id:>8}  {_utc(d.dead_at)}  {m.stream:<12} {m.kind:<24} {d.reason}")
        return EXIT_OK
    if args.dead_command == "show":
        letter = await outbox.dead_show(args.id)
        if letter is None:
            return _not_found(args.id, as_json)
        _print_letter(letter, as_json)
        return EXIT_OK
    ok = await outbox.dead_retry(args.id)
    if not ok:
        return _not_found(args.id, as_json)
    if as_json:
        print(json.dumps({"id": args.id, "retried": True}))
    else:
        print(f"dead letter {args.id} queued for delivery again (it is next on its stream)")
    return EXIT_OK


def _not_found(message_id: int, as_json: bool) -> int:
    text = f"no dead letter with id {message_id} (see `linegate outbox dead list`)"
    if as_json:
        print(json.dumps({"id": message_id, "error": text}))
    else:
        print(text, file=sys.stderr)
    return EXIT_NOT_FOUND


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _print_stats(stats: OutboxStats, as_json: bool) -> None:
    if as_json:
        print(json.dumps(stats.to_dict(), indent=2))
        return
    print(f"pending {stats.pending}, dead {stats.dead}, delivered (kept) {stats.delivered}; "
          f"oldest pending {stats.oldest_pending_age_s:.0f} s")
    print(f"size {fmt_bytes(stats.bytes)} of store.max_bytes {fmt_bytes(stats.max_bytes)} "
          f"({fmt_bytes(stats.file_bytes)} on disk)"
          + ("; HIGH WATER" if stats.high_water else ""))
    if stats.full_reason:
        print(stats.full_reason)
    if stats.streams:
        print(f"{'stream':<16}{'pending':>10}{'dead':>10}{'delivered':>12}")
    for name, counts in sorted(stats.streams.items()):
        print(f"{name:<16}{counts['pending']:>10}{counts['dead']:>10}{counts['delivered']:>12}")


def _print_letter(letter: DeadLetter, as_json: bool) -> None:
    if as_json:
        print(json.dumps(letter.to_dict(), indent=2))
        return
    m = letter.message
    print(f"id        {m.id}\nstream    {m.stream}\nkind      {m.kind}\nkey       {m.key}\n"
          f"created   {_utc(m.created_at)}\ndead at   {_utc(letter.dead_at)}\n"
          f"attempts  {m.attempts}\nreason    {letter.reason}")
    print("body      " + json.dumps(m.body, indent=2, ensure_ascii=False))
