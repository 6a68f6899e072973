"""The dashboard's actions, called as the buttons call them, on every backend.

Retry from a step, every attempt's traceback, a signal from the form (and bad input
that sends nothing), bulk retry and cancel of the jobs the table's filter matches, and
sessions that may not act.  The same actions in Chromium, clicked by a logged-in user
(and refused to one who is not an operator, also when a script sends the click), are in
``tests/test_dashboard_actions_browser.py``.
"""

from __future__ import annotations

import logging

import pytest

import nbjobs
from nbjobs.views import JobDetail, JobsTable
from nbjobs.views.actions import OPERATORS_ENV, Confirmation, operators_from_env
from tests.support import wait_until


def define(app: nbjobs.App, calls: dict[str, int]) -> dict[str, nbjobs.Workflow]:
    """Three workflows: three counted steps, one that fails twice, one that waits."""

    def step(name: str):
        def run() -> str:
            calls[name] = calls.get(name, 0) + 1
            return f"{name}{calls[name]}"

        return run

    @app.workflow(name="three")
    def three(cs):
        return [cs.checkpoint(n, step(n)) for n in ("a", "b", "c")]

    @app.workflow(name="fails", retries=1)
    def fails(cs):
        calls["fails"] = calls.get("fails", 0) + 1
        raise RuntimeError(f"failure number {calls['fails']}")

    @app.workflow(name="waits")
    def waits(cs):
        return cs.wait_signal("approval", timeout=60)

    return {"three": three, "fails": fails, "waits": waits}


def test_retry_from_a_step_replays_the_steps_before_it(app) -> None:
    calls: dict[str, int] = {}
    wf = define(app, calls)
    with app.running(concurrency=1):
        h = wf["three"].submit()
        assert h.result(timeout=30) == ["a1", "b1", "c1"]
        detail = JobDetail(app=app, job_id=h.id)
        assert detail.retry_from_button.visible and not detail.retry_button.visible
        assert detail.step_select.options == {"1. a": "a", "2. b": "b", "3. c": "c"}
        assert detail.retry_from("b")
        wait_until(lambda: h.status == "succeeded", what="the rerun")
        assert h.result(timeout=30) == ["a1", "b2", "c2"]  # a replayed from its checkpoint
    assert calls == {"a": 1, "b": 2, "c": 2}
    assert not detail.retry_from("nope")  # an unknown step: refused, the job unchanged
    assert h.status == "succeeded"


def test_every_attempt_shows_its_whole_traceback(app) -> None:
    calls: dict[str, int] = {}
    wf = define(app, calls)
    with app.running(concurrency=1):
        h = wf["fails"].submit()
        with pytest.raises(nbjobs.JobFailed):
            h.result(timeout=30)
    html = JobDetail(app=app, job_id=h.id)._attempts.object
    for n in (1, 2):
        assert f'<details class="nbj-traceback" data-attempt="{n}"' in html
        assert f"Traceback of attempt {n}" in html
        assert f"RuntimeError: failure number {n}" in html
        assert "Traceback (most recent call last)" in html
    # The newest attempt's traceback is open, the older one collapsed.
    assert 'data-attempt="2" open>' in html and 'data-attempt="1" open>' not in html


def test_a_signal_sent_from_the_form_reaches_the_waiting_job(app) -> None:
    wf = define(app, {})
    with app.running(concurrency=1):
        h = wf["waits"].submit()
        wait_until(lambda: h.status == "waiting", what="the job to wait")
        detail = JobDetail(app=app, job_id=h.id)
        assert detail._signal_form.visible
        assert detail.send_signal(" approval ", '{"ok": true, "by": ["ann"]}')
        assert h.result(timeout=30) == {"ok": True, "by": ["ann"]}
    assert "Sent signal &#x27;approval&#x27;" in detail.signal_message.object
    detail.load()  # what the dashboard's refresh does when the job changes
    assert "approval" in detail._signals.object
    assert not detail._signal_form.visible  # finished: nothing left to signal


@pytest.mark.no_worker
def test_bad_signal_input_is_said_and_sends_nothing(app) -> None:
    h = define(app, {})["waits"].submit()
    detail = JobDetail(app=app, job_id=h.id)
    assert not detail.send_signal("approval", '{"ok": tru}')
    assert "not valid JSON" in detail.signal_message.object
    assert "nothing was sent" in detail.signal_message.object
    assert "nbj-said-error" in detail.signal_message.object
    assert not detail.send_signal("  ", "1")
    assert "Give the signal&#x27;s name" in detail.signal_message.object
    assert not detail.send_signal("x" * 300, "1")  # too long a name: the App says why
    assert "Nothing was sent" in detail.signal_message.object
    assert app.store.job_detail(h.id)["signals"] == []
    assert detail.send_signal("approval", "")  # empty: a signal without a payload
    assert len(app.store.job_detail(h.id)["signals"]) == 1


@pytest.mark.no_worker
def test_bulk_cancel_and_retry_act_on_the_filtered_jobs_after_a_question(app) -> None:
    @app.workflow(name="backlog")
    def backlog(cs, i):
        return i

    @app.workflow(name="other")
    def other(cs, i):
        return i

    ours = [backlog.submit(i) for i in range(5)]
    theirs = [other.submit(i) for i in range(2)]
    table = JobsTable(app=app)
    table.workflow = "backlog"
    assert table.ask_bulk("retry") == ""  # nothing failed or cancelled matches
    assert table.ask_bulk("cancel") == "Cancel 5 queued jobs?"
    assert table.confirmation.question == "<b>Cancel 5 queued jobs?</b>"
    assert table.confirmation.yes_button.label == "Yes, cancel 5"
    ours[0].cancel()  # changed between the question and the answer: left out
    assert table.confirmation.confirm() is True
    assert [h.status for h in ours] == ["cancelled"] * 5
    assert [h.status for h in theirs] == ["queued"] * 2
    assert table.confirmation.confirm() is None  # answered once; nothing pending

    table.status = ["cancelled"]
    assert table.ask_bulk("cancel") == ""  # the filter's status and the action's meet nowhere
    assert table.ask_bulk("retry") == "Retry 5 cancelled jobs?"
    table.confirmation.dismiss()  # "No": nothing happens
    assert table.confirmation.confirm() is None
    assert [h.status for h in ours] == ["cancelled"] * 5
    table.ask_bulk("retry")
    table.workflow = "other"  # a new filter: the question about the old one goes
    assert table.confirmation.question == "" and table.confirmation.confirm() is None
    table.workflow = "backlog"
    table.ask_bulk("retry")
    assert table.confirmation.confirm() is True
    assert [h.status for h in ours] == ["queued"] * 5


@pytest.mark.no_worker
def test_bulk_question_names_mixed_statuses_and_a_cap(app) -> None:
    @app.workflow(name="backlog")
    def backlog(cs, i):
        return i

    hs = [backlog.submit(i) for i in range(4)]
    hs[0].cancel()
    table = JobsTable(app=app)
    assert table.ask_bulk("retry") == "Retry 1 cancelled job?"
    rows, complete = app.store.jobs_matching(table.filters(), ("queued", "cancelled"), cap=2)
    assert len(rows) == 2 and not complete
    from nbjobs.views.jobs import bulk_question

    assert bulk_question("cancel", rows, complete) == (
        "Cancel 2 queued jobs (the newest 2: more match, run it again for the rest)?"
    )


@pytest.mark.no_worker
def test_bulk_app_calls_check_their_input_and_skip_what_does_not_apply(app) -> None:
    @app.workflow(name="backlog")
    def backlog(cs, i):
        return i

    h = backlog.submit(1)
    with pytest.raises(nbjobs.ConfigurationError, match="not one id as a string"):
        app.cancel_jobs(h.id)
    with pytest.raises(nbjobs.ConfigurationError, match="non-empty string"):
        app.retry_jobs([""])
    assert app.retry_jobs([h.id, "no-such-job"]) == []  # queued: nothing to retry
    assert app.cancel_jobs([h.id, "no-such-job", h.id]) == [h.id]
    assert app.cancel_jobs([h.id]) == []  # already cancelled
    assert app.retry_jobs([h.id]) == [h.id] and h.status == "queued"
    with pytest.raises(nbjobs.ConfigurationError, match="failed or cancelled"):
        app.store.retry_jobs([h.id], statuses=["succeeded"])


@pytest.mark.no_worker
def test_sessions_that_may_not_act_are_refused_and_logged(app, caplog, monkeypatch) -> None:
    wf = define(app, {})
    h = wf["waits"].submit()
    caplog.set_level(logging.INFO, logger="nbjobs.views.actions")
    refused = [
        JobDetail(app=app, job_id=h.id, read_only=True),
        JobDetail(app=app, job_id=h.id, require_auth=True),  # no logged-in user here
        JobDetail(app=app, job_id=h.id, operators=["alice"]),
    ]
    for detail in refused:
        assert not detail.cancel_button.visible and not detail._signal_form.visible
        assert not detail.cancel()
        assert not detail.send_signal("approval", "1")
        assert "Nothing was sent" in detail.signal_message.object
    table = JobsTable(app=app, operators=["alice"])
    table.controls()
    assert not table.bulk_cancel_button.visible
    assert table.ask_bulk("cancel") == "" and table.confirmation.question == ""
    assert h.status == "queued" and app.store.job_detail(h.id)["signals"] == []
    warnings = [r for r in caplog.records if r.name == "nbjobs.views.actions"]
    assert len(warnings) == 3 * 2 + 1
    assert all(r.getMessage().startswith("refused ") for r in warnings)
    assert {r.nbjobs_user for r in warnings} == {"(no login)"}
    assert "refused cancelling job" in warnings[0].getMessage()
    assert "this dashboard is read-only" in warnings[0].getMessage()
    assert "log in first" in warnings[2].getMessage()
    assert "not an operator" in warnings[4].getMessage()

    caplog.clear()
    assert JobDetail(app=app, job_id=h.id).cancel()
    (done,) = caplog.records
    assert done.getMessage() == f"cancelling job {h.id} by (no login)"
    assert done.nbjobs_action == f"cancelling job {h.id}"

    monkeypatch.setenv(OPERATORS_ENV, " alice, ,bob ")
    assert operators_from_env() == ["alice", "bob"]
    monkeypatch.setenv(OPERATORS_ENV, " , ")
    assert operators_from_env() is None


def test_a_confirmation_runs_its_action_once() -> None:
    ran: list[int] = []
    confirm = Confirmation()
    confirm.ask("Delete <everything>?", "Yes", lambda: ran.append(1) or "done")
    assert confirm.question == "<b>Delete &lt;everything&gt;?</b>"  # text, not markup
    assert confirm.confirm() == "done" and confirm.confirm() is None
    assert ran == [1] and confirm.question == ""
