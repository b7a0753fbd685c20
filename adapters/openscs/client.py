"""OPEN-SCS OPC UA client: secured sessions, discovery, the 20 typed methods and EPCISStream.

One ``OpenScsClient`` serves the three manager roles (pool, event, aggregation); each role may
live on its own server (``upstream.openscs.endpoints``), sessions are shared per URL.

Connecting (per endpoint, ``_Session.connect``):

1. SecurityPolicy None is refused (OPEN-SCS 7.4.1.2) unless ``allow_insecure``; when allowed it
   is logged at WARNING on every connect.
2. The application instance certificate is generated on first start (``certs``), with
   ``application_uri`` in its SubjectAltName.
3. GetEndpoints over a discovery channel; the endpoint with the configured policy and mode is
   chosen and its certificate must be in ``trust_dir`` (else a clear error naming the file).
4. The session is authenticated: user name + password from ``password_file`` (mode 0600) or an
   X.509 user certificate. Anonymous sessions are refused unless ``allow_insecure``.
5. The OPEN-SCS namespace is found by URI (configured, NodeSet or spec-text spelling), the
   manager objects under ``Objects/OPENSCSObjects`` by TypeDefinition, and their properties
   (Max* limits, PoolSelectionCriteria, SNFormat) are read.

A lost connection is dropped and re-established on the next call, with capped exponential
backoff; during the backoff calls fail at once (RETRY) instead of blocking the caller. Every
call is bounded by ``timeout_s``.

Collections larger than the server's Max* limits are split into several calls. When an event
is split, chunk ``i`` of ``n`` carries the IdempotencyKey ``<key>#<i>/<n>`` so that the upstream
deduplicates each chunk on a retry (the split is deterministic for given limits).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from asyncua import ua

from adapters.openscs import certs, nodeids, types
from adapters.openscs import ua as scs_ua
from adapters.openscs.results import Decision, Verdict, from_exception, from_return_status
from adapters.openscs.session import Session
from gateway import board as K
from gateway.aio import cancel_requested
from gateway.board import StatusBoard
from gateway.errors import TransportError, UpstreamError
from gateway.model import (
    Aggregation,
    KeyValue,
    LabelCollection,
    ReturnStatus,
    SerialNumberState,
    SNCollection,
)
from gateway.settings import OpenScsSettings

log = logging.getLogger(__name__)

POOL, EVENT, AGGREGATION = "pool", "event", "aggregation"
REQUEST_METHODS = {
    SerialNumberState.Unassigned: "SNRequestUnassigned",
    SerialNumberState.Unallocated: "SNRequestUnallocated",
    SerialNumberState.Allocated: "SNRequestAllocated",
}
POOL_PUSH_LIMIT = {
    "SNReturnUnallocated": "MaxSNReturnable", "SNReturnAllocated": "MaxSNReturnable",
    "SNtoUnallocated": "MaxSNPushable", "SNtoAllocated": "MaxSNPushable",
    "SNtoEncoded": "MaxSNPushable",
}
SN_EVENT_METHODS = ("SNInvalidatingEvent",)
LABEL_EVENT_METHODS = tuple(m for m in nodeids.EVENT_METHODS if m not in SN_EVENT_METHODS)
EPCIS_BLOCK_BYTES = 32 * 1024
MAX_REQUEST_ROUNDS = 1000  # bound on request/token loops


@dataclass(frozen=True)
class CallResult:
    """One logical call (possibly several OPC UA calls after splitting)."""

    verdict: Verdict
    status: ReturnStatus | None = None
    calls: int = 1

    @property
    def ok(self) -> bool:
        return self.verdict.decision is Decision.DONE


@dataclass(frozen=True)
class RequestResult:
    """Serial numbers obtained by an SNRequest* method (after following request tokens)."""

    verdict: Verdict
    serials: tuple[str, ...] = ()
    collection: SNCollection | None = None
    token: str = ""  # a ReturnedRequestToken still outstanding (PARTIAL)
    calls: int = 0


PageHandler = Callable[[tuple[str, ...], SNCollection | None], Awaitable[None]]


@dataclass
class _Backoff:
    initial_s: float
    max_s: float
    delay_s: float = 0.0
    not_before: float = 0.0

    def failed(self) -> float:
        self.delay_s = min(self.max_s, max(self.initial_s, self.delay_s * 2))
        wait = self.delay_s * (0.5 + random.random() / 2)
        self.not_before = time.monotonic() + wait
        return wait

    def succeeded(self) -> None:
        self.delay_s = 0.0
        self.not_before = 0.0


@dataclass
class _Endpoint:
    url: str
    backoff: _Backoff
    session: Session | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_error: str = ""


def _offered_formats(session: Session) -> list[str]:
    """The serial-number formats the session's managers advertise (their SNFormat property;
    the specification puts it on the pool manager), empty when none says."""
    offered: list[str] = []
    for info in session.managers.values():
        value = info.properties.get("SNFormat")
        if isinstance(value, list):
            offered += [str(v) for v in value if str(v) not in offered]
    return offered


class OpenScsClient:
    """OPEN-SCS client over one or more secured OPC UA sessions (see the module doc)."""

    name = "openscs-client"

    def __init__(self, settings: OpenScsSettings, *, board: StatusBoard | None = None) -> None:
        self.settings = settings
        self._board = board
        self._endpoints: dict[str, _Endpoint] = {}
        ep = settings.endpoints
        self._role_url = {
            POOL: ep.pool_manager or settings.endpoint,
            EVENT: ep.event_manager or settings.endpoint,
            AGGREGATION: ep.aggregation_manager or settings.endpoint,
        }
        for url in self._role_url.values():
            self._endpoints.setdefault(url, _Endpoint(url, _Backoff(
                min(1.0, settings.reconnect_max_s), settings.reconnect_max_s)))

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        """Connect every configured endpoint now (raises the first failure)."""
        for role in (POOL, EVENT, AGGREGATION):
            await self._session(role, wait=True)

    async def serve(self) -> None:
        """Service: keep the sessions up (connect early, probe, reconnect with backoff).

        Calls do not need it (they connect on demand); it makes a broken upstream visible
        before the first message and publishes the state to the status board. Connection
        problems are logged, never raised (the data path reports them as RETRY).
        """
        try:
            while True:
                for role in (POOL, EVENT, AGGREGATION):
                    await self._probe(role)
                self._publish()
                await asyncio.sleep(max(0.05, min(5.0, self.settings.reconnect_max_s)))
        finally:
            await self.close()

    async def _probe(self, role: str) -> None:
        endpoint = self._endpoints[self._role_url[role]]
        try:
            session = await self._session(role)
        except (UpstreamError, TransportError):
            return  # logged by _session; retried after its backoff
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await session.client.nodes.server_state.read_value()
        except asyncio.CancelledError:
            raise
        except (ua.UaError, OSError, TimeoutError, ConnectionError) as exc:
            endpoint.last_error = f"liveness probe failed: {exc!r}"
            log.warning("OPEN-SCS %s: %s; reconnecting", endpoint.url, endpoint.last_error)
            if endpoint.session is session:
                await self._drop(endpoint)

    def _publish(self) -> None:
        if self._board is None:
            return
        states = self.status()
        for url, state in states.items():
            self._board.set_adapter(f"openscs {url}", state)
        bad = {url: state for url, state in states.items() if state != "connected"}
        self._board.set_health(K.UPSTREAM_STATE, "connected" if not bad else "; ".join(
            f"{url}: {state}" for url, state in bad.items()))
        cert = self.settings.certificate_file
        if self.settings.security_policy != "None" and cert.exists():
            try:
                not_after = certs.load_certificate(cert).not_valid_after_utc
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s for its expiry: %s", cert, exc)
            else:
                self._board.set_health(K.CERT_EXPIRY, not_after.isoformat())

    async def close(self) -> None:
        for endpoint in self._endpoints.values():
            await self._drop(endpoint)

    def status(self) -> dict[str, str]:
        """Per endpoint: 'connected' or the last error (for the status board)."""
        return {url: ("connected" if ep.session else ep.last_error or "not connected")
                for url, ep in self._endpoints.items()}

    async def _session(self, role: str, *, wait: bool = False) -> Session:
        endpoint = self._endpoints[self._role_url[role]]
        session = endpoint.session
        if session is not None:
            return session
        now = time.monotonic()
        if not wait and now < endpoint.backoff.not_before:
            raise TransportError(f"OPEN-SCS {endpoint.url} unavailable (retrying in "
                                 f"{endpoint.backoff.not_before - now:.1f}s): "
                                 f"{endpoint.last_error}")
        async with endpoint.lock:
            if endpoint.session is not None:
                return endpoint.session
            session = Session(endpoint.url, self.settings)
            try:
                await asyncio.wait_for(session.connect(), self.settings.timeout_s * 3)
            except asyncio.CancelledError:
                await session.close()
                raise
            except (UpstreamError, TransportError, ua.UaError, OSError, TimeoutError) as exc:
                await session.close()
                wait_s = endpoint.backoff.failed()
                endpoint.last_error = str(exc) or type(exc).__name__
                # a refusal that will not pass by itself (password, trust) is an ERROR; an
                # upstream that is down or unreachable is the ordinary retry case
                log.log(logging.ERROR if isinstance(exc, UpstreamError) and exc.permanent
                        else logging.WARNING,
                        "OPEN-SCS connect to %s failed (next attempt in %.1fs): %s",
                        endpoint.url, wait_s, endpoint.last_error)
                if isinstance(exc, (UpstreamError, TransportError)):
                    raise
                raise TransportError(f"OPEN-SCS {endpoint.url}: {exc!r}") from exc
            endpoint.backoff.succeeded()
            endpoint.session = session
            endpoint.last_error = ""
            return session

    async def _drop(self, endpoint: _Endpoint) -> None:
        session, endpoint.session = endpoint.session, None
        if session is not None:
            await session.close()

    async def manager(self, role: str) -> Session:
        """The connected session of a role's manager (connecting if needed).

        A failure that will not pass by itself (UpstreamError(permanent=True): a password
        file with the wrong mode, a refused session, no such manager) is an ``upstream_error``
        alarm on the status board until this role's manager is reached again; the calls
        themselves answer RETRY (the data is not at fault)."""
        try:
            session = await self._session(role)
            if session.managers.get(role) is None:
                raise UpstreamError(f"OPEN-SCS {session.url}: no {role} manager object under "
                                    "Objects/OPENSCSObjects", permanent=True)
            offered = _offered_formats(session)
            if offered and self.settings.sn_format not in offered:
                # every call would be refused (InvalidSerialNumbersFormat) and its data
                # dead-lettered, though only the setting is wrong
                raise UpstreamError(
                    f"upstream.openscs.sn_format {self.settings.sn_format!r} is not offered by "
                    f"OPEN-SCS {session.url} (its SNFormat property lists "
                    f"{', '.join(offered)})", permanent=True)
        except UpstreamError as exc:
            if exc.permanent and self._board is not None:
                self._board.raise_alarm(K.UPSTREAM_ERROR, f"{role} manager", str(exc))
            raise
        if self._board is not None:
            self._board.clear_alarm(K.UPSTREAM_ERROR, f"{role} manager")
        return session

    async def limit(self, role: str, name: str) -> int:
        """A manager's Max* property (0 = not advertised: no splitting)."""
        session = await self.manager(role)
        value = session.managers[role].properties.get(name)
        return int(value) if isinstance(value, int) else 0

    # ------------------------------------------------------------------ raw call

    async def call(self, role: str, method: str,
                   args: Sequence[ua.Variant]) -> tuple[Verdict, list[object]]:
        """Call ``method`` on the role's manager; never raises for upstream failures."""
        try:
            session = await self.manager(role)
            mgr = session.managers[role]
            method_id = mgr.methods.get(method)
            if method_id is None:
                return Verdict(Decision.PERMANENT, f"{method}: not offered by the {role} "
                               f"manager at {session.url}", call_level=True), []
            return await self._call_on(role, session, mgr.node, method_id, method, args)
        except asyncio.CancelledError:
            if cancel_requested():
                raise
            return Verdict(Decision.RETRY, f"{method}: the call was cancelled by the "
                           "connection (lost while waiting for the reply)"), []
        except (UpstreamError, TransportError) as exc:
            verdict = from_exception(exc, method)
            # configuration/security problems block the stream, they do not condemn the data
            return Verdict(Decision.RETRY, verdict.reason), []

    async def _call_on(self, role: str, session: Session, obj: ua.NodeId, method_id: ua.NodeId,
                       method: str, args: Sequence[ua.Variant]) -> tuple[Verdict, list[object]]:
        request = ua.CallMethodRequest()
        request.ObjectId = obj
        request.MethodId = method_id
        request.InputArguments = list(args)
        try:
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    results = await session.client.uaclient.call([request])
            except asyncio.CancelledError as exc:
                if cancel_requested():
                    raise
                # asyncua cancelled the request's future as the connection went down
                raise TimeoutError(f"call cancelled by the connection: {exc!r}") from exc
        except (ua.UaError, OSError, TimeoutError, ConnectionError) as exc:
            verdict = from_exception(exc, method)
            if verdict.decision is Decision.RETRY:
                log.warning("OPEN-SCS %s on %s failed, dropping the session: %s", method,
                            session.url, verdict.reason)
                await self._drop(self._endpoints[self._role_url[role]])
            return verdict, []
        result = results[0]
        if not result.StatusCode.is_good():
            return from_exception(ua.UaStatusCodeError(result.StatusCode.value), method), []
        return Verdict(Decision.DONE), [v.Value for v in result.OutputArguments or []]

    # ------------------------------------------------------------------ argument helpers

    @staticmethod
    def _ext(session: Session, obj: object) -> ua.ExtensionObject:
        return scs_ua.to_extension_object(obj, session.ns)

    @staticmethod
    def _ext_array(session: Session, items: Sequence[object]) -> ua.Variant:
        return ua.Variant(scs_ua.to_extension_objects(items, session.ns),
                          ua.VariantType.ExtensionObject)

    @staticmethod
    def _unwrap(session: Session, cls: type, value: object) -> object:
        """A decoded output structure; None for a null one (no TypeId or no body)."""
        if value is None or (isinstance(value, ua.ExtensionObject) and not value.Body
                             and value.TypeId.Identifier == 0):
            return None
        return scs_ua.from_extension_object(value, session.ns, cls)

    def criteria(self, session: Session, selection: str) -> list[KeyValue]:
        """PoolSelectionCriteria for a selection: "KEY=VALUE[;KEY=VALUE]" or a bare value.

        A bare value (e.g. a GTIN) is paired with the key under which the pool manager's
        PoolSelectionCriteria property lists that value, else with "GTIN" when offered, else
        with the first offered key; "" selects the server's default pool.
        """
        if not selection:
            return []
        if "=" in selection:
            return [KeyValue(*part.split("=", 1)) for part in selection.split(";") if part]
        offered = session.managers[POOL].properties.get("PoolSelectionCriteria")
        pairs = [kv for kv in offered if isinstance(kv, KeyValue)] if isinstance(
            offered, list) else []
        for kv in pairs:
            if kv.Value == selection:
                return [KeyValue(kv.Key, selection)]
        keys = [kv.Key for kv in pairs]
        key = "GTIN" if "GTIN" in keys else keys[0] if keys else "PoolID"
        return [KeyValue(key, selection)]

    # ------------------------------------------------------------------ pool manager

    async def request(self, state: SerialNumberState, count: int, *, selection: str = "",
                      sn_format: str | None = None, collection_id: str = "",
                      token: str = "", on_page: PageHandler | None = None) -> RequestResult:
        """SNRequestUnassigned/Unallocated/Allocated for ``count`` serial numbers.

        Splits at MaxSNRequestable and follows ReturnedRequestTokens until ``count`` serial
        numbers arrived or the server has no more (PARTIAL with the outstanding token).
        ``on_page(serials, collection)`` is awaited with each page as it arrives (the reserve
        stores it at once: handed out upstream, a page must not wait for the next ones); an
        exception it raises ends the request and propagates.
        """
        method = REQUEST_METHODS[state]
        try:
            session = await self.manager(POOL)
        except (UpstreamError, TransportError) as exc:
            return RequestResult(Verdict(Decision.RETRY, f"{method}: {exc}"))
        max_n = await self.limit(POOL, "MaxSNRequestable")
        fmt = sn_format or self.settings.sn_format
        crit = self._ext_array(session, self.criteria(session, selection))
        serials: list[str] = []
        last: SNCollection | None = None
        calls = 0
        verdict = Verdict(Decision.DONE)
        while len(serials) < count and calls < MAX_REQUEST_ROUNDS:
            n = count - len(serials)
            if max_n:
                n = min(n, max_n)
            calls += 1
            verdict, out = await self.call(POOL, method, [
                ua.Variant(collection_id, ua.VariantType.String),
                ua.Variant(n, ua.VariantType.UInt32), ua.Variant(fmt, ua.VariantType.String),
                crit, ua.Variant(token or None, ua.VariantType.String)])
            if verdict.decision is not Decision.DONE:
                break
            status_value = out[0] if out else 0
            try:
                coll = self._unwrap(session, SNCollection, out[1] if len(out) > 1 else None)
            except types.TypeDecodeError as exc:
                verdict = Verdict(Decision.PERMANENT, f"{method}: bad SNCollection: {exc}")
                break
            token = str(out[2] or "") if len(out) > 2 else ""
            got = coll.SerialNumbers if isinstance(coll, SNCollection) else ()
            last = coll if isinstance(coll, SNCollection) else last
            serials.extend(got)
            if on_page is not None and got:
                await on_page(tuple(got), last)
            verdict = from_return_status(int(status_value), method, request=True)
            if verdict.decision is Decision.PARTIAL:
                if not token or not got:
                    break  # nothing more now; the token (if any) is kept for later
                continue
            if verdict.decision is not Decision.DONE:
                break
        if verdict.decision is Decision.DONE and len(serials) < count:
            verdict = Verdict(Decision.PARTIAL, f"{method}: got {len(serials)} of {count}")
        return RequestResult(verdict, tuple(serials), last, token, calls)

    async def sn_request_unassigned(self, count: int, **kw: str) -> RequestResult:
        return await self.request(SerialNumberState.Unassigned, count, **kw)

    async def sn_request_unallocated(self, count: int, **kw: str) -> RequestResult:
        return await self.request(SerialNumberState.Unallocated, count, **kw)

    async def sn_request_allocated(self, count: int, **kw: str) -> RequestResult:
        return await self.request(SerialNumberState.Allocated, count, **kw)

    async def pool_push(self, method: str, collection: SNCollection, *, selection: str = "",
                        sn_format: str | None = None, resend: bool = False) -> CallResult:
        """SNReturn*/SNto* with an SNCollection, split at MaxSNReturnable/MaxSNPushable.

        Pool methods carry no idempotency key (the specification gives them no context).
        ``resend=True`` says an earlier attempt went unanswered: a part answered
        Bad_InvalidState (its serial numbers are no longer in the state this push moves them
        from) is taken as applied by that attempt, and the next part is sent; the others are
        judged as usual. The rule is per part: a split push may have stopped after any part."""
        try:
            session = await self.manager(POOL)
        except (UpstreamError, TransportError) as exc:
            return CallResult(Verdict(Decision.RETRY, f"{method}: {exc}"), calls=0)
        max_n = await self.limit(POOL, POOL_PUSH_LIMIT[method])
        crit = self._ext_array(session, self.criteria(session, selection))
        fmt = ua.Variant(sn_format or self.settings.sn_format, ua.VariantType.String)
        chunks = _chunks(collection.SerialNumbers, max_n)
        result = CallResult(Verdict(Decision.DONE), calls=0)
        replayed = []
        for i, part in enumerate(chunks):
            coll = replace(collection, SerialNumbers=part)
            result = await self._status_call(POOL, method, [
                ua.Variant(self._ext(session, coll)), crit, fmt], i + 1)
            if not result.ok and resend and ": BadInvalidState" in result.verdict.reason:
                log.warning("OPEN-SCS %s part %d/%d: Bad_InvalidState on a resend: taken as "
                            "applied by the unanswered attempt (%s)", method, i + 1,
                            len(chunks), result.verdict.reason)
                replayed.append(i + 1)
                result = CallResult(Verdict(Decision.DONE, f"replay: {result.verdict.reason}"),
                                    result.status, result.calls)
                continue
            if not result.ok:
                break
        if result.ok and replayed:
            result = CallResult(Verdict(Decision.DONE, f"{method}: replay: part(s) {replayed} of "
                                        f"{len(chunks)} applied by an earlier attempt"),
                                result.status, result.calls)
        return result

    async def sn_return_unallocated(self, c: SNCollection, **kw: str) -> CallResult:
        return await self.pool_push("SNReturnUnallocated", c, **kw)

    async def sn_return_allocated(self, c: SNCollection, **kw: str) -> CallResult:
        return await self.pool_push("SNReturnAllocated", c, **kw)

    async def sn_to_unallocated(self, c: SNCollection, **kw: str) -> CallResult:
        return await self.pool_push("SNtoUnallocated", c, **kw)

    async def sn_to_allocated(self, c: SNCollection, **kw: str) -> CallResult:
        return await self.pool_push("SNtoAllocated", c, **kw)

    async def sn_to_encoded(self, c: SNCollection, **kw: str) -> CallResult:
        return await self.pool_push("SNtoEncoded", c, **kw)

    async def _status_call(self, role: str, method: str, args: list[ua.Variant],
                           calls: int) -> CallResult:
        verdict, out = await self.call(role, method, args)
        if verdict.decision is not Decision.DONE:
            return CallResult(verdict, None, calls)
        value = int(out[0]) if out and out[0] is not None else 0
        status = ReturnStatus(value) if value in ReturnStatus._value2member_map_ else None
        return CallResult(from_return_status(value, method), status, calls)

    # ------------------------------------------------------------------ event manager

    async def event(self, method: str, collection: LabelCollection | SNCollection, *,
                    context: Sequence[KeyValue] = (), sn_format: str | None = None) -> CallResult:
        """One of the ten event methods; split at MaxEvents (see the module doc for keys)."""
        want = SNCollection if method in SN_EVENT_METHODS else LabelCollection
        if method not in nodeids.EVENT_METHODS or not isinstance(collection, want):
            raise UpstreamError(f"{method}: needs a {want.__name__}", permanent=True)
        try:
            session = await self.manager(EVENT)
        except (UpstreamError, TransportError) as exc:
            return CallResult(Verdict(Decision.RETRY, f"{method}: {exc}"), calls=0)
        max_n = await self.limit(EVENT, "MaxEvents")
        fmt = ua.Variant(sn_format or self.settings.sn_format, ua.VariantType.String)
        parts = _split_collection(collection, max_n)
        result = CallResult(Verdict(Decision.DONE), calls=0)
        for i, part in enumerate(parts):
            ctx = _chunk_context(context, i, len(parts))
            result = await self._status_call(EVENT, method, [
                ua.Variant(self._ext(session, part)), fmt, self._ext_array(session, ctx)], i + 1)
            if not result.ok:
                break
        return result

    async def sn_invalidating_event(self, c: SNCollection, **kw: object) -> CallResult:
        return await self.event("SNInvalidatingEvent", c, **kw)  # type: ignore[arg-type]

    async def labels_encoding_event(self, c: LabelCollection, **kw: object) -> CallResult:
        return await self.event("LabelsEncodingEvent", c, **kw)  # type: ignore[arg-type]

    async def labels_scrapping_event(self, c: LabelCollection, **kw: object) -> CallResult:
        return await self.event("LabelsScrappingEvent", c, **kw)  # type: ignore[arg-type]

    async def labels_inspecting_event(self, c: LabelCollection, **kw: object) -> CallResult:
        return await self.event("LabelsInspectingEvent", c, **kw)  # type: ignore[arg-type]

    async def labels_sampling_event(self, c: LabelCollection, **kw: object) -> CallResult:
        return await self.event("LabelsSamplingEvent", c, **kw)  # type: ignore[arg-type]

    async def sid_commissioning_event(self, c: LabelCollection, **kw: object) -> CallResult:
        return await self.event("SIDCommissioningEvent", c, **kw)  # type: ignore[arg-type]

    async def sid_destroying_event(self, c: LabelCollection, **kw: object) -> CallResult:
        return await self.event("SIDDestroyingEvent", c, **kw)  # type: ignore[arg-type]

    async def sid_shipping_event(self, c: LabelCollection, **kw: object) -> CallResult:
        return await self.event("SIDShippingEvent", c, **kw)  # type: ignore[arg-type]

    async def sid_inspecting_event(self, c: LabelCollection, **kw: object) -> CallResult:
        return await self.event("SIDInspectingEvent", c, **kw)  # type: ignore[arg-type]

    async def sid_decommissioning_event(self, c: LabelCollection, **kw: object) -> CallResult:
        return await self.event("SIDDecommissioningEvent", c, **kw)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ aggregation manager

    async def aggregation(self, method: str, elements: Sequence[Aggregation], *,
                          parent_sn_format: str | None = None,
                          packed_sn_format: str | None = None,
                          context: Sequence[KeyValue] = ()) -> CallResult:
        """AggregationPackingEvent/AggregationUnpackingEvent, split at MaxAggregationEvents."""
        if method not in nodeids.AGGREGATION_METHODS:
            raise UpstreamError(f"{method}: not an aggregation method", permanent=True)
        try:
            session = await self.manager(AGGREGATION)
        except (UpstreamError, TransportError) as exc:
            return CallResult(Verdict(Decision.RETRY, f"{method}: {exc}"), calls=0)
        max_n = await self.limit(AGGREGATION, "MaxAggregationEvents")
        fmt = self.settings.sn_format
        parts = _chunks(tuple(elements), max_n)
        result = CallResult(Verdict(Decision.DONE), calls=0)
        for i, part in enumerate(parts):
            ctx = _chunk_context(context, i, len(parts))
            result = await self._status_call(AGGREGATION, method, [
                self._ext_array(session, part),
                ua.Variant(parent_sn_format or fmt, ua.VariantType.String),
                ua.Variant(packed_sn_format or fmt, ua.VariantType.String),
                self._ext_array(session, ctx)], i + 1)
            if not result.ok:
                break
        return result

    async def aggregation_packing_event(self, e: Sequence[Aggregation],
                                        **kw: object) -> CallResult:
        return await self.aggregation("AggregationPackingEvent", e, **kw)  # type: ignore[arg-type]

    async def aggregation_unpacking_event(self, e: Sequence[Aggregation],
                                          **kw: object) -> CallResult:
        return await self.aggregation("AggregationUnpackingEvent", e,
                                      **kw)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ EPCISStream

    async def epcis_stream(self, document: bytes,
                           options: types.EventStreamArgument) -> CallResult:
        """Transfer an EPCIS XML document: GenerateFileForWrite, Write blocks, CloseAndCommit."""
        what = "EPCISStream"
        try:
            session = await self.manager(EVENT)
        except (UpstreamError, TransportError) as exc:
            return CallResult(Verdict(Decision.RETRY, f"{what}: {exc}"), calls=0)
        mgr = session.managers[EVENT]
        if mgr.epcis_stream is None or "GenerateFileForWrite" not in mgr.epcis_methods:
            return CallResult(Verdict(Decision.PERMANENT, f"{what}: not offered by "
                                      f"{session.url}", call_level=True), calls=0)
        verdict, out = await self._call_on(
            EVENT, session, mgr.epcis_stream, mgr.epcis_methods["GenerateFileForWrite"],
            "GenerateFileForWrite", [ua.Variant(self._ext(session, options))])
        if verdict.decision is not Decision.DONE:
            return CallResult(verdict, calls=1)
        file_node, handle = out[0], out[1]
        write_id = ua.NodeId(ua.ObjectIds.FileType_Write)
        close_id = ua.NodeId(ua.ObjectIds.FileType_Close)
        try:
            for ref in await session.client.get_node(file_node).get_children_descriptions():
                if ref.NodeClass == ua.NodeClass.Method and ref.BrowseName.Name == "Write":
                    write_id = ref.NodeId
                elif ref.NodeClass == ua.NodeClass.Method and ref.BrowseName.Name == "Close":
                    close_id = ref.NodeId
        except (ua.UaError, OSError, TimeoutError) as exc:
            log.debug("EPCISStream: browsing the temporary file failed (%r); using the "
                      "FileType Write method", exc)
        calls = 1
        for start in range(0, len(document), EPCIS_BLOCK_BYTES):
            calls += 1
            verdict, _ = await self._call_on(
                EVENT, session, file_node, write_id, "Write",
                [ua.Variant(handle, ua.VariantType.UInt32),
                 ua.Variant(document[start:start + EPCIS_BLOCK_BYTES],
                            ua.VariantType.ByteString)])
            if verdict.decision is not Decision.DONE:
                if session is self._endpoints[self._role_url[EVENT]].session:
                    await self._call_on(EVENT, session, file_node, close_id, "Close",
                                        [ua.Variant(handle, ua.VariantType.UInt32)])
                return CallResult(verdict, calls=calls)
        verdict, _ = await self._call_on(
            EVENT, session, mgr.epcis_stream, mgr.epcis_methods["CloseAndCommit"],
            "CloseAndCommit", [ua.Variant(handle, ua.VariantType.UInt32)])
        return CallResult(verdict, calls=calls + 1)


# ---------------------------------------------------------------------- splitting helpers


def _chunks(items: tuple, size: int) -> list[tuple]:
    if not size or len(items) <= size:
        return [items]
    return [items[i:i + size] for i in range(0, len(items), size)]


def _split_collection(collection: LabelCollection | SNCollection,
                      size: int) -> list[LabelCollection | SNCollection]:
    """Split SerialNumbers at ``size``; labels go with the chunk holding their ID."""
    parts = _chunks(tuple(collection.SerialNumbers), size)
    if len(parts) == 1:
        return [collection]
    if isinstance(collection, SNCollection):
        return [replace(collection, SerialNumbers=p) for p in parts]
    out: list[LabelCollection | SNCollection] = []
    placed: set[int] = set()
    for i, part in enumerate(parts):
        ids = set(part)
        labels = []
        for j, label in enumerate(collection.LabelCollection):
            if j not in placed and (label.ID in ids or (i == 0 and label.ID not in
                                                        collection.SerialNumbers)):
                labels.append(label)
                placed.add(j)
        out.append(replace(collection, SerialNumbers=part, LabelCollection=tuple(labels)))
    return out


def _chunk_context(context: Sequence[KeyValue], i: int, n: int) -> tuple[KeyValue, ...]:
    if n == 1:
        return tuple(context)
    return tuple(KeyValue(kv.Key, f"{kv.Value}#{i + 1}/{n}") if kv.Key == "IdempotencyKey"
                 else kv for kv in context)


__all__ = ["AGGREGATION", "EVENT", "POOL", "CallResult", "OpenScsClient", "RequestResult"]
