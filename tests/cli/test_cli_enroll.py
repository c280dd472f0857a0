"""``fleetgate enroll`` and ``registry accept`` on the local store: the token alone on stdout,
only its hash stored, and accept by id or --all-pending."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
from enrol_kit import body

from fleetgate.cli.main import run
from fleetgate.clock import to_iso, utc_now
from fleetgate.engine.enrolment import enrol
from fleetgate.store import Store


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_enroll_create_list_revoke_and_accept(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    db = f"sqlite+aiosqlite:///{tmp_path}/fg.db"
    code, out, err = _run(
        capsys,
        "--db",
        db,
        "enroll",
        "create",
        "--group",
        "plant-a",
        "--expires",
        "24h",
        "--as",
        "ann",
    )
    assert code == 0, err
    token = out.strip()
    assert out == token + "\n" and token.startswith("fge_")  # alone on stdout
    assert "single use" in err and token not in err
    assert token.encode() not in Path(tmp_path / "fg.db").read_bytes()  # hashed at rest

    code, out, err = _run(capsys, "--db", db, "enroll", "create", "--group", "bad group")
    assert code == 2 and "--group" in err
    code, out, err = _run(
        capsys, "--db", db, "enroll", "create", "--group", "g", "--expires", "90d"
    )
    assert code == 2 and "--expires" in err

    async def device_enrols() -> None:
        async with Store.open(db) as store:
            await enrol(
                store,
                token,
                body(token, "pi-1"),
                credentials_dir=tmp_path / "creds",
                now=to_iso(utc_now()),
            )

    asyncio.run(device_enrols())
    code, out, _ = _run(capsys, "--db", db, "enroll", "list", "--json")
    (row,) = json.loads(out)["tokens"]
    assert (row["status"], row["used_by"], row["created_by"]) == ("used", "pi-1", "ann")
    code, _, err = _run(capsys, "--db", db, "enroll", "revoke", row["id"])
    assert code == 2 and "no unused enrolment token" in err

    code, out, _ = _run(capsys, "--db", db, "registry", "list", "--state", "pending", "--json")
    assert [d["id"] for d in json.loads(out)["devices"]] == ["pi-1"]
    code, _, err = _run(capsys, "--db", db, "registry", "accept")
    assert code == 2 and "--all-pending" in err
    code, out, err = _run(capsys, "--db", db, "registry", "accept", "--all-pending", "--as", "bo")
    assert code == 0 and "accepted 1 device(s): pi-1" in out, err
    code, out, _ = _run(capsys, "--db", db, "registry", "list", "--state", "pending", "--json")
    assert json.loads(out)["devices"] == []
