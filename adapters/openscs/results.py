"""OPEN-SCS results -> decisions the outbox understands.

Two sources of outcome for every call: the method's ``ReturnStatus`` output
(OPENSCSReturnEnum, spec Table 62) when the call itself succeeded, and the OPC UA method or
service result code otherwise (spec Annex B, Table 95, plus the transport's own failures).

=====================================  ==========  ============================================
ReturnStatus / result code             Decision    Why
=====================================  ==========  ============================================
NoError                                DONE
InsufficientSerialNumbers (requests)   PARTIAL     fewer serial numbers than asked; follow up
                                                   with the ReturnedRequestToken
UnableToAcceptSerialNumberEvents,      RETRY       the server is (temporarily) not accepting
UnableToAcceptLabelEvents,                         events; the data is fine
UnableToAcceptSIDEvents
InvalidSerialNumberCollection,         PERMANENT   the data or the request is wrong; retrying
InvalidSerialNumbersFormat,                        the same message cannot help
InvalidRequestToken,
InvalidSelectionCriteria,
UnknownAggregationSID,
Undefined, unknown values,
InsufficientSerialNumbers (pushes)
InsufficientPrivilegeToExecute,        PERMANENT,  the call as such is refused (the user's
BadUserAccessDenied, Bad_MethodInvalid, call level  rights, the server's methods): the same for
Bad_NodeIdUnknown, Bad_NotImplemented,              every message, so delivery stalls with the
BadNotExecutable, BadServiceUnsupported             upstream_error alarm; nothing is
                                                   dead-lettered
Bad_Timeout, BadRequestTimeout, lost   RETRY       transport: nothing is known to be wrong with
connection, session/channel closed,                the data
server busy/halted, too many sessions,
BadResourceUnavailable, BadNoCommunication
Bad_ArgumentsMissing,                  PERMANENT   the server refused this message
Bad_TooManyArguments, Bad_InvalidArgument,
Bad_TypeMismatch, Bad_OutOfRange,
Bad_InvalidState, BadInternalError, any
other Bad_ method result
=====================================  ==========  ============================================

The reason always names the method, the status and (for codes) the server's text.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from asyncua import ua

from gateway.errors import TransportError, UpstreamError
from gateway.model import Outcome, ReturnStatus


class Decision(enum.Enum):
    DONE = "done"
    PARTIAL = "partial"  # request answered in part: follow up with the request token
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str = ""
    # PERMANENT for the call as such, not for the message's data (no privilege, no such
    # method): every message would get it; delivery must stall with an alarm, not
    # dead-letter the stream
    call_level: bool = False

    def outcome(self) -> Outcome:
        """The outbox view: PARTIAL never reaches the outbox for pushes (it is PERMANENT)."""
        if self.decision is Decision.DONE:
            return Outcome.DONE
        if self.decision is Decision.RETRY:
            return Outcome.RETRY
        return Outcome.PERMANENT


_RETRY_STATUS = {
    ReturnStatus.UnableToAcceptSerialNumberEvents,
    ReturnStatus.UnableToAcceptLabelEvents,
    ReturnStatus.UnableToAcceptSIDEvents,
}

# Refusals of the call as such (the user's rights, the server's methods), the same for every
# message: delivery stalls with the upstream_error alarm instead of dead-lettering them all.
_CALL_CODES = {
    ua.StatusCodes.BadUserAccessDenied,
    ua.StatusCodes.BadMethodInvalid,
    ua.StatusCodes.BadNodeIdUnknown,
    ua.StatusCodes.BadNotImplemented,
    ua.StatusCodes.BadNotExecutable,
    ua.StatusCodes.BadServiceUnsupported,
}

# Service/transport level codes after which the same call may succeed later.
_RETRY_CODES = {
    ua.StatusCodes.BadTimeout,
    ua.StatusCodes.BadRequestTimeout,
    ua.StatusCodes.BadCommunicationError,
    ua.StatusCodes.BadConnectionClosed,
    ua.StatusCodes.BadConnectionRejected,
    ua.StatusCodes.BadDisconnect,
    ua.StatusCodes.BadServerNotConnected,
    ua.StatusCodes.BadServerHalted,
    ua.StatusCodes.BadShutdown,
    ua.StatusCodes.BadNoCommunication,
    ua.StatusCodes.BadSessionIdInvalid,
    ua.StatusCodes.BadSessionClosed,
    ua.StatusCodes.BadSessionNotActivated,
    ua.StatusCodes.BadSecureChannelClosed,
    ua.StatusCodes.BadSecureChannelIdInvalid,
    ua.StatusCodes.BadTooManySessions,
    ua.StatusCodes.BadTooManyOperations,
    ua.StatusCodes.BadResourceUnavailable,
    ua.StatusCodes.BadOutOfMemory,
    ua.StatusCodes.BadTcpServerTooBusy,
    ua.StatusCodes.BadRequestCancelledByClient,
    ua.StatusCodes.BadNotConnected,
}


def from_return_status(value: int, method: str, *, request: bool = False) -> Verdict:
    """Decision for a method's ReturnStatus output (``request``: an SNRequest* method)."""
    try:
        status = ReturnStatus(value)
    except ValueError:
        return Verdict(Decision.PERMANENT, f"{method}: unknown ReturnStatus {value}")
    if status is ReturnStatus.NoError:
        return Verdict(Decision.DONE)
    text = f"{method}: ReturnStatus {status.name} ({status.value})"
    if status is ReturnStatus.InsufficientSerialNumbers and request:
        return Verdict(Decision.PARTIAL, text)
    if status in _RETRY_STATUS:
        return Verdict(Decision.RETRY, text)
    return Verdict(Decision.PERMANENT, text,
                   call_level=status is ReturnStatus.InsufficientPrivilegeToExecute)


def from_status_code(code: int, method: str, text: str = "") -> Verdict:
    """Decision for an OPC UA result code of a call (method result or service fault)."""
    sc = ua.StatusCode(code)
    name = sc.name
    reason = f"{method}: {name}" + (f" ({text})" if text else "")
    if sc.is_good():
        return Verdict(Decision.DONE)
    if (code & 0xFFFF0000) in _RETRY_CODES:
        return Verdict(Decision.RETRY, reason)
    return Verdict(Decision.PERMANENT, reason, call_level=(code & 0xFFFF0000) in _CALL_CODES)


def from_exception(exc: BaseException, method: str) -> Verdict:
    """Decision for an exception raised by a call (never for CancelledError: re-raise it)."""
    if isinstance(exc, asyncio.CancelledError):  # pragma: no cover - callers re-raise
        raise exc
    if isinstance(exc, ua.UaStatusCodeError):
        return from_status_code(exc.code, method, str(exc))
    if isinstance(exc, UpstreamError):
        return Verdict(Decision.PERMANENT if exc.permanent else Decision.RETRY,
                       f"{method}: {exc}")
    if isinstance(exc, (TransportError, OSError, TimeoutError, ConnectionError)):
        return Verdict(Decision.RETRY, f"{method}: connection: {exc!r}")
    return Verdict(Decision.RETRY, f"{method}: {type(exc).__name__}: {exc}")
