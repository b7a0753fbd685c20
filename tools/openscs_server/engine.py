"""What the reference server does for each OPEN-SCS method (no asyncua in here).

Every public method runs in one SQLite transaction and either returns a ReturnStatus (plus
outputs) or raises ``MethodFault`` (Annex B method result), in which case nothing is applied.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from adapters.epcis.validate import document_events, validate_epcis
from gateway.model import (
    Aggregation,
    KeyValue,
    LabelCollection,
    ReturnStatus,
    SerialNumberState,
    SNCollection,
)
from tools.openscs_server.pools import (
    DEFAULT_POOLS,
    EPCIS_STEPS,
    EVENTS,
    FORMATS,
    POOL_PUSHES,
    POOL_REQUESTS,
    MethodFault,
    PoolConfig,
    check_transition,
)
from tools.openscs_server.store import Store

log = logging.getLogger(__name__)

R = ReturnStatus
S = SerialNumberState
IDEMPOTENCY_KEY = "IdempotencyKey"


@dataclass(frozen=True)
class Limits:
    """The Max* properties the server publishes and enforces."""

    MaxSNRequestable: int = 1000
    MaxSNReturnable: int = 1000
    MaxSNPushable: int = 1000
    MaxEvents: int = 1000
    MaxAggregationEvents: int = 100
    MaxEPCISObjectEventSIDs: int = 10000
    MaxEPCISaggregationEvents: int = 1000


@dataclass
class Switches:
    """Test/demo knobs: refuse events (UnableToAccept...) or users without privilege."""

    accepting: bool = True
    viewers: set[str] = field(default_factory=set)


_UNABLE = {"SN": R.UnableToAcceptSerialNumberEvents, "La": R.UnableToAcceptLabelEvents}


def _payload(obj: object) -> object:
    """JSON-ready form of decoded arguments (dataclasses, tuples, enums as ints)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _payload(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [_payload(x) for x in obj]
    if isinstance(obj, int):
        return int(obj)
    return obj


class Engine:
    def __init__(
        self,
        store: Store,
        pools: Sequence[PoolConfig] = DEFAULT_POOLS,
        limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.pools = {p.pool_id: p for p in pools}
        self.default_pool = pools[0]
        self.limits = limits or Limits()
        self.switches = Switches()

    # ------------------------------------------------------------------ selection
    def select_pool(self, collection_id: str, criteria: Sequence[KeyValue] | None) -> PoolConfig:
        """Pool by SNCollectionID / PoolSelectionCriteria; raises _Status on a bad selection."""
        candidates = list(self.pools.values())
        known = {k.Key for p in candidates for k in p.criteria}
        for kv in criteria or ():
            if kv.Key not in known:
                raise _Status(R.InvalidSelectionCriteria, f"unknown criterion {kv.Key!r}")
            candidates = [p for p in candidates if kv in p.criteria]
        if not candidates:
            raise _Status(R.InvalidSelectionCriteria, f"no pool matches {list(criteria or ())}")
        if collection_id:
            if collection_id not in self.pools:
                raise _Status(R.InvalidSerialNumberCollection, f"unknown {collection_id!r}")
            if self.pools[collection_id] not in candidates:
                raise _Status(R.InvalidSelectionCriteria, "criteria do not select the collection")
            return self.pools[collection_id]
        return candidates[0] if criteria else self.default_pool

    def _format(self, sn_format: str) -> None:
        if sn_format not in FORMATS:
            raise _Status(R.InvalidSerialNumbersFormat, f"unknown SNFormat {sn_format!r}")

    def _parse(self, pool: PoolConfig, values: Sequence[str], sn_format: str) -> list[str]:
        out = []
        for v in values:
            serial = pool.from_format(v, sn_format)
            if serial is None:
                raise _Status(
                    R.InvalidSerialNumbersFormat, f"{v!r} is not {sn_format} of {pool.pool_id}"
                )
            out.append(serial)
        return out

    def _state(self, pool: PoolConfig, serial: str) -> S | None:
        row = self.store.state(pool.pool_id, serial)
        return None if row is None else S(row[0])

    # ------------------------------------------------------------------ pool manager
    def request(
        self,
        method: str,
        collection_id: str,
        count: int,
        sn_format: str,
        criteria: Sequence[KeyValue] | None,
        token: str,
    ) -> tuple[ReturnStatus, SNCollection | None, str]:
        draw_from, target = POOL_REQUESTS[method]
        try:
            with self.store.tx():
                if token:
                    held = self.store.take_token(token)
                    if held is None or held[1] != method:
                        raise _Status(R.InvalidRequestToken, f"unknown request token {token!r}")
                    pool_id, _, sn_format, collection_id, wanted = held
                    pool = self.pools[pool_id]
                else:
                    if count <= 0:
                        raise MethodFault("BadOutOfRange", f"{method}: Count must be above 0")
                    self._format(sn_format)
                    pool = self.select_pool(collection_id, criteria)
                    wanted = count
                batch = min(wanted, self.limits.MaxSNRequestable)
                serials = self._draw(pool, draw_from, batch)
                for serial in serials:
                    self.store.set_state(pool.pool_id, serial, target, True)
                left = wanted - len(serials)
                new_token = ""
                if left:
                    new_token = secrets.token_hex(12)
                    self.store.put_token(
                        new_token, pool.pool_id, method, sn_format, pool.pool_id, left
                    )
                status = R.InsufficientSerialNumbers if len(serials) < batch else R.NoError
                coll = None
                if serials:
                    coll = SNCollection(
                        ID=pool.pool_id,
                        Description=f"{method} {len(serials)}",
                        State=target,
                        AssociatedPoolID=pool.pool_id,
                        SerialNumbers=tuple(pool.to_format(s, sn_format) for s in serials),
                    )
                return status, coll, new_token
        except _Status as st:
            log.info("%s refused: %s", method, st.detail)
            return st.status, None, ""

    def _draw(self, pool: PoolConfig, states: tuple[S, ...], n: int) -> list[str]:
        out = self.store.free_serials(pool.pool_id, tuple(int(s) for s in states), n)
        nxt = self.store.next_counter(pool.pool_id)
        while len(out) < n and nxt < pool.capacity:
            serial = pool.fresh(nxt)
            nxt += 1
            if self.store.state(pool.pool_id, serial) is None:
                out.append(serial)
        self.store.set_counter(pool.pool_id, nxt)
        return out

    def available(self, pool_id: str) -> int:
        pool = self.pools[pool_id]
        free = self.store.count_free(pool_id, (int(S.Unassigned), int(S.Unallocated)))
        return free + max(0, pool.capacity - self.store.next_counter(pool_id))

    def push(
        self, method: str, coll: SNCollection, criteria: Sequence[KeyValue] | None, sn_format: str
    ) -> ReturnStatus:
        allowed, target, issued = POOL_PUSHES[method]
        limit = self.limits.MaxSNReturnable if "Return" in method else self.limits.MaxSNPushable
        if len(coll.SerialNumbers) > limit:
            raise MethodFault("BadOutOfRange", f"{method}: {len(coll.SerialNumbers)} > {limit}")
        if not self.switches.accepting:
            return R.UnableToAcceptSerialNumberEvents
        try:
            with self.store.tx():
                self._format(sn_format)
                pool = self.select_pool(coll.AssociatedPoolID or coll.ID, criteria)
                for serial in self._parse(pool, coll.SerialNumbers, sn_format):
                    check_transition(method, allowed, serial, self._state(pool, serial))
                    self.store.set_state(pool.pool_id, serial, target, issued)
                self.store.add_event(method, None, sn_format, _payload(coll))
        except _Status as st:
            log.info("%s refused: %s", method, st.detail)
            return st.status
        return R.NoError

    # ------------------------------------------------------------------ event manager
    def event(
        self,
        method: str,
        coll: SNCollection | LabelCollection,
        sn_format: str,
        context: Sequence[KeyValue] | None,
    ) -> ReturnStatus:
        allowed, target = EVENTS[method]
        values = list(
            dict.fromkeys(
                [*coll.SerialNumbers, *(lab.ID for lab in getattr(coll, "LabelCollection", ()))]
            )
        )
        if len(values) > self.limits.MaxEvents:
            raise MethodFault("BadOutOfRange", f"{method}: {len(values)} > MaxEvents")
        if not self.switches.accepting:
            return _UNABLE.get(method[:2], R.UnableToAcceptSIDEvents)
        payload = {
            "args": _payload(coll),
            "SNFormat": sn_format,
            "context": _payload(list(context or ())),
        }
        return self._once(
            method,
            context,
            sn_format,
            payload,
            lambda: self._apply_event(method, coll, values, sn_format, allowed, target),
        )

    def _apply_event(
        self,
        method: str,
        coll: object,
        values: list[str],
        sn_format: str,
        allowed: frozenset[S | None],
        target: S,
    ) -> None:
        self._format(sn_format)
        pool_hint = getattr(coll, "AssociatedPoolID", "")
        for value in values:
            pool, serial = self.locate(value, sn_format, pool_hint)
            check_transition(method, allowed, value, self._state(pool, serial))
            self.store.set_state(pool.pool_id, serial, target, True)

    def locate(self, value: str, sn_format: str, pool_hint: str = "") -> tuple[PoolConfig, str]:
        """Pool and bare serial of an identifier in ``sn_format``."""
        if pool_hint:
            if pool_hint not in self.pools:
                raise _Status(R.InvalidSerialNumberCollection, f"unknown pool {pool_hint!r}")
            return self.pools[pool_hint], self._parse(self.pools[pool_hint], [value], sn_format)[0]
        fits = [(p, p.from_format(value, sn_format)) for p in self.pools.values()]
        fits = [(p, s) for p, s in fits if s is not None]
        if not fits:
            raise _Status(R.InvalidSerialNumbersFormat, f"{value!r} fits no pool as {sn_format}")
        known = [(p, s) for p, s in fits if self.store.state(p.pool_id, s) is not None]
        return (known or fits)[0]

    # ------------------------------------------------------------------ aggregation
    def aggregate(
        self,
        method: str,
        elements: Sequence[Aggregation],
        parent_fmt: str,
        child_fmt: str,
        context: Sequence[KeyValue] | None,
    ) -> ReturnStatus:
        if len(elements) > self.limits.MaxAggregationEvents:
            raise MethodFault("BadOutOfRange", f"{method}: {len(elements)} > MaxAggregationEvents")
        if not self.switches.accepting:
            return R.UnableToAcceptSIDEvents
        payload = {
            "args": [_payload(e) for e in elements],
            "ParentSNFormat": parent_fmt,
            "PackedElementSNFormat": child_fmt,
            "context": _payload(list(context or ())),
        }
        return self._once(
            method,
            context,
            parent_fmt,
            payload,
            lambda: self._apply_aggregation(method, elements, parent_fmt, child_fmt),
        )

    def _apply_aggregation(
        self, method: str, elements: Sequence[Aggregation], parent_fmt: str, child_fmt: str
    ) -> None:
        self._format(parent_fmt)
        self._format(child_fmt)
        for el in elements:
            coll = el.ParentElementCollection
            children = list(
                dict.fromkeys([*coll.SerialNumbers, *(x.ID for x in coll.LabelCollection)])
            )
            self.pack_ids(
                method, el.ParentElement.ID, parent_fmt, children, child_fmt, coll.AssociatedPoolID
            )

    def pack_ids(
        self,
        method: str,
        parent_value: str,
        parent_fmt: str,
        children: list[str],
        child_fmt: str,
        child_pool: str = "",
    ) -> None:
        ppool, parent = self.locate(parent_value, parent_fmt)
        pstate = self._state(ppool, parent)
        if pstate is None:
            raise _Status(R.UnknownAggregationSID, f"parent {parent_value} is unknown")
        allowed = frozenset({S.Commissioned})
        check_transition(method, allowed, parent_value, pstate)
        pkey = f"{ppool.pool_id}/{parent}"
        for value in children:
            cpool, child = self.locate(value, child_fmt, child_pool)
            check_transition(method, allowed, value, self._state(cpool, child))
            ckey = f"{cpool.pool_id}/{child}"
            current = self.store.parent_of(ckey)
            if method == "AggregationPackingEvent":
                if current is not None:
                    raise MethodFault("BadInvalidState", f"{value} is already packed in {current}")
                self.store.pack(pkey, ckey)
            else:
                if current != pkey:
                    raise MethodFault("BadInvalidState", f"{value} is not packed in {parent_value}")
                self.store.unpack(ckey)

    # ------------------------------------------------------------------ idempotency
    def _once(
        self,
        method: str,
        context: Sequence[KeyValue] | None,
        sn_format: str,
        payload: object,
        apply: Callable[[], None],
    ) -> ReturnStatus:
        key = next((kv.Value for kv in context or () if kv.Key == IDEMPOTENCY_KEY), None)
        digest = hashlib.sha256(json.dumps([method, payload], sort_keys=True).encode()).hexdigest()
        try:
            with self.store.tx():
                if key:
                    seen = self.store.seen_key(key)
                    if seen is not None:
                        if seen != (method, digest):
                            raise MethodFault(
                                "BadInvalidArgument",
                                f"IdempotencyKey {key!r} reused for other content",
                            )
                        log.info("%s replay of %s answered NoError", method, key)
                        return R.NoError
                apply()
                event_id = self.store.add_event(method, key, sn_format, payload)
                if key:
                    self.store.remember_key(key, method, digest, event_id)
        except _Status as st:
            log.info("%s refused: %s", method, st.detail)
            return st.status
        return R.NoError

    # ------------------------------------------------------------------ EPCIS files
    def epcis(self, document: bytes, options: object, context: Sequence[KeyValue] | None) -> None:
        """Validate and apply an EPCISStream file; raises MethodFault when it is refused."""
        commissioned = {
            self.pools[p].to_format(s, "EPCURI")
            for p, s in self.store.serials_in_state(int(S.Commissioned))
            if p in self.pools
        }
        problems = validate_epcis(
            document,
            max_object_event_sids=self.limits.MaxEPCISObjectEventSIDs,
            max_aggregation_events=self.limits.MaxEPCISaggregationEvents,
            known_commissioned=commissioned,
        )
        if problems:
            self.store.add_file(False, problems, options, document)
            raise MethodFault("BadInvalidArgument", "; ".join(problems[:5]))

        def apply() -> None:
            for ev in document_events(document):
                step = str(ev["bizStep"])
                epcs = [str(e) for e in ev["epcs"]]  # type: ignore[union-attr]
                if ev["kind"] == "AggregationEvent":
                    method = (
                        "AggregationPackingEvent"
                        if ev["action"] == "ADD"
                        else "AggregationUnpackingEvent"
                    )
                    self.pack_ids(method, str(ev["parentID"]), "EPCURI", epcs, "EPCURI")
                elif step in EPCIS_STEPS:
                    allowed, target = EVENTS[EPCIS_STEPS[step]]
                    self._apply_event(EPCIS_STEPS[step], None, epcs, "EPCURI", allowed, target)
            self.store.add_file(True, [], options, document)

        try:
            status = self._once(
                "EPCISStream", context, "EPCURI", hashlib.sha256(document).hexdigest(), apply
            )
        except MethodFault as fault:
            self.store.add_file(False, [fault.detail], options, document)
            raise
        if status != R.NoError:
            self.store.add_file(False, [status.name], options, document)
            raise MethodFault("BadInvalidState", f"EPCIS file refused: {status.name}")


class _Status(Exception):
    """A call answered with a ReturnStatus other than NoError (nothing applied)."""

    def __init__(self, status: ReturnStatus, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(detail)
