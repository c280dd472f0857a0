"""Enrolment against the store, on SQLite and PostgreSQL: single use, expiry on the given
clock (no sleeps), group binding, id ownership by key, and that a refusal writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from enrol_kit import body, new_key

from fleetgate.clock import add_seconds, to_iso, utc_now
from fleetgate.core.model import DeviceState
from fleetgate.engine.enrolment import EnrolRefused, accept, create_token, enrol, revoke_token
from fleetgate.errors import InputError

NOW = to_iso(utc_now())


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    """The controller's credentials directory (apart from the SQLite store's)."""
    path = tmp_path / "credentials"
    path.mkdir()
    return path


async def _token(
    store: Any, group: str = "plant-a", *, auto: bool = False, ttl: float = 3600, now: str = NOW
) -> str:
    token, _ = await create_token(
        store, group=group, ttl_s=ttl, auto_accept=auto, actor="op", now=now
    )
    return token


async def _snapshot(store: Any) -> tuple[list[Any], int]:
    return await store.list_devices(), (await store.chain_head())[0]


async def test_a_token_admits_one_device_pending_and_a_replay_writes_nothing(
    store: Any, creds: Path
) -> None:
    token = await _token(store)
    done = await enrol(store, token, body(token, "rpi-1"), credentials_dir=creds, now=NOW)
    dev = done.device
    assert (dev.id, dev.group, dev.state) == ("rpi-1", "plant-a", DeviceState.PENDING)
    assert dev.facts_known and dev.hardware == "rpi4" and not done.again
    cred = Path(dev.token_file or "")
    assert cred.parent == creds and cred.stat().st_mode & 0o777 == 0o600
    assert (await store.last_seen())["rpi-1"] is not None
    (tok,) = await store.list_enrol_tokens()
    assert (tok.used_by, tok.status(NOW)) == ("rpi-1", "used")
    assert tok.token_hash != token and token not in str(tok.to_dict())

    before = await _snapshot(store)
    with pytest.raises(EnrolRefused) as info:  # the same token again, even for another id
        await enrol(store, token, body(token, "rpi-2"), credentials_dir=creds, now=NOW)
    assert (info.value.status, info.value.code, info.value.field) == (403, "token-used", "token")
    assert await _snapshot(store) == before
    assert sorted(p.name.split(".")[0] for p in creds.iterdir()) == ["rpi-1"]


async def test_an_expired_token_is_refused_on_the_given_clock(store: Any, creds: Path) -> None:
    token = await _token(store, ttl=3600, now=add_seconds(NOW, -7200))
    before = await _snapshot(store)
    with pytest.raises(EnrolRefused) as info:
        await enrol(store, token, body(token, "late"), credentials_dir=creds, now=NOW)
    assert (info.value.status, info.value.code) == (403, "token-expired")
    # The store itself refuses too, whatever a caller checked first.
    assert not await store.consume_enrol_token(
        (await store.list_enrol_tokens())[0].token_hash, "late", NOW
    )
    assert await _snapshot(store) == before and not list(creds.iterdir())


async def test_unknown_and_revoked_tokens(store: Any, creds: Path) -> None:
    with pytest.raises(EnrolRefused) as info:
        await enrol(store, "fge_nope", body("fge_nope", "x"), credentials_dir=creds, now=NOW)
    assert (info.value.status, info.value.field) == (401, "token")
    token = await _token(store)
    (rec,) = await store.list_enrol_tokens()
    await revoke_token(store, rec.id, actor="op", now=NOW)
    with pytest.raises(InputError):
        await revoke_token(store, rec.id, actor="op", now=NOW)
    with pytest.raises(EnrolRefused) as info:
        await enrol(store, token, body(token, "x"), credentials_dir=creds, now=NOW)
    assert info.value.code == "token-revoked"


async def test_a_token_for_group_a_cannot_put_a_device_in_group_b(store: Any, creds: Path) -> None:
    token_a = await _token(store, "plant-a")
    with pytest.raises(EnrolRefused) as info:
        await enrol(
            store, token_a, body(token_a, "x", group="plant-b"), credentials_dir=creds, now=NOW
        )
    assert (info.value.status, info.value.field) == (403, "group")
    # Nor move a device of group B (same key) into A by re-enrolling.
    key = new_key()
    token_b = await _token(store, "plant-b")
    await enrol(store, token_b, body(token_b, "gw-1", key), credentials_dir=creds, now=NOW)
    before = await _snapshot(store)
    with pytest.raises(EnrolRefused) as info:
        await enrol(store, token_a, body(token_a, "gw-1", key), credentials_dir=creds, now=NOW)
    assert (info.value.status, info.value.field) == (403, "group")
    assert await _snapshot(store) == before
    (tok_a,) = [t for t in await store.list_enrol_tokens() if t.group == "plant-a"]
    assert tok_a.status(NOW) == "usable"  # a refusal does not spend the token


async def test_an_id_belongs_to_its_key(store: Any, creds: Path) -> None:
    key = new_key()
    t1, t2, t3 = [await _token(store, auto=True) for _ in range(3)]
    first = await enrol(store, t1, body(t1, "orin-1", key), credentials_dir=creds, now=NOW)
    assert first.device.state is DeviceState.ACTIVE  # auto-accept
    before = await _snapshot(store)
    with pytest.raises(EnrolRefused) as info:  # same id, another key: a different device
        await enrol(store, t2, body(t2, "orin-1"), credentials_dir=creds, now=NOW)
    assert (info.value.status, info.value.field) == (409, "id")
    assert await _snapshot(store) == before
    # The same device again (same key, new token): facts and credential are refreshed.
    again = await enrol(
        store,
        t3,
        body(t3, "orin-1", key, address="http://127.0.0.2:7601"),
        credentials_dir=creds,
        now=NOW,
    )
    assert again.again and again.device.address == "http://127.0.0.2:7601"
    assert again.device.token_file != first.device.token_file
    assert [p.name for p in creds.iterdir()] == [Path(again.device.token_file or "").name]


async def test_a_device_of_an_imported_inventory_cannot_be_taken_over(
    store: Any, creds: Path
) -> None:
    from fleetgate.registry.codec import device_from_dict

    await store.replace_devices(
        [
            device_from_dict(
                {"id": "gw-9", "group": "plant-a", "address": "http://h:1", "token_env": "T"}
            )
        ]
    )
    token = await _token(store)
    with pytest.raises(EnrolRefused) as info:
        await enrol(store, token, body(token, "gw-9"), credentials_dir=creds, now=NOW)
    assert (info.value.status, info.value.field) == (409, "id")


async def test_malformed_requests_name_the_field(store: Any, creds: Path) -> None:
    token = await _token(store)
    cases = {
        "facts.ram_mb": body(
            token, "a", facts={"hardware": "x", "arch": "arm64", "ram_mb": "lots", "disk_mb": 1}
        ),
        "address": body(token, "a", address="ftp://x"),
        "id": body(token, "bad id"),
        "signature": {**body(token, "a"), "credential": "fgd_" + "x" * 40},  # swapped
        "nickname": {**body(token, "a"), "nickname": "x"},
    }
    for field, request in cases.items():
        with pytest.raises(EnrolRefused) as info:
            await enrol(store, token, request, credentials_dir=creds, now=NOW)
        assert (info.value.status, info.value.field) == (400, field), info.value
    assert await store.list_devices() == [] and not list(creds.iterdir())
    assert (await store.list_enrol_tokens())[0].status(NOW) == "usable"


async def test_accept_all_pending(store: Any, creds: Path) -> None:
    for name in ("p1", "p2", "p3"):
        token = await _token(store)
        await enrol(store, token, body(token, name), credentials_dir=creds, now=NOW)
    assert await accept(store, ["p2"], all_pending=False, actor="op", now=NOW) == ["p2"]
    with pytest.raises(InputError, match="p2 is active, not pending"):
        await accept(store, ["p2"], all_pending=False, actor="op", now=NOW)
    assert sorted(await accept(store, [], all_pending=True, actor="op", now=NOW)) == ["p1", "p3"]
    assert {d.state for d in await store.list_devices()} == {DeviceState.ACTIVE}
    actions = [e.action async for e in store.iter_events()]
    assert actions.count("registry.accepted") == 3 and actions.count("device.enrolled") == 3


async def test_two_enrolments_racing_with_one_token_one_wins(store: Any, creds: Path) -> None:
    import asyncio

    token = await _token(store)
    results = await asyncio.gather(
        *(
            enrol(store, token, body(token, f"race-{i}"), credentials_dir=creds, now=NOW)
            for i in range(2)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, EnrolRefused)]
    assert len(won) == 1 and len(lost) == 1 and lost[0].status == 403
    assert [d.id for d in await store.list_devices()] == [won[0].device.id]
    assert len(list(creds.iterdir())) == 1


async def test_facts_seen_during_a_deployment_update_the_current_record(
    store: Any, creds: Path
) -> None:
    """FactsRecorder: a facts answer refreshes facts and last_seen on the record as it is now,
    so a quarantine written meanwhile by the deployment is kept."""
    from dataclasses import replace

    from fleetgate.engine.facts_refresh import FactsRecorder
    from fleetgate.registry.codec import device_from_dict
    from fleetgate.transports.results import Facts

    dev = device_from_dict({"id": "gw-1", "group": "g", "address": "http://h:1", "token_env": "T"})
    await store.replace_devices([dev])
    answer = Facts.parse(
        "gw-1",
        {
            "id": "gw-1",
            "hardware": "gateway",
            "arch": "x86_64",
            "ram_mb": 15870.0,
            "disk_mb": 256000.0,
            "disk_free_mb": 1.0,
            "gpu": False,
            "software": {"os": "debian-12"},
            "rollback_available": False,
            "releases": [],
            "state": "idle",
            "last_seq": 0,
        },
    )
    recorder = FactsRecorder(store, interval_s=3600)
    recorder.note(dev, answer)
    recorder.note(replace(dev, id="stranger"), answer)  # answered as another id: ignored
    await store.upsert_devices(
        [replace(dev, state=DeviceState.QUARANTINE, state_reason="d-1: failed")]
    )
    await recorder.aclose()
    (now,) = await store.list_devices()
    assert now.state is DeviceState.QUARANTINE and now.hardware == "gateway"
    assert now.resources is not None and now.resources.disk_mb == 256000
    assert (await store.last_seen())["gw-1"] is not None
