"""Outside programs the tests need (socat, node, mbpoll ...).

``require_tool(name)`` returns the program's path. When it is missing the test is skipped on a
developer machine but *fails* under CI=true, so that CI never goes green by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name!r} is not installed (bash .ci/run installs it)"
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)
    raise AssertionError("unreachable")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
