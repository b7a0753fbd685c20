"""The outbox's Upstream for OPEN-SCS: outbox message kinds -> client calls -> outcomes.

The message bodies are documented in adapters/openscs/MESSAGES.md. ``deliver`` sends a batch in
order, one logical call per message, and returns one DeliveryResult per message attempted: a
RETRY stops the batch there (the rest is not attempted, as the delivery loop expects); a
PERMANENT refusal is reported and the batch goes on (the delivery loop dead-letters it). Every
event carries the message key as the ``IdempotencyKey`` entry of its context, so a retry after
a lost reply is answered NoError by the upstream without applying the event twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from lxml import etree

from adapters.epcis.split import split_document
from adapters.openscs import types
from adapters.openscs.client import CallResult, OpenScsClient
from adapters.openscs.results import Decision, Verdict
from gateway.errors import TransportError, UpstreamError
from gateway.model import (
    Aggregation,
    DeliveryResult,
    KeyValue,
    Label,
    LabelCollection,
    Outcome,
    SerialNumberState,
    SNCollection,
    StoredMessage,
)
from gateway.settings import OpenScsSettings

log = logging.getLogger(__name__)

S = SerialNumberState
# event method -> the State its collection carries (a body may override with "state")
EVENT_STATES: dict[str, SerialNumberState] = {
    "SNInvalidatingEvent": S.SNInvalid,
    "LabelsEncodingEvent": S.Encoded,
    "LabelsScrappingEvent": S.LabelScrapped,
    "LabelsInspectingEvent": S.Encoded,
    "LabelsSamplingEvent": S.LabelSampled,
    "SIDCommissioningEvent": S.Commissioned,
    "SIDDestroyingEvent": S.Destroyed,
    "SIDShippingEvent": S.Released,
    "SIDInspectingEvent": S.Commissioned,
    "SIDDecommissioningEvent": S.Inactive,
}
POOL_STATES: dict[str, SerialNumberState] = {
    "SNReturnAllocated": S.Allocated,
    "SNReturnUnallocated": S.Unallocated,
    "SNtoUnallocated": S.Unallocated,
    "SNtoAllocated": S.Allocated,
    "SNtoEncoded": S.Encoded,
}
AGGREGATION_KINDS = ("AggregationPackingEvent", "AggregationUnpackingEvent")


class BodyError(ValueError):
    """A message body does not have the documented shape (permanent: retrying cannot help)."""


def _str_list(body: Mapping[str, object], name: str) -> tuple[str, ...]:
    value = body[name] if name in body else None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BodyError(f"body.{name} must be a list of strings, got {value!r}")
    if not value:
        raise BodyError(f"body.{name} is empty (a collection has at least one serial number)")
    return tuple(value)


def _str(body: Mapping[str, object], name: str, default: str = "") -> str:
    value = body[name] if name in body else default
    if not isinstance(value, str):
        raise BodyError(f"body.{name} must be a string, got {value!r}")
    return value


def _context(body: Mapping[str, object], key: str) -> tuple[KeyValue, ...]:
    raw = body["context"] if "context" in body else {}
    if not isinstance(raw, dict):
        raise BodyError(f"body.context must be an object, got {raw!r}")
    pairs = [KeyValue(str(k), "" if v is None else str(v)) for k, v in raw.items()
             if k != "IdempotencyKey"]
    return (*pairs, KeyValue("IdempotencyKey", key))


def _state(body: Mapping[str, object], default: SerialNumberState) -> SerialNumberState:
    if "state" not in body:
        return default
    try:
        return SerialNumberState(body["state"])
    except ValueError:
        raise BodyError(f"body.state {body['state']!r} is not an OPENSCSSerialNumberStateEnum "
                        "value") from None


def label_collection(body: Mapping[str, object], state: SerialNumberState) -> LabelCollection:
    serials = _str_list(body, "serials")
    pool = _str(body, "pool_id", _str(body, "pool"))
    return LabelCollection(ID=pool, Description=_str(body, "description"), State=state,
                           AssociatedPoolID=pool, SerialNumbers=serials,
                           LabelCollection=tuple(Label(s) for s in serials))


def sn_collection(body: Mapping[str, object], state: SerialNumberState) -> SNCollection:
    pool = _str(body, "pool_id", _str(body, "pool"))
    return SNCollection(ID=pool, Description=_str(body, "description"), State=state,
                        AssociatedPoolID=pool, SerialNumbers=_str_list(body, "serials"))


def aggregations(body: Mapping[str, object]) -> tuple[Aggregation, ...]:
    raw = body["elements"] if "elements" in body else None
    if not isinstance(raw, list) or not raw:
        raise BodyError(f"body.elements must be a non-empty list, got {raw!r}")
    out = []
    for i, el in enumerate(raw):
        if not isinstance(el, dict):
            raise BodyError(f"body.elements[{i}] must be an object")
        children = _str_list(el, "children")
        pool = _str(el, "pool")
        out.append(Aggregation(Label(_str(el, "parent")), LabelCollection(
            ID=pool, Description="", State=S.Commissioned, AssociatedPoolID=pool,
            SerialNumbers=children, LabelCollection=tuple(Label(c) for c in children))))
    return tuple(out)


class OpenScsUpstream:
    """``Upstream`` for the delivery loop: streams "event", "pool", "aggregation"."""

    def __init__(self, client: OpenScsClient, settings: OpenScsSettings | None = None) -> None:
        """``settings`` is accepted for symmetry; the client's own settings are used."""
        self.client = client

    async def deliver(self, stream: str, batch: Sequence[StoredMessage]) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        for message in batch:
            try:
                result = await self.send(message)
                verdict = result.verdict
            except BodyError as exc:
                verdict = Verdict(Decision.PERMANENT, f"{message.kind} {message.key}: {exc}")
            except types.TypeEncodeError as exc:
                verdict = Verdict(Decision.PERMANENT, f"{message.kind} {message.key}: {exc}")
            except UpstreamError as exc:
                # raised before any call for what this message asks (a method or collection
                # that does not fit its kind): about this message only. Connection and
                # configuration failures come back as RETRY verdicts from the client.
                decision = Decision.PERMANENT if exc.permanent else Decision.RETRY
                verdict = Verdict(decision, f"{message.kind} {message.key}: {exc}")
            if verdict.decision is Decision.PERMANENT and verdict.call_level:
                # not about this message's data: every message would get it. What was
                # delivered before it counts; then the stream stalls with an alarm.
                if results:
                    return results
                raise UpstreamError(f"{message.kind} {message.key}: {verdict.reason}",
                                    permanent=True)
            outcome = verdict.outcome()
            if outcome is not Outcome.DONE:  # the delivery loop logs it (DEAD LETTER/stalled)
                log.debug("OPEN-SCS %s %s (stream %s): %s: %s", message.kind, message.key,
                          stream, outcome.value, verdict.reason)
            results.append(DeliveryResult(outcome, verdict.reason))
            if outcome is Outcome.RETRY:
                break
        return results

    async def send(self, message: StoredMessage) -> CallResult:
        """One message -> one logical OPEN-SCS call (raises BodyError for a bad body)."""
        kind, body, c = message.kind, message.body, self.client
        if kind in EVENT_STATES:
            state = _state(body, EVENT_STATES[kind])
            coll: LabelCollection | SNCollection
            if kind == "SNInvalidatingEvent":
                coll = sn_collection(body, state)
            else:
                coll = label_collection(body, state)
            sn_format = _str(body, "sn_format") or None
            if body.get("encode_first") is True and isinstance(coll, LabelCollection):
                # The label was printed from serial numbers the upstream still holds as
                # Allocated: report it encoded first, under a key of its own, so that the
                # event itself is a legal transition (a retry replays both; each applies once).
                first = await c.event("LabelsEncodingEvent",
                                      label_collection(body, S.Encoded),
                                      context=_context(body, f"{message.key}#encode"),
                                      sn_format=sn_format)
                if not first.ok:
                    return first
            return await c.event(kind, coll, context=_context(body, message.key),
                                 sn_format=sn_format)
        if kind in POOL_STATES:
            coll = sn_collection(body, _state(body, POOL_STATES[kind]))
            # no idempotency key for pool methods: on a resend, a part the earlier attempt
            # applied answers Bad_InvalidState and counts as done (see pool_push)
            return await c.pool_push(kind, coll, selection=_str(body, "pool"),
                                     sn_format=_str(body, "sn_format") or None,
                                     resend=message.attempts > 0)
        if kind in AGGREGATION_KINDS:
            return await c.aggregation(
                kind, aggregations(body), context=_context(body, message.key),
                parent_sn_format=_str(body, "parent_sn_format") or None,
                packed_sn_format=_str(body, "packed_sn_format") or None)
        if kind == "EPCISStream":
            document = _str(body, "document").encode("utf-8")
            if not document:
                raise BodyError("body.document is empty")
            fmt = c.settings.sn_format
            try:
                parts = await self._epcis_parts(document)
            except (UpstreamError, TransportError) as exc:
                # the limits could not be read (upstream down, a configuration fault): the
                # document is not at fault, as for any other call (see client.call)
                return CallResult(Verdict(Decision.RETRY, f"EPCISStream: {exc}"), calls=0)
            result = CallResult(Verdict(Decision.DONE), calls=0)
            for i, part in enumerate(parts, 1):
                key = message.key if len(parts) == 1 else f"{message.key}#{i}/{len(parts)}"
                options = types.EventStreamArgument(
                    _str(body, "sn_format", fmt), _str(body, "parent_sn_format", fmt),
                    _str(body, "packed_sn_format", fmt), _context(body, key))
                result = await c.epcis_stream(part, options)
                if not result.ok:
                    if len(parts) > 1:
                        return CallResult(Verdict(result.verdict.decision,
                                                  f"part {i}/{len(parts)}: "
                                                  f"{result.verdict.reason}"),
                                          result.status, result.calls)
                    return result
            return result
        raise BodyError(f"unknown message kind {kind!r} (see adapters/openscs/MESSAGES.md)")

    async def _epcis_parts(self, document: bytes) -> list[bytes]:
        """The document cut to the event manager's MaxEPCIS* limits (one part if it fits)."""
        sids = await self.client.limit("event", "MaxEPCISObjectEventSIDs")
        aggs = await self.client.limit("event", "MaxEPCISaggregationEvents")
        try:
            return split_document(document, sids, aggs)
        except (etree.XMLSyntaxError, ValueError) as exc:
            # not ours to judge: the server checks the document and says what is wrong
            log.warning("EPCIS document cannot be split (%s); sent as it is", exc)
            return [document]

