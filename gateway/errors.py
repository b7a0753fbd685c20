"""One error hierarchy for the whole gateway.

Protocol errors are split the h11 way: a LocalProtocolError means we misused an API (a bug on
our side), a RemoteProtocolError means the peer sent bad data and carries the refusal to answer
with. Transport errors wrap OSError and timeouts. SettingsError carries every problem found.
"""

from __future__ import annotations

from collections.abc import Sequence


class LinegateError(Exception):
    """Base of every error linegate raises on purpose."""


class SettingsError(LinegateError):
    """settings.json is unusable; ``problems`` lists every problem as file:line:col: key: text."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ProtocolError(LinegateError):
    """A protocol rule was broken."""


class LocalProtocolError(ProtocolError):
    """We tried to send or do something the protocol forbids (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids.

    ``refusal`` names the reason to give back (a gateway.model.Refusal); ``detail`` is the
    human-readable text that goes into the NAK or fault.
    """

    def __init__(self, refusal: object, detail: str) -> None:
        self.refusal = refusal
        self.detail = detail
        super().__init__(detail)


class TransportError(LinegateError):
    """A connection failed (wraps OSError or a timeout)."""


class StoreFull(LinegateError):
    """The outbox refuses new work: a capacity limit or a full disk. ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StoreCorrupt(LinegateError):
    """The outbox file failed its integrity check; it has been moved aside, never overwritten."""


class UpstreamError(LinegateError):
    """An upstream call failed; ``permanent`` says whether retrying can help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        self.permanent = permanent
        super().__init__(message)
