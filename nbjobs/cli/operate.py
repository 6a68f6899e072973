"""``nbjobs queues``, ``schedules``, ``signal`` and ``workers``."""

from __future__ import annotations

import json
from typing import Any

import click

from ..jobs import limits_text
from .common import (
    OperationFailed,
    emit_json,
    emit_table,
    json_option,
    log_level_option,
    open_app,
    printable,
    record,
    shown_time,
    url_option,
)


# -- queues ----------------------------------------------------------------------------
@click.group()
@url_option
def queues(url: str | None) -> None:
    """List, pause and resume queues."""


@queues.command("list")
@url_option
@json_option
@log_level_option
def list_queues(url: str | None, as_json: bool) -> None:
    """Every known queue: queued jobs (and those ready now), running, waiting, paused,
    its limits, and its ready jobs that the limits hold back."""
    with open_app(url) as app:
        rows = app.queues()
    if as_json:
        emit_json(rows)
        return
    emit_table(
        ["queue", "queued", "ready", "running", "waiting", "paused", "limits", "held"],
        [
            [
                q["queue"],
                q["queued"],
                q["ready"],
                q["running"],
                q["waiting"],
                "paused" if q["paused"] else "",
                limits_text(q["concurrency"], q["rate"]),
                q["held"],
            ]
            for q in rows
        ],
    )


def _queue_action(name: str, url: str | None, as_json: bool, paused: bool) -> None:
    with open_app(url) as app:
        (app.pause_queue if paused else app.resume_queue)(name)
    word = "paused" if paused else "resumed"
    _said(as_json, {"queue": name, "paused": paused}, f"queue {name} {word}")


@queues.command("pause")
@click.argument("name", metavar="QUEUE")
@url_option
@json_option
@log_level_option
def pause_queue(name: str, url: str | None, as_json: bool) -> None:
    """Hold a queue: no worker anywhere claims its jobs until it is resumed."""
    _queue_action(name, url, as_json, True)


@queues.command("resume")
@click.argument("name", metavar="QUEUE")
@url_option
@json_option
@log_level_option
def resume_queue(name: str, url: str | None, as_json: bool) -> None:
    """Let workers claim from a paused queue again."""
    _queue_action(name, url, as_json, False)


@queues.command("limit")
@click.argument("name", metavar="QUEUE")
@click.option(
    "--concurrency", type=int, default=None, help="jobs of the queue running at once, fleet-wide"
)
@click.option("--rate", default=None, help='starts per window: "N/s", "N/minute" or "N/hour"')
@click.option("--clear", is_flag=True, help="remove the queue's limits")
@url_option
@json_option
@log_level_option
def limit_queue(
    name: str,
    concurrency: int | None,
    rate: str | None,
    clear: bool,
    url: str | None,
    as_json: bool,
) -> None:
    """Set a queue's fleet-wide limits (stored in the database; workers apply them at
    their next claim).  Give --concurrency and/or --rate, or --clear to remove them;
    a limit left out is removed."""
    if clear and (concurrency is not None or rate is not None):
        raise click.UsageError("give --clear alone, or --concurrency/--rate")
    if not clear and concurrency is None and rate is None:
        raise click.UsageError("give --concurrency and/or --rate, or --clear")
    with open_app(url) as app:
        app.set_queue(name, concurrency=concurrency, rate=rate)
    shown = limits_text(concurrency, rate) or "no limits"
    _said(
        as_json,
        {"queue": name, "concurrency": concurrency, "rate": rate},
        f"queue {name}: {shown}",
    )


# -- schedules -------------------------------------------------------------------------
@click.group()
@url_option
def schedules(url: str | None) -> None:
    """List, pause, resume and run cron schedules."""


def _schedule_record(s: dict[str, Any]) -> dict[str, Any]:
    data = record(s)
    for key in ("next_run", "last_run"):
        data[key] = None if s[key] is None else s[key].isoformat()
    return data


@schedules.command("list")
@url_option
@json_option
@log_level_option
def list_schedules(url: str | None, as_json: bool) -> None:
    """Every schedule: cron, timezone, next run, last run and its status, paused."""
    with open_app(url) as app:
        rows = [dict(s) for s in app.schedules()]
    if as_json:
        emit_json([_schedule_record(s) for s in rows])
        return
    emit_table(
        ["name", "workflow", "cron", "timezone", "next run", "last run", "last status", "paused"],
        [
            [
                s["name"],
                s["workflow"],
                s["cron"],
                s["timezone"],
                shown_time(s["next_run"]),
                shown_time(s["last_run"]),
                s["last_status"] or "",
                "paused" if s["paused"] else "",
            ]
            for s in rows
        ],
    )


def _said(as_json: bool, data: dict[str, Any], text: str) -> None:
    """What an action did: ``data`` as JSON, or ``text`` for people."""
    if as_json:
        emit_json(data)
    else:
        click.echo(printable(text))


def _known_schedule(app: Any, name: str) -> None:
    if name not in {s["name"] for s in app.schedules()}:
        raise OperationFailed(f"no schedule named {name!r}")


@schedules.command("pause")
@click.argument("name", metavar="SCHEDULE")
@url_option
@json_option
@log_level_option
def pause_schedule(name: str, url: str | None, as_json: bool) -> None:
    """Stop a schedule firing until it is resumed (its ticks meanwhile are skipped)."""
    with open_app(url) as app:
        _known_schedule(app, name)
        app.pause_schedule(name)
    _said(as_json, {"schedule": name, "paused": True}, f"schedule {name} paused")


@schedules.command("resume")
@click.argument("name", metavar="SCHEDULE")
@url_option
@json_option
@log_level_option
def resume_schedule(name: str, url: str | None, as_json: bool) -> None:
    """Let a paused schedule fire again, from its next tick after now."""
    with open_app(url) as app:
        _known_schedule(app, name)
        app.resume_schedule(name)
    _said(as_json, {"schedule": name, "paused": False}, f"schedule {name} resumed")


@schedules.command("run")
@click.argument("name", metavar="SCHEDULE")
@url_option
@json_option
@log_level_option
def run_schedule(name: str, url: str | None, as_json: bool) -> None:
    """Fire a schedule once, now (paused or not); its cron ticks go on as before."""
    with open_app(url) as app:
        _known_schedule(app, name)
        job_id = app.run_schedule(name).id
    if as_json:
        emit_json({"schedule": name, "job": job_id})
    else:
        click.echo(printable(f"schedule {name} fired: job {job_id}"))


# -- signals and workers -------------------------------------------------------------------
@click.command()
@click.argument("job_id", metavar="JOB")
@click.argument("name")
@click.argument("payload", metavar="[JSON]", required=False)
@url_option
@json_option
@log_level_option
def signal(job_id: str, name: str, payload: str | None, url: str | None, as_json: bool) -> None:
    """Send the signal NAME to a job, with an optional JSON payload (what
    cs.wait_signal(NAME) returns), e.g. '{"by": "ana"}'."""
    value = None
    if payload is not None:
        try:
            value = json.loads(payload)
        except ValueError as exc:
            raise click.BadParameter(
                f"{payload[:80]!r} is not valid JSON ({exc}); quote it for the shell, "
                """e.g. '{"by": "ana"}', '"text"' or 42""",
                param_hint="JSON",
            ) from None
    with open_app(url) as app:
        app.signal(job_id, name, value)
    if as_json:
        emit_json({"id": job_id, "signal": name, "payload": value})
    else:
        click.echo(printable(f"signal {name} sent to job {job_id}"))


@click.command()
@url_option
@json_option
@log_level_option
def workers(url: str | None, as_json: bool) -> None:
    """The live workers: host, pid, queues, concurrency, jobs held, last heartbeat."""
    with open_app(url) as app:
        rows = app.workers()
    if as_json:
        emit_json([record(w) for w in rows])
        return
    emit_table(
        ["id", "host", "pid", "queues", "concurrency", "jobs", "started", "heartbeat"],
        [
            [
                w["id"],
                w["host"],
                w["pid"],
                ",".join(w["queues"]),
                w["concurrency"],
                w["jobs_held"],
                shown_time(w["started_at"]),
                shown_time(w["heartbeat_at"]),
            ]
            for w in rows
        ],
    )
