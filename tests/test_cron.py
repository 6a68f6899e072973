"""nbjobs.cron: parsing, validation, timezones and daylight-saving behaviour."""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from nbjobs import ConfigurationError, cron

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def at(*parts: int, tz=UTC) -> float:
    return datetime(*parts, tzinfo=tz).timestamp()


def local(epoch: float, tz=BERLIN) -> str:
    return datetime.fromtimestamp(epoch, tz).isoformat()


def walk(spec: cron.Cron, start: float, end: float, limit: int = 100_000) -> list[float]:
    out, t = [], spec.next_after(start)
    while t is not None and t <= end and len(out) < limit:
        out.append(t)
        t = spec.next_after(t)
    return out


@pytest.mark.parametrize(
    ("alias", "fields"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@ANNUALLY", "0 0 1 1 *"),
    ],
)
def test_aliases_tick_like_their_fields(alias: str, fields: str) -> None:
    start, end = at(2024, 2, 27, 13, 17), at(2027, 1, 1)
    ticks = walk(cron.parse(alias), start, end, limit=30)
    assert len(ticks) >= 2
    assert ticks == walk(cron.parse(fields), start, end, limit=30)


def test_seconds_field_is_croniters_sixth_field() -> None:
    every_ten = cron.parse("* * * * * */10")
    start = at(2024, 1, 1, 10, 0, 3)
    assert walk(every_ten, start, start + 30) == [start + 7, start + 17, start + 27]
    every_second = cron.parse("* * * * * *")
    assert every_second.next_after(start) == start + 1
    assert every_second.next_after(start + 0.25) == start + 1


def test_year_field_and_a_schedule_that_ends() -> None:
    once = cron.parse("0 12 1 1 * 0 2030")
    assert once.next_after(at(2024, 1, 1)) == at(2030, 1, 1, 12)
    assert once.next_after(at(2030, 1, 1, 12)) is None


def test_whitespace_is_normalized_and_results_are_cached() -> None:
    a = cron.parse("  */5   *  * * *  ", "UTC")
    assert a.expression == "*/5 * * * *"
    assert cron.parse("*/5 * * * *", ZoneInfo("UTC")) is a


@pytest.mark.parametrize(
    ("expression", "needle"),
    [
        ("61 * * * *", "out of range"),
        ("* * *", "expected 5 fields"),
        ("* * * * * * * *", "expected 5 fields"),
        ("x y z a b", "'x y z a b'"),
        ("@reboot", "unknown alias"),
        ("", "non-empty string"),
        ("   ", "non-empty string"),
        ("0 12 * * funday", "funday"),
    ],
)
def test_bad_expressions_name_the_problem(expression: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        cron.parse(expression)
    assert needle in str(info.value)


@pytest.mark.parametrize("value", [None, 5, ["* * * * *"]])
def test_non_string_expressions_are_refused(value: object) -> None:
    with pytest.raises(ConfigurationError, match="non-empty string"):
        cron.parse(value)  # type: ignore[arg-type]


def test_impossible_dates_never_fire() -> None:
    assert cron.parse("0 0 30 2 *").next_after(at(2024, 1, 1)) is None


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "", "Europe/", "../../etc/passwd", 3])
def test_unknown_timezones_are_refused(name: object) -> None:
    with pytest.raises(ConfigurationError, match="timezone"):
        cron.parse("0 * * * *", name)  # type: ignore[arg-type]


def test_timezone_shifts_the_ticks() -> None:
    nine_berlin = cron.parse("0 9 * * *", "Europe/Berlin")
    nine_tokyo = cron.parse("0 9 * * *", "Asia/Tokyo")
    start = at(2024, 7, 1)
    assert nine_berlin.next_after(start) == at(2024, 7, 1, 7)  # CEST = UTC+2
    # JST = UTC+9: 09:00 JST is exactly `start`, so the next is a day later.
    assert nine_tokyo.next_after(start) == at(2024, 7, 2, 0)
    assert nine_berlin.timezone == "Europe/Berlin"


def test_fall_back_fixed_time_fires_once_wildcard_hours_keep_firing() -> None:
    start, end = at(2024, 10, 26, 20), at(2024, 10, 28, 4)
    daily = walk(cron.parse("30 2 * * *", "Europe/Berlin"), start, end)
    assert [local(t) for t in daily] == [
        "2024-10-27T02:30:00+02:00",  # the first 02:30 only; not again at 02:30+01:00
        "2024-10-28T02:30:00+01:00",
    ]
    hourly = walk(cron.parse("0 * * * *", "Europe/Berlin"), at(2024, 10, 26, 23, 30), end)
    assert hourly[:4] == [
        at(2024, 10, 27, 0),
        at(2024, 10, 27, 1),
        at(2024, 10, 27, 2),
        at(2024, 10, 27, 3),
    ]
    assert [local(t) for t in hourly[:2]] == [
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:00:00+01:00",
    ]
    # Every real hour exactly once: strictly one hour apart.
    assert all(b - a == 3600 for a, b in itertools.pairwise(hourly))
    # A fixed hour with every minute: the repeated hour's minutes are not run twice.
    minutes = walk(cron.parse("* 2 * * *", "Europe/Berlin"), start, end)
    assert len(minutes) == 120  # 60 on the 27th (first pass only) + 60 on the 28th
    assert len({local(t)[:16] for t in minutes}) == 120


def test_spring_forward_loses_no_run() -> None:
    start, end = at(2024, 3, 29, 23), at(2024, 4, 1, 12)
    daily = walk(cron.parse("30 2 * * *", "Europe/Berlin"), start, end)
    assert [local(t) for t in daily] == [
        "2024-03-30T02:30:00+01:00",
        "2024-03-31T03:00:00+02:00",  # 02:30 does not exist that day: first instant after
        "2024-04-01T02:30:00+02:00",
    ]
    hourly = walk(
        cron.parse("0 * * * *", "Europe/Berlin"), at(2024, 3, 30, 22, 30), at(2024, 3, 31, 4)
    )
    assert hourly == [at(2024, 3, 30, 23) + 3600 * i for i in range(6)]
    assert local(hourly[2]) == "2024-03-31T03:00:00+02:00"


def test_ticks_window_and_limit() -> None:
    spec = cron.parse("*/15 * * * *")
    since = at(2024, 1, 1, 10)
    assert spec.ticks(since, since + 3600, 100) == [since + 900 * i for i in range(5)]
    assert spec.ticks(since, since + 3600, 2) == [since, since + 900]
    assert spec.ticks(since, since - 1, 10) == []


@pytest.mark.parametrize(
    ("expression", "tz", "since", "until"),
    [
        ("* * * * * *", "UTC", at(2024, 1, 1), at(2024, 1, 1, 1, 7, 7) + 0.5),
        ("*/7 * * * *", "UTC", at(2024, 1, 1), at(2024, 1, 9, 13, 1)),
        ("30 2 * * *", "Europe/Berlin", at(2024, 9, 1, 0, 30), at(2024, 10, 27, 1, 45)),
        ("0 * * * *", "Europe/Berlin", at(2024, 10, 20), at(2024, 10, 27, 1, 30)),
        ("0 * * * *", "Europe/Berlin", at(2024, 3, 20), at(2024, 3, 31, 1, 0)),
    ],
)
def test_latest_matches_a_full_walk(expression: str, tz: str, since: float, until: float) -> None:
    spec = cron.parse(expression, tz)
    assert spec.next_after(since - 1) == since  # since is a tick
    expected = since
    t = spec.next_after(since)
    steps = 0
    while t is not None and t <= until and steps < 300_000:
        expected, t, steps = t, spec.next_after(t), steps + 1
    assert spec.latest(since, until) == expected
    assert spec.latest(since, since) == since


def test_import_nbjobs_does_not_load_croniter() -> None:
    """croniter stays behind nbjobs.cron and loads on first use (it may be replaced)."""
    code = "import sys, nbjobs; print('croniter' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
