"""``nbjobs jobs``: list, show, logs, cancel, retry and purge jobs.

``cancel`` and ``retry`` take job ids, or instead the filters of ``list`` for a bulk
action on every matching job, confirmed first (``--yes`` to skip the question).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from .. import NbjobsError
from ..jobs import ACTIVE, Status
from .common import (
    OperationFailed,
    confirm,
    emit_json,
    emit_table,
    json_option,
    log_level_option,
    open_app,
    parse_age,
    parse_since,
    printable,
    printable_lines,
    record,
    shown_time,
    url_option,
    yes_option,
)

if TYPE_CHECKING:
    from ..app import App

#: The filter options of ``jobs list`` (the bulk forms take the same).
FILTERS = ("status", "workflow", "queue", "since")
STATUSES = [s.value for s in Status]


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--status`` (repeatable), ``--workflow``, ``--queue``, ``--since``."""
    fn = click.option(
        "--since",
        default=None,
        metavar="AGE|TIME",
        help="only jobs created since then: an age (30m, 2h, 7d) or an ISO-8601 time",
    )(fn)
    fn = click.option("--queue", default=None, help="only jobs of this queue")(fn)
    fn = click.option("--workflow", default=None, help="only jobs of this workflow")(fn)
    return click.option(
        "--status",
        multiple=True,
        type=click.Choice(STATUSES),
        help="only jobs in this status (repeatable)",
    )(fn)


def _rows(
    app: App,
    status: Sequence[str],
    workflow: str | None,
    queue: str | None,
    since: str | None,
    limit: int | None,
) -> Sequence[Any]:
    """The matching jobs, newest first; the App checks the filters (a clear error, never
    a database one)."""
    return app.list_job_rows(
        list(status) or None,
        workflow,
        queue,
        limit,
        since=None if since is None else parse_since(since),
    )


def _first_line(text: str | None, width: int = 60) -> str:
    return text.splitlines()[0][:width] if text else ""


def list_jobs(
    url: str | None,
    status: Sequence[str],
    workflow: str | None,
    queue: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    with open_app(url) as app:
        rows = _rows(app, status, workflow, queue, since, limit)
    if as_json:
        emit_json([record(r) for r in rows])
        return
    click.echo(
        f"{'id':26} {'workflow':24} {'status':10} {'queue':12} {'attempts':>8}  "
        f"{'created (UTC)':19}  error"
    )
    for r in rows:
        workflow_name, queue_name = printable(r.workflow), printable(r.queue)
        click.echo(
            f"{r.id:26} {workflow_name[:24]:24} {r.status:10} {queue_name[:12]:12} "
            f"{r.attempts:>8}  {shown_time(r.created_at):19}  {printable(_first_line(r.error))}"
        )


_LIST_HELP = "List the newest jobs (also plain `nbjobs jobs`)."


@click.group(invoke_without_command=True, short_help="List, show and act on jobs.")
@url_option
@filter_options
@click.option("--limit", type=click.IntRange(min=1), default=20, help="how many of the newest jobs")
@json_option
@log_level_option
@click.pass_context
def jobs(
    ctx: click.Context,
    url: str | None,
    status: tuple[str, ...],
    workflow: str | None,
    queue: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List, show and act on jobs; without a subcommand, list the newest jobs."""
    if ctx.invoked_subcommand is None:
        list_jobs(url, status, workflow, queue, since, limit, as_json)
        return
    given = [f"--{name}" for name in FILTERS if ctx.params.get(name)]
    if ctx.get_parameter_source("limit") != click.core.ParameterSource.DEFAULT:
        given.append("--limit")
    if as_json:
        given.append("--json")
    if given:
        raise click.UsageError(
            f"put {', '.join(given)} after the subcommand: nbjobs jobs "
            f"{ctx.invoked_subcommand} {' '.join(given)} ..."
        )


@jobs.command("list", help=_LIST_HELP)
@url_option
@filter_options
@click.option("--limit", type=click.IntRange(min=1), default=20, help="how many of the newest jobs")
@json_option
@log_level_option
def list_command(
    url: str | None,
    status: tuple[str, ...],
    workflow: str | None,
    queue: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    list_jobs(url, status, workflow, queue, since, limit, as_json)


# -- one job ---------------------------------------------------------------------------
@jobs.command()
@click.argument("job_id", metavar="JOB")
@url_option
@json_option
@log_level_option
def show(job_id: str, url: str | None, as_json: bool) -> None:
    """Show a job: its row, every attempt with its traceback, and its checkpoints."""
    with open_app(url) as app:
        handle = app.job(job_id)
        info = handle.info()
        attempts = handle.attempts
        steps = handle.checkpoint_info()
    if as_json:
        emit_json(
            {
                "job": record(info),
                "attempts": [record(a) for a in attempts],
                "checkpoints": [record(c) for c in steps],
            }
        )
        return
    fields = [
        ("id", info["id"]),
        ("workflow", info["workflow"]),
        ("status", info["status"]),
        ("queue", info["queue"]),
        ("priority", info["priority"]),
        ("attempts", f"{info['attempts']} (retries allowed: {info['max_retries']})"),
        ("key", info.get("key")),
        ("parent", info.get("parent_id")),
        ("schedule", info.get("schedule")),
        ("waiting for", info.get("waiting_for")),
        ("worker", info.get("worker_id")),
        ("created", shown_time(info["created_at"])),
        ("started", shown_time(info.get("started_at"))),
        ("finished", shown_time(info.get("finished_at"))),
        ("error", info.get("error")),
    ]
    for name, value in fields:
        if value not in (None, ""):
            click.echo(
                f"{name + ':':13}" + printable_lines(str(value)).replace("\n", "\n" + " " * 13)
            )
    click.echo("")
    click.echo(f"checkpoints ({len(steps)}):")
    emit_table(
        ["seq", "name", "kind", "done", "attempt", "finished", "seconds", "value"],
        [
            [
                c["seq"],
                c["name"],
                c["kind"],
                "yes" if c["done"] else "no",
                c["attempt"] if c["attempt"] is not None else "",
                shown_time(c["finished_at"]),
                _seconds(c["started_at"], c["finished_at"]),
                _preview(c.get("value"), c.get("value_length")),
            ]
            for c in steps
        ],
    )
    click.echo("")
    click.echo(f"attempts ({len(attempts)}):")
    for a in attempts:
        click.echo(
            printable(
                f"  #{a['attempt']} {a['outcome']} on {a['worker_id'] or '?'}: "
                f"{shown_time(a['started_at'])} -> {shown_time(a['finished_at']) or '...'}"
                f" ({_seconds(a['started_at'], a['finished_at']) or '?'} s)"
            )
        )
        if a.get("error"):
            click.echo("    error: " + printable(_first_line(a["error"], 1000)))
        if a.get("traceback"):
            click.echo("    " + printable_lines(a["traceback"]).replace("\n", "\n    "))


def _seconds(start: Any, end: Any) -> str:
    if start is None or end is None:
        return ""
    return f"{(end - start).total_seconds():.3f}"


def _preview(value: str | None, length: int | None, width: int = 60) -> str:
    if value is None:
        return ""
    text = value[:width]
    return text + ("..." if (length or 0) > len(text) else "")


@jobs.command()
@click.argument("job_id", metavar="JOB")
@url_option
@json_option
@log_level_option
def logs(job_id: str, url: str | None, as_json: bool) -> None:
    """Print what a job printed or logged while it ran on a worker."""
    with open_app(url) as app:
        text = app.job(job_id).logs()
    if as_json:
        emit_json({"id": job_id, "logs": text})
    elif text:
        click.echo(printable_lines(text))


# -- acting on jobs ----------------------------------------------------------------------
def _targets(
    app: App,
    job_ids: Sequence[str],
    filters: dict[str, Any],
    default_statuses: Sequence[str],
    action: str,
    yes: bool,
) -> list[str]:
    """The ids to act on: those given, or every job matching the filters (among
    ``default_statuses`` when no ``--status`` is given), confirmed first."""
    given = [f"--{k}" for k, v in filters.items() if v]
    if job_ids:
        if given:
            raise click.UsageError(f"give job ids or filters ({', '.join(given)}), not both")
        return list(job_ids)
    if not given:
        raise click.UsageError(
            f"give the ids of the jobs to {action}, or filters for a bulk {action} "
            "(--status, --workflow, --queue, --since)"
        )
    statuses = list(filters["status"]) or list(default_statuses)
    rows = _rows(app, statuses, filters["workflow"], filters["queue"], filters["since"], None)
    ids = [r.id for r in rows]
    confirm(len(ids), action, yes)
    return ids


def _act(ids: Sequence[str], act: Callable[[str], str], as_json: bool, *, bulk: bool) -> None:
    """Apply ``act`` to each job and report each outcome (in bulk, only the failures and
    the count); exit code 1 when any failed."""
    results: list[dict[str, Any]] = []
    for job_id in ids:
        try:
            results.append({"id": job_id, "ok": True, "status": act(job_id)})
        except NbjobsError as exc:  # an unknown job, a job in the wrong state: say, go on
            results.append({"id": job_id, "ok": False, "error": str(exc)})
    failed = [r for r in results if not r["ok"]]
    if as_json:
        emit_json(results)
    else:
        alone = len(results) == 1  # its error goes to stderr, once
        for r in results:
            if (r["ok"] and not bulk) or (not r["ok"] and not alone):
                text = r["status"] if r["ok"] else f"error: {r['error']}"
                click.echo(printable(f"{r['id']}: {text}"))
        if bulk or len(results) > 1:
            click.echo(f"{len(results) - len(failed)} of {len(results)} done")
    if failed:
        if len(results) == 1 and not as_json:
            raise OperationFailed(failed[0]["error"])
        raise OperationFailed(f"{len(failed)} of {len(results)} job(s) failed")


@jobs.command()
@click.argument("job_ids", metavar="[JOB]...", nargs=-1)
@url_option
@filter_options
@yes_option
@json_option
@log_level_option
def cancel(
    job_ids: tuple[str, ...],
    url: str | None,
    status: tuple[str, ...],
    workflow: str | None,
    queue: str | None,
    since: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Cancel jobs: those given, or (with filters) every matching unfinished job.

    A queued or waiting job is cancelled at once, a running one at its next step.
    """
    filters = dict(status=status, workflow=workflow, queue=queue, since=since)
    with open_app(url) as app:
        ids = _targets(app, job_ids, filters, sorted(ACTIVE), "cancel", yes)

        def one(job_id: str) -> str:
            after = app.cancel(job_id)
            if after == Status.RUNNING.value:
                return "cancel requested (it stops at its next step)"
            if after == Status.CANCELLED.value:
                return "cancelled"
            return f"already {after}: nothing to cancel"

        _act(ids, one, as_json, bulk=not job_ids)


@jobs.command()
@click.argument("job_ids", metavar="[JOB]...", nargs=-1)
@click.option(
    "--from",
    "from_step",
    default=None,
    metavar="STEP",
    help="re-run from this checkpoint on (dropping it and the later ones)",
)
@url_option
@filter_options
@yes_option
@json_option
@log_level_option
def retry(
    job_ids: tuple[str, ...],
    from_step: str | None,
    url: str | None,
    status: tuple[str, ...],
    workflow: str | None,
    queue: str | None,
    since: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Queue failed or cancelled jobs again, keeping their finished checkpoints: those
    given, or (with filters) every matching failed or cancelled job."""
    filters = dict(status=status, workflow=workflow, queue=queue, since=since)
    defaults = [Status.FAILED.value, Status.CANCELLED.value]
    with open_app(url) as app:
        ids = _targets(app, job_ids, filters, defaults, "retry", yes)

        def one(job_id: str) -> str:
            app.job(job_id).retry(from_checkpoint=from_step)
            return "queued again" + (f" from {from_step!r}" if from_step else "")

        _act(ids, one, as_json, bulk=not job_ids)


@jobs.command()
@click.option(
    "--older-than",
    required=True,
    metavar="AGE",
    help="delete jobs that finished longer ago than this: 30m, 12h, 7d, 4w",
)
@click.option(
    "--status",
    multiple=True,
    type=click.Choice([Status.SUCCEEDED.value, Status.FAILED.value, Status.CANCELLED.value]),
    help="only finished jobs in this status (repeatable; default all three)",
)
@yes_option
@url_option
@json_option
@log_level_option
def purge(
    older_than: str, status: tuple[str, ...], yes: bool, url: str | None, as_json: bool
) -> None:
    """Delete finished jobs with their checkpoints, attempts, signals, logs and hook runs (a
    fan-out tree goes as a whole, once no job of it is unfinished), confirmed first."""
    age = parse_age(older_than, "--older-than")
    statuses = list(status) or None
    with open_app(url) as app:
        confirm(app.purge(older_than=age, status=statuses, dry_run=True), "purge", yes)
        deleted = app.purge(older_than=age, status=statuses)
    if as_json:
        emit_json({"deleted": deleted})
    else:
        click.echo(f"purged {deleted} job(s)")
