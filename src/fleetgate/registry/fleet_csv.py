"""The fleetgate CSV inventory: one device per row, a header naming the columns.

Columns: ``id,hardware,arch,group,address,token_env,token_file,ram_mb,disk_mb,gpu,monitoring,
critical,state`` in any order, plus one ``software.NAME`` column per software entry
(``software.jetpack``, ``software.os``). Only ``id, group, address`` must be present as
columns (the facts, hardware/arch/ram_mb/disk_mb, may be left for the device to report); an
empty cell means "not given" (the default applies, or the field is reported missing).
Rows whose first cell starts with ``#`` are comments, so a file
can carry a comment header; blank rows are skipped.

Rows are located by their *file line number* (``line 7``), which is what an editor shows. A
header with unknown or missing columns is reported on its own and the rows are not read: with
the columns wrong, every row would otherwise repeat the same complaint.
"""

from __future__ import annotations

import csv
import io

from fleetgate.registry.fields import (
    FIELDS,
    INLINE_TOKEN_KEYS,
    RawEntry,
    inline_token_message,
    unknown_key_message,
)

REQUIRED_COLUMNS = ("id", "group", "address")
SOFTWARE_PREFIX = "software."


def _check_header(header: list[str], line: int, source: str) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    where = f"{source}: line {line}"
    for col in header:
        if col in seen:
            problems.append(f"{where}: column {col!r}: appears twice")
        seen.add(col)
        if col in FIELDS or (col.startswith(SOFTWARE_PREFIX) and len(col) > len(SOFTWARE_PREFIX)):
            continue
        if col in INLINE_TOKEN_KEYS:
            problems.append(f"{where}: column {col!r}: {inline_token_message()}")
        else:
            allowed = [*FIELDS, "software.NAME"]
            problems.append(
                f"{where}: column {col!r}: {unknown_key_message(col, allowed, 'column')}"
            )
    problems.extend(
        f"{where}: column {col!r}: missing (required columns: {', '.join(REQUIRED_COLUMNS)})"
        for col in REQUIRED_COLUMNS
        if col not in seen
    )
    return problems


def read_fleet_csv(text: str, source: str) -> tuple[list[RawEntry], list[str]]:
    """CSV text -> entries and file-level problems (header, row shape, CSV syntax)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    entries: list[RawEntry] = []
    problems: list[str] = []
    end_of_previous = 0
    try:
        for row in reader:
            line, end_of_previous = end_of_previous + 1, reader.line_num
            cells = [cell.strip() for cell in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if header is None:
                header = cells
                problems.extend(_check_header(header, line, source))
                if problems:
                    return [], problems
                continue
            if len(cells) != len(header):
                problems.append(
                    f"{source}: line {line}: {len(cells)} cells, but the header has "
                    f"{len(header)} columns"
                )
                continue
            entries.append(_entry(header, cells, line))
    except csv.Error as exc:
        problems.append(f"{source}: line {reader.line_num}: malformed CSV: {exc}")
    if header is None and not problems:
        problems.append(f"{source}: no header row (expected columns {', '.join(REQUIRED_COLUMNS)})")
    return entries, problems


def _entry(header: list[str], cells: list[str], line: int) -> RawEntry:
    entry = RawEntry(where=f"line {line}")
    for col, cell in zip(header, cells, strict=True):
        if not cell:
            continue
        if col.startswith(SOFTWARE_PREFIX):
            entry.software[col[len(SOFTWARE_PREFIX) :]] = cell
        else:
            entry.values[col] = cell
    return entry
