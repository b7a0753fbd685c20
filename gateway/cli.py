"""The ``linegate`` command line: run, check, demo, outbox, trust, passwd."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

from gateway import __version__
from gateway.errors import LinegateError, SettingsError, StoreCorrupt
from gateway.logsetup import setup_logging

log = logging.getLogger(__name__)

DEFAULT_SETTINGS = Path("settings.json")


def _add_settings_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS,
                        help="path to settings.json (default: ./settings.json); relative paths "
                             "inside it resolve against its directory")


def build_parser() -> argparse.ArgumentParser:
    from gateway import outbox_cli
    from gateway.status import cli as status_cli

    parser = argparse.ArgumentParser(
        prog="linegate",
        description="Edge gateway for serialized packaging and assembly lines: OIP from the "
                    "line, durable store-and-forward, OPEN-SCS upstream, OPC UA status.")
    parser.add_argument("--version", action="version", version=f"linegate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the gateway until SIGTERM/SIGINT",
                         description="Run the gateway until SIGTERM or SIGINT, then shut down "
                                     "gracefully (in-flight work committed, exit 0).")
    _add_settings_arg(run)

    check = sub.add_parser("check", help="validate settings.json",
                           description="Validate settings.json: exit 0 with a one-line summary, "
                                       "or exit 2 listing every problem as file:line:col.")
    _add_settings_arg(check)

    demo = sub.add_parser("demo", help="run an order end to end on embedded defaults",
                          description="Start the gateway on a temporary data directory with a "
                                      "simulated PAC and the reference OPEN-SCS upstream on "
                                      "loopback, run an order through and print what flowed.")
    demo.add_argument("--duration", type=_demo_duration, default=20.0,
                      help="at most this many seconds for the order to reach upstream "
                           "(default 20, at least 5)")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")

    outbox_cli.add_parser(sub)
    status_cli.add_parsers(sub)
    return parser


def _demo_duration(text: str) -> float:
    from gateway.demo import MIN_DURATION_S

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= MIN_DURATION_S:  # (NaN too)
        raise argparse.ArgumentTypeError(
            f"expected at least {MIN_DURATION_S:g} seconds (starting the upstream, filling the "
            f"reserve and running the order take that long), got {text}")
    return value


def _load(path: Path):  # returns gateway.settings.Settings
    from gateway.settings_loader import load_settings

    return load_settings(path)


def cmd_check(args: argparse.Namespace) -> int:
    from gateway import env_checks
    from gateway.instance_lock import InstanceLock
    from gateway.settings_loader import summary
    from gateway.status.server import check_warnings

    try:
        settings = _load(args.settings)
    except SettingsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.settings}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 2
    errors, warnings = _split(check_warnings(settings))
    errors = [f"{args.settings}: {error}" for error in errors]
    errors += env_checks.check(settings)  # what only this machine can tell: binds, files
    running = InstanceLock(settings.store.path)
    if running.held_by_other():
        warnings.append(f"a linegate (pid {running.holder()}) is running with this store "
                        f"({settings.store.path}): the ports it listens on show as in use, "
                        "and a second 'linegate run' on this store would exit 2")
        warnings += env_checks.ports_in_use(settings)  # probably by that gateway
    else:  # no linegate on this store: another program holds the port
        errors += env_checks.ports_in_use(settings, running=False)
    for warning in [*settings.warnings, *warnings]:
        print(f"WARNING: {warning}", file=sys.stderr)
    if errors:
        for error in errors:
            print(error, file=sys.stderr)
        print(f"{args.settings}: {len(errors)} problem(s)", file=sys.stderr)
        return 2
    print(f"{args.settings}: OK — {summary(settings)}")
    return 0


WILL_NOT_START = "(the status server will not start)"


def _split(messages: list[str]) -> tuple[list[str], list[str]]:
    """(errors, warnings): a status server that cannot start is an error for check and run,
    so that run exits 2 (the unit does not restart) rather than crash-loop."""
    errors = [m for m in messages if m.endswith(WILL_NOT_START)]
    return errors, [m for m in messages if m not in errors]


async def _run_until_signalled(settings) -> int:  # settings: gateway.settings.Settings
    from gateway.runtime import Runtime

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime = Runtime(settings)
    await runtime.run(stop)
    log.info("linegate stopped")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = _load(args.settings)
    except SettingsError as exc:
        setup_logging("INFO")
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    setup_logging(settings.logging.level)
    for warning in settings.warnings:
        log.warning("%s", warning)
    from gateway import env_checks
    from gateway.instance_lock import AlreadyRunning, InstanceLock
    from gateway.status.server import check_warnings

    errors, _ = _split(check_warnings(settings))  # the warnings are logged by the server
    errors = [f"{args.settings}: {error}" for error in errors]
    errors += env_checks.check(settings)  # a listener that cannot bind would only crash-loop
    lock = InstanceLock(settings.store.path)
    if not errors:
        try:  # before the port checks: a second gateway's ports are "in use" by the first
            lock.acquire()
        except AlreadyRunning as exc:  # exit 2: systemd does not restart into it again
            log.critical("cannot run: %s", exc)
            return 2
        except OSError as exc:  # the lock file cannot be made: run unguarded, say so
            log.error("cannot take the instance lock %s (%s): running without the guard "
                      "against a second gateway on this store", lock.path, exc)
    # we hold this store's lock: another program has the port. It may free it (a service
    # being moved): run starts, and is not ready until every listener is up
    for taken in env_checks.ports_in_use(settings, running=False):
        log.warning("%s; linegate retries and is not ready until it is free", taken)
    if errors:
        for error in errors:
            log.critical("%s", error)
        return 2
    try:
        return asyncio.run(_run_until_signalled(settings))
    except StoreCorrupt as exc:
        log.critical("%s", exc)
        return 3
    except LinegateError as exc:
        log.critical("cannot run: %s", exc)
        return 1
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    """The ``linegate`` command. Output piped into a reader that stops early (``| head``)
    ends the command quietly, as for other Unix tools, instead of with a traceback."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # Python's documented way: point stdout at devnull so that the interpreter's final
        # flush does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command ended by it


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "check":
        return cmd_check(args)
    if args.command == "demo":
        from gateway.demo import run_demo

        setup_logging("WARNING")
        return asyncio.run(run_demo(duration_s=args.duration, keep=args.keep))
    # subcommands that work on an installation: outbox, trust, passwd
    from gateway import outbox_cli
    from gateway.status import cli as status_cli

    setup_logging("WARNING")
    if args.command == "passwd":  # a hash needs no installation
        return status_cli.run_passwd(args.stdin, sys.stdout)
    path = getattr(args, "settings", None) or DEFAULT_SETTINGS
    try:
        if args.command == "outbox":
            # the outbox must be readable exactly when something else in the settings is
            # wrong: only store.* has to be valid, the rest is printed as warnings
            settings, others = _load_store_only(path)
            for problem in others:
                print(f"WARNING: {problem}", file=sys.stderr)
            return int(outbox_cli.run(args, settings))
        settings = _load(path)
    except SettingsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    return int(status_cli.run(args, settings))


def _load_store_only(path: Path):  # -> (gateway.settings.Settings, problems elsewhere)
    """Settings for commands that only touch the outbox: the file must parse and ``store.*``
    must be valid; problems of other keys are returned (to print as warnings) instead of
    raised, and their sections take their defaults."""
    import pyjson5

    from gateway.settings_loader import load_settings_text

    try:
        return _load(path), []  # (its warnings are check's and run's business)
    except SettingsError as exc:
        problems = exc.problems
    fatal = [p for p in problems if not _is_about_other_keys(p, str(path))]
    if fatal:
        raise SettingsError(fatal)
    text = Path(path).read_bytes().decode("utf-8-sig")  # read and parsed above already
    data = pyjson5.decode(text)
    store = data.get("store", {}) if isinstance(data, dict) else {}
    settings = load_settings_text(json.dumps({"store": store}), source=str(path),
                                  root=Path(os.path.abspath(path)).parent)
    return settings, problems


_PROBLEM = re.compile(r":\d+:\d+: ([A-Za-z_][\w.\[\]]*): ")


def _is_about_other_keys(problem: str, source: str) -> bool:
    """True for a rendered problem ``SOURCE:LINE:COL: key: text`` of a key outside store.*;
    syntax errors, unreadable files and store.* problems are not."""
    if not problem.startswith(source):
        return False
    match = _PROBLEM.match(problem, len(source))
    if match is None:
        return False
    key = match.group(1)
    return key != "store" and not key.startswith(("store.", "store["))


if __name__ == "__main__":
    sys.exit(main())
