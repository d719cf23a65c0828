"""How commands print: tables (rich, without borders, so they stay easy to grep), indented
JSON, one JSON object per line for streams, and progress bars on stderr."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

__all__ = ["json_line", "progress", "table", "to_json"]

# Wide enough that no table of the project wraps: a wrapped row breaks grep and awk.
_WIDTH = 1000


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns left-aligned, two spaces apart, no trailing blanks: easy to read and to grep."""
    grid = Table(box=None, pad_edge=False, padding=(0, 1), show_edge=False, highlight=False)
    for header in headers:
        grid.add_column(header, no_wrap=True, overflow="ignore", header_style="")
    for row in rows:
        grid.add_row(*(str(c) for c in row))
    out = io.StringIO()
    Console(file=out, width=_WIDTH, color_system=None, emoji=False, markup=False).print(grid)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def to_json(value: Any) -> str:
    """``value`` as indented JSON; dataclasses become objects, other mappings dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.dumps(value, default=dict, indent=2)


def json_line(value: Any) -> str:
    """``value`` as one line of JSON (streams: one object per line); datetimes in ISO 8601,
    other values JSON lacks (bytes, decimals) as their ``str``."""
    # orjson: a third of `topics show --format json`'s time went to the standard json module.
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Progress]:
    """A progress bar on stderr (shown only when stderr is a terminal); the caller advances
    ``task 0`` by records done."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    bar.add_task(description, total=total)
    with bar:
        yield bar
