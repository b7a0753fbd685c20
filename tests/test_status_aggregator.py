"""Aggregator (lente) with real stations uploading over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from asyncua import ua

from gateway.board import StatusBoard
from gateway.status import Uploader
from gateway.status import security as sec
from gateway.status.aggregator import (
    MAX_JSON_BYTES,
    MAX_STATION_BYTES,
    MAX_STATIONS,
    UploadRejected,
    listing_cost,
    parse_upload,
)
from tests.test_status_support import (
    connect,
    eventually,
    make_settings,
    running,
    status_node,
    trust,
    url,
    user,
)


async def _read(client, idx: int, path: str) -> object:
    try:
        return await client.get_node(ua.NodeId(path, idx)).read_value()
    except ua.UaStatusCodeError:
        return None  # not created yet


async def test_two_stations_one_goes_silent_and_turns_stale(tmp_path) -> None:
    lente = make_settings(tmp_path / "lente", role="lente", name="lente-1", certs=False,
                          security_policies=["NoSecurity"], stale_after_s=1.0)
    up = url(lente)
    boards = {"st-a": StatusBoard(user="anna", script="ORD-A"),
              "st-b": StatusBoard(user="bert", script="ORD-B")}
    uploaders = {name: Uploader(make_settings(tmp_path / name, name=name, certs=False,
                                              aggregator_url=up), board)
                 for name, board in boards.items()}
    async with running(lente):
        tasks = {n: asyncio.create_task(u.serve()) for n, u in uploaders.items()}
        client = await connect(lente)
        try:
            idx, _ = await status_node(client)

            async def listing() -> dict:
                return json.loads(await _read(client, idx, "Status/clients") or "{}")

            async def both_fresh() -> bool:
                now = await listing()
                return {"st-a", "st-b"} <= set(now) and not any(v["stale"] for v in now.values())

            await eventually(both_fresh, "both stations listed and fresh")
            assert await _read(client, idx, "Clients/st-a/user") == "anna"
            assert await _read(client, idx, "Clients/st-b/script") == "ORD-B"
            assert await _read(client, idx, "Clients/st-a/num_files") == 0

            # st-a keeps uploading changes; st-b goes silent
            tasks["st-b"].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tasks["st-b"]
            boards["st-a"].user = "anna2"

            async def b_stale() -> bool:
                return await _read(client, idx, "Clients/st-b/stale") is True

            await eventually(b_stale, "st-b turns stale")
            await eventually(lambda: _eq(_read(client, idx, "Clients/st-a/user"), "anna2"),
                             "st-a's change arrives")
            now = await listing()
            assert now["st-b"]["stale"] is True and now["st-a"]["stale"] is False
            assert await _read(client, idx, "Clients/st-a/stale") is False
            assert now["st-b"]["user"] == "bert"  # last known values stay visible
        finally:
            await client.disconnect()
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)


async def _eq(value, expected: object) -> bool:
    return await value == expected


async def test_upload_status_bad_arguments_refused(tmp_path, caplog) -> None:
    lente = make_settings(tmp_path, role="lente", certs=False, security_policies=["NoSecurity"])
    async with running(lente) as srv:
        client = await connect(lente)
        try:
            idx, status = await status_node(client)
            for station, payload in [("bad name!", "{}"), ("ok", "[1]"), ("ok", "{not json")]:
                with pytest.raises(ua.UaStatusCodeError) as err:
                    await status.call_method(f"{idx}:upload_status", station, payload)
                assert err.value.code == ua.StatusCodes.BadInvalidArgument
            await status.call_method(f"{idx}:upload_status", "ok", '{"user": "u"}')
        finally:
            await client.disconnect()
        assert set(srv.clients.stations) == {"ok"}
    assert "refused upload_status from anonymous" in caplog.text


async def test_upload_needs_role_when_secured(tmp_path, caplog) -> None:
    lente = make_settings(tmp_path, role="lente", certs=False)  # seed policies -> role needed
    async with running(lente) as srv:
        client = await connect(lente)
        try:
            idx, status = await status_node(client)
            with pytest.raises(ua.UaStatusCodeError) as err:
                await status.call_method(f"{idx}:upload_status", "st", "{}")
            assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        finally:
            await client.disconnect()
        assert srv.clients.stations == {}


def test_parse_upload_limits() -> None:
    assert parse_upload("st-1", '{"user": "x"}') == ("st-1", {"user": "x"})
    with pytest.raises(UploadRejected, match="bad field names"):
        parse_upload("st-1", '{"stale": true}')
    with pytest.raises(UploadRejected, match="at most 64 fields"):
        parse_upload("st-1", json.dumps({f"f{i}": i for i in range(65)}))


async def test_secured_chain_station_to_lente_to_lente(tmp_path) -> None:
    """station -> lente-1 (SignAndEncrypt, user with role) -> lente-2; lente-2 sees st-a."""
    top = make_settings(tmp_path / "top", role="lente", name="lente-2", certs=False,
                        security_policies=["NoSecurity"])
    mid = make_settings(tmp_path / "mid", role="lente", name="lente-1",
                        security_policies=["Basic256Sha256_SignAndEncrypt"],
                        users=[user("uplink", "up-secret", "operator")], aggregator_url=url(top))
    (tmp_path / "st-a").mkdir()
    (tmp_path / "st-a" / "pw").write_text("up-secret\n")
    station = make_settings(tmp_path / "st-a", name="st-a", aggregator_url=url(mid))
    agg = replace(station.opcua_server.aggregator, username="uplink",
                  password_file=Path("pw"))  # relative: resolved against the root
    station = replace(station, opcua_server=replace(station.opcua_server, aggregator=agg))
    cert = sec.load_or_generate_certificate(station, "urn:linegate:status:st-a")
    trust(mid, cert.cert_path)
    async with running(top), running(mid) as mid_srv:
        tasks = [asyncio.create_task(Uploader(station, StatusBoard(user="anna")).serve()),
                 asyncio.create_task(Uploader(mid, StatusBoard(), source=mid_srv).serve())]
        client = await connect(top)
        try:
            idx, _ = await status_node(client)

            async def chained() -> bool:
                raw = await _read(client, idx, "Clients/lente-1/clients")
                return bool(raw) and json.loads(raw).get("st-a", {}).get("user") == "anna"

            await eventually(chained, "st-a visible on lente-2 through lente-1")
        finally:
            await client.disconnect()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_uploader_retries_until_the_aggregator_appears(tmp_path, caplog) -> None:
    lente = make_settings(tmp_path / "lente", role="lente", certs=False,
                          security_policies=["NoSecurity"])
    uploader = Uploader(make_settings(tmp_path / "st", name="st-late", certs=False,
                                      aggregator_url=url(lente)), StatusBoard(user="late"))
    task = asyncio.create_task(uploader.serve())
    try:
        async def retried() -> bool:
            return "uploader: aggregator" in caplog.text and "retrying" in caplog.text

        await eventually(retried, "a failed connection is logged and retried")
        assert uploader.uploads == 0
        async with running(lente) as srv:
            async def arrived() -> bool:
                return "st-late" in srv.clients.stations

            await eventually(arrived, "the station arrives once the aggregator is up")
            assert srv.clients.stations["st-late"].values["user"] == "late"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _children(client, idx: int, path: str) -> set[str]:
    nodes = await client.get_node(ua.NodeId(path, idx)).get_children()
    return {(await n.read_browse_name()).Name for n in nodes}


async def test_a_field_the_station_stops_sending_leaves_node_and_listing(tmp_path) -> None:
    lente = make_settings(tmp_path, role="lente", certs=False, security_policies=["NoSecurity"])
    async with running(lente) as srv:
        client = await connect(lente)
        try:
            idx, status = await status_node(client)

            async def upload(fields: dict) -> dict:
                await status.call_method(f"{idx}:upload_status", "st", json.dumps(fields))
                await srv.refresh()  # publish the listing now, not at the next interval
                return json.loads(await _read(client, idx, "Status/clients") or "{}")["st"]

            listed = await upload({"user": "anna", "script": "ORD-1", "num_files": 3})
            assert await _read(client, idx, "Clients/st/user") == "anna"
            assert await _read(client, idx, "Clients/st/num_files") == 3
            listed = await upload({"script": "ORD-2"})
            assert "user" not in listed and "num_files" not in listed
            assert await _read(client, idx, "Clients/st/user") is None  # BadNodeIdUnknown
            assert await _read(client, idx, "Clients/st/num_files") is None
            assert await _children(client, idx, "Clients/st") == {"script", "stale",
                                                                  "last_seen"}
            assert await _read(client, idx, "Clients/st/script") == "ORD-2"
            listed = await upload({"user": "bert", "script": "ORD-3"})  # and it can come back
            assert listed["user"] == "bert"
            assert await _read(client, idx, "Clients/st/user") == "bert"
            assert await _children(client, idx, "Clients/st") == {"user", "script", "stale",
                                                                  "last_seen"}
        finally:
            await client.disconnect()


def _padded(fields: dict[str, object], cost: int) -> dict[str, object]:
    """``fields`` plus a ``note`` that brings the listing cost to exactly ``cost`` bytes,
    made of characters that JSON escapes twice over (quotes, backslashes, non-ASCII)."""
    out = {**fields, "note": ""}
    while listing_cost(out) < cost:
        room = cost - listing_cost(out)
        piece = 'é"\\' if room >= 40 else "x"  # é: \\u00e9 escaped = 7 bytes
        out["note"] = str(out["note"]) + piece
    assert listing_cost(out) == cost
    return out


def test_parse_upload_bounds_a_stations_cost_in_the_listing() -> None:
    fields = _padded({"user": "anna"}, MAX_STATION_BYTES)
    assert parse_upload("st-1", json.dumps(fields))[1] == fields
    fields["note"] = str(fields["note"]) + "x"
    with pytest.raises(UploadRejected, match=f"above {MAX_STATION_BYTES}"):
        parse_upload("st-1", json.dumps(fields))


async def test_a_full_listing_of_the_largest_stations_fits_the_next_upload(tmp_path) -> None:
    """MAX_STATIONS stations, each at MAX_STATION_BYTES: the middle aggregator's own upload
    (as its Uploader builds it) is accepted by the next aggregator over OPC UA."""
    station = make_settings(tmp_path / "st", name="st-1", certs=False,
                            aggregator_url="opc.tcp://127.0.0.1:1/")
    typical = await Uploader(station, StatusBoard(user="anna", script="ORD-A")).values()
    biggest = _padded(typical, MAX_STATION_BYTES)
    top = make_settings(tmp_path / "top", role="lente", name="top", certs=False,
                        security_policies=["NoSecurity"])
    mid = make_settings(tmp_path / "mid", role="lente", name="m" * 64, certs=False,
                        security_policies=["NoSecurity"])
    async with running(top) as top_srv, running(mid) as mid_srv:
        assert mid_srv.clients is not None
        for n in range(MAX_STATIONS):
            name = f"{n:03d}-" + "s" * 60  # the longest station names
            await mid_srv.clients.record(name, dict(parse_upload(name, json.dumps(biggest))[1]))
        payload = json.dumps(await mid_srv.values(), sort_keys=True)  # as Uploader.serve
        assert len(payload.encode()) <= MAX_JSON_BYTES
        name, fields = parse_upload("m" * 64, payload)
        assert len(json.loads(str(fields["clients"]))) == MAX_STATIONS
        client = await connect(top)
        try:
            idx, status = await status_node(client)
            await status.call_method(f"{idx}:upload_status", name, payload)
            listed = await _read(client, idx, f"Clients/{name}/clients")
        finally:
            await client.disconnect()
        assert json.loads(str(listed)) == mid_srv.clients.listing()
        assert set(top_srv.clients.stations) == {name}
