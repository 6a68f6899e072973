"""The ``nbjobs`` group and ``main``: exit codes and one-line errors (see :mod:`nbjobs.cli`)."""

from __future__ import annotations

import os
import sys

import click

from .. import NbjobsError, UnknownJob
from .common import (
    EXIT_FAILED,
    EXIT_USAGE,
    LOG_LEVEL_HELP,
    LOG_LEVELS,
    OperationFailed,
    configure_logging,
    printable,
)
from .jobs import jobs
from .operate import queues, schedules, signal, workers
from .serve import dashboard, demo, migrate, worker

HELP = """The nbjobs command: run workers and the dashboard, and operate jobs, queues and
schedules on --url or NBJOBS_URL.

Listings print a table, or JSON with --json.  Exit codes: 0 done, 1 the operation
failed (e.g. an unknown job), 2 a usage or configuration error."""


def _version() -> str:
    from .. import __version__

    return __version__


@click.group(
    help=HELP,
    context_settings=dict(
        help_option_names=["-h", "--help"], show_default=True, max_content_width=100
    ),
)
@click.version_option(_version(), "--version", prog_name="nbjobs", message="%(prog)s %(version)s")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=os.environ.get("NBJOBS_LOG_LEVEL", "INFO"),
    help=LOG_LEVEL_HELP,
)
def cli(log_level: str) -> None:
    configure_logging(log_level)


for command in (worker, dashboard, demo, jobs, migrate, queues, schedules, signal, workers):
    cli.add_command(command)


def _error(message: str) -> None:
    text = "\n".join(printable(line) for line in message.splitlines())
    click.echo(f"nbjobs: error: {text}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: the process's); returns the exit code."""
    try:
        code = cli.main(args=argv, prog_name="nbjobs", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group (click >= 8.2): its help
            click.echo(exc.format_message(), err=True)
            return EXIT_USAGE
        _error(exc.format_message())
        if exc.ctx is not None:
            click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
        return EXIT_USAGE
    except click.Abort:
        click.echo("nbjobs: aborted", err=True)
        return EXIT_FAILED
    except click.ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
    except (OperationFailed, UnknownJob) as exc:
        _error(str(exc))
        return EXIT_FAILED
    except NbjobsError as exc:
        _error(str(exc))
        return EXIT_USAGE
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
