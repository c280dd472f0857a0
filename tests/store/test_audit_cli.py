"""``fleetgate audit show|verify`` through the real CLI dispatcher, on both backends."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleetgate.cli.main import EXIT_HALTED, EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, run
from fleetgate.core.events import Event
from fleetgate.store import Store
from fleetgate.store.engine import create_store_engine
from ports import free_port


def _populate(url: str) -> None:
    async def go() -> None:
        async with Store.open(url) as store:
            await store.create_deployment("dep-7", "vision 2.4.1", "a" * 64, {})
            await store.append_many(
                [
                    Event(
                        ts="2026-11-26T08:30:00.000000+00:00",
                        deployment_id="dep-7",
                        action="prepare",
                        details={"artifact": "vision 2.4.1"},
                    ),
                    Event(
                        ts="2026-11-26T08:31:00.000000+00:00",
                        deployment_id="dep-7",
                        device_id="orin-01",
                        action="stage",
                        outcome="failed",
                        details={"error": "disk full [slot b]", "attempt": 3},
                    ),
                    Event(
                        ts="2026-11-26T08:32:00.000000+00:00",
                        deployment_id=None,
                        actor="alice",
                        action="registry.import",
                        details={"devices": 12},
                    ),
                    Event(
                        ts="2026-11-26T08:33:00.000000+00:00",
                        deployment_id="dep-7",
                        actor="bob",
                        action="approve",
                        details={"comment": "ok"},
                    ),
                ]
            )

    asyncio.run(go())


def _tamper(url: str, statement: str) -> None:
    async def go() -> None:
        async with Store.open(url) as store:
            engine = create_store_engine(store.target)
            try:
                async with engine.begin() as conn:
                    await conn.exec_driver_sql(statement)
            finally:
                await engine.dispose()

    asyncio.run(go())


def test_show_prints_a_timeline(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _populate(store_url)
    assert run(["--db", store_url, "audit", "show"]) == EXIT_OK
    out = capsys.readouterr().out
    for text in (
        "seq",
        "prepare",
        "registry.import",
        "orin-01",
        "failed",
        "alice",
        "2026-11-26 08:31:00",
        "error=disk full [slot b]",
        "attempt=3",
    ):
        assert text in out, text
    assert run(["--db", store_url, "audit", "show", "dep-7"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "approve" in out and "registry.import" not in out


def test_show_json_is_one_document(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _populate(store_url)
    assert run(["--db", store_url, "audit", "show", "dep-7", "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["deployment_id"] == "dep-7" and doc["count"] == 3
    assert [e["seq"] for e in doc["events"]] == [1, 2, 4]
    second = doc["events"][1]
    assert second["device_id"] == "orin-01" and second["outcome"] == "failed"
    assert second["details"] == {"error": "disk full [slot b]", "attempt": 3}
    assert second["prev_hash"] == doc["events"][0]["hash"]
    assert run(["--db", store_url, "audit", "show", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["count"] == 4


def test_show_unknown_deployment_is_an_input_error(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _populate(store_url)
    assert run(["--db", store_url, "audit", "show", "dep-404"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "no deployment 'dep-404'" in err and len(err.strip().splitlines()) == 1


def test_show_on_an_empty_store(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--db", store_url, "audit", "show"]) == EXIT_OK
    assert "no events" in capsys.readouterr().out


def test_verify_ok_and_broken(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--db", store_url, "audit", "verify"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == "audit chain OK: 0 events"
    _populate(store_url)
    assert run(["--db", store_url, "audit", "verify"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == "audit chain OK: 4 events"

    _tamper(store_url, "UPDATE events SET actor = 'mallory' WHERE seq = 2")
    assert run(["--db", store_url, "audit", "verify"]) == EXIT_HALTED
    assert capsys.readouterr().out.strip() == (
        "audit chain BROKEN at seq 2: content does not match its hash (edited)"
    )
    assert run(["--db", store_url, "audit", "verify", "--json"]) == EXIT_HALTED
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "ok": False,
        "checked": 1,
        "first_bad_seq": 2,
        "reason": "content does not match its hash (edited)",
    }


def test_verify_reports_a_deleted_last_event(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _populate(store_url)
    _tamper(store_url, "DELETE FROM events WHERE seq = 4")
    assert run(["--db", store_url, "audit", "verify"]) == EXIT_HALTED
    assert capsys.readouterr().out.startswith("audit chain BROKEN at seq 4: ")


def test_bad_db_urls_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--db", "mysql://u@h/db", "audit", "verify"]) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'mysql' is not supported" in err[0]

    port = free_port()  # nothing listens there
    assert run(["--db", f"postgresql://u@127.0.0.1:{port}/x", "audit", "show"]) == EXIT_INTERNAL
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fleetgate: error: cannot open store")


def test_audit_without_a_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit"]) == EXIT_INPUT
    assert "verify" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("details", "reason"),
    [("not json{", "details are not JSON"), ("[1, 2]", "details are not a JSON object")],
)
def test_verify_and_show_report_details_that_are_no_longer_json(
    store_url: str, capsys: pytest.CaptureFixture[str], details: str, reason: str
) -> None:
    # Issue 7 item 8: this used to be a JSONDecodeError traceback (exit 1), not a BROKEN chain.
    _populate(store_url)
    _tamper(store_url, f"UPDATE events SET details = '{details}' WHERE seq = 3")
    assert run(["--db", store_url, "audit", "verify"]) == EXIT_HALTED
    out, err = capsys.readouterr()
    assert out.strip() == f"audit chain BROKEN at seq 3: {reason} (edited)"
    assert "Traceback" not in err

    assert run(["--db", store_url, "audit", "verify", "--json"]) == EXIT_HALTED
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["checked"], doc["first_bad_seq"]) == (False, 2, 3)

    for argv in (["audit", "show"], ["audit", "show", "--json"]):
        assert run(["--db", store_url, *argv]) == EXIT_HALTED
        out, err = capsys.readouterr()
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"fleetgate: error: audit log seq 3: {reason}")
    # A deployment whose events are all intact still shows (seq 3 is not dep-7's).
    assert run(["--db", store_url, "audit", "show", "dep-7"]) == EXIT_OK


def test_an_earlier_edit_is_reported_before_a_later_undecodable_row(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _populate(store_url)
    _tamper(store_url, "UPDATE events SET details = 'not json{' WHERE seq = 4")
    _tamper(store_url, "UPDATE events SET actor = 'mallory' WHERE seq = 2")
    assert run(["--db", store_url, "audit", "verify"]) == EXIT_HALTED
    assert capsys.readouterr().out.strip() == (
        "audit chain BROKEN at seq 2: content does not match its hash (edited)"
    )
