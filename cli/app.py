"""The ``coopr-pipeline`` command: global options, error reporting, and its command groups.

Every command turns a :class:`~pipeline.errors.PipelineError` into one line on stderr and
exit status 1, and wrong usage into one line and exit status 2 (as click does, but without
click's usage block: at 3 a.m. the error is the line that matters, ``--help`` is a step away),
never a stack trace.
"""

from __future__ import annotations

from typing import Any

import click

from cli.bench import bench
from cli.db import db
from cli.deploy import deploy
from cli.dlq import dlq
from cli.lag import lag
from cli.ownership import ownership
from cli.replay import replay
from cli.simulate import demo, simulate
from cli.stack import stack
from cli.status import status
from cli.topics import topics
from cli.worker import worker
from pipeline.errors import PipelineError
from pipeline.logging import configure_logging

__all__ = ["main"]


class _Group(click.Group):
    """A click group that reports the project's errors in words."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PipelineError as e:
            click.secho(f"error: {e}", err=True, fg="red")
            ctx.exit(1)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            click.secho(f"error: {e.format_message()} (see {where} --help)", err=True, fg="red")
            ctx.exit(e.exit_code)


@click.group(cls=_Group)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--log-json/--log-console", default=None, help="Log format; JSON unless stderr is a terminal."
)
@click.version_option(package_name="coopr-pipeline")
def main(log_level: str, log_json: bool | None) -> None:
    """Multi-DC replication for Coopr over Kafka and MirrorMaker 2."""
    configure_logging(log_level, json=log_json)


_COMMANDS = (
    *(stack, db, worker, ownership, topics, lag, status, replay, dlq),
    *(simulate, demo, bench, deploy),
)
for _command in _COMMANDS:
    main.add_command(_command)
