"""The systemd unit in image/: what it relies on is what `linegate run` does."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "image" / "linegate.service"


def _directives() -> list[tuple[str, str]]:
    out = []
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def test_no_exec_start_pre_check_that_restart_prevent_exit_status_cannot_stop():
    """RestartPreventExitStatus= applies to the main process only: a `linegate check` in
    ExecStartPre failing with 2 would be restarted every RestartSec. run validates itself."""
    directives = _directives()
    assert not [v for k, v in directives if k == "ExecStartPre" and " check" in v]
    starts = [v for k, v in directives if k == "ExecStart"]
    assert len(starts) == 1 and " run --settings " in starts[0]
    prevent = [v for k, v in directives if k == "RestartPreventExitStatus"]
    assert prevent and {"2", "3"} <= set(prevent[-1].split())
