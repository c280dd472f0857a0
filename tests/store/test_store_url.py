"""Store URLs: normalisation to the async drivers, one-line refusals, unreachable databases."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.errors import InputError, StoreConfigError, StoreError
from fleetgate.store import Store, parse_store_url
from ports import free_port


@pytest.mark.parametrize(
    ("raw", "driver", "backend", "schema"),
    [
        ("sqlite:///.fleetgate/fleetgate.db", "sqlite+aiosqlite", "sqlite", None),
        ("sqlite+aiosqlite:////var/lib/fg.db", "sqlite+aiosqlite", "sqlite", None),
        ("postgresql://u@h:5432/db", "postgresql+asyncpg", "postgresql", None),
        ("postgres://u@h/db", "postgresql+asyncpg", "postgresql", None),
        ("postgresql+asyncpg://u:pw@h/db?schema=fg_1", "postgresql+asyncpg", "postgresql", "fg_1"),
    ],
)
def test_urls_are_normalised_to_async_drivers(
    raw: str, driver: str, backend: str, schema: str | None
) -> None:
    target = parse_store_url(raw)
    assert target.url.drivername == driver
    assert target.backend == backend
    assert target.schema == schema
    assert "schema" not in target.url.query


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://u@h/db", "'mysql' is not supported"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite+pysqlite:///x.db", "not async"),
        ("postgresql+psycopg2://u@h/db", "not supported"),
        ("postgresql://u@h/db?schema=bad-name", "plain SQL identifier"),
        ("sqlite:///x.db?mode=ro", "take no options"),
    ],
)
def test_bad_urls_are_one_line_input_errors(raw: str, fragment: str) -> None:
    with pytest.raises(StoreConfigError) as caught:
        parse_store_url(raw)
    assert isinstance(caught.value, InputError) and isinstance(caught.value, StoreError)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_passwords_never_appear_in_messages() -> None:
    target = parse_store_url("postgresql://fleet:hunter2@h/db?schema=s1")
    assert "hunter2" not in target.display
    with pytest.raises(StoreConfigError) as caught:
        parse_store_url("postgresql+psycopg2://fleet:hunter2@h/db")
    assert "hunter2" not in str(caught.value)


async def test_unreachable_postgres_is_a_one_line_store_error() -> None:
    url = f"postgresql://fleet:hunter2@127.0.0.1:{free_port()}/test"
    with pytest.raises(StoreError) as caught:
        await Store.open(url)
    message = str(caught.value)
    assert message.startswith("cannot open store postgresql+asyncpg://fleet:***@127.0.0.1:")
    assert "\n" not in message and "hunter2" not in message
    assert caught.value.retryable
    assert not isinstance(caught.value, InputError)


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not sqlite " * 200)
    with pytest.raises(StoreError, match=r"cannot open store .*not a database"):
        await Store.open(f"sqlite:///{path}")


async def test_sqlite_parent_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "fleetgate.db"
    async with Store.open(f"sqlite:///{path}") as store:
        assert store.backend == "sqlite"
    assert path.is_file()
