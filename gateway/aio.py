"""Small asyncio helpers."""

from __future__ import annotations

import asyncio


def cancel_requested() -> bool:
    """True when the current task itself is being cancelled (shutdown, a supervisor stop).

    A library may raise a ``CancelledError`` subclass on its own (asyncua raises
    ``CancelledWithResultError`` when a request's future is cancelled as its connection is
    lost); Python 3.11's ``asyncio.timeout`` converts only the exact ``CancelledError`` into
    ``TimeoutError``, so such an error can escape a call that nobody cancelled. Code that must
    outlive a failed call re-raises a ``CancelledError`` only when this returns True and treats
    it as a transport failure otherwise.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
