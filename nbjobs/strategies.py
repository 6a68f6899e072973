"""Fan-in strategies and the outcome of one fan-out child.

A strategy answers two questions from counts alone, so the store can decide a fan-in
inside the transaction that makes a child terminal: *is the fan-in decided now?*  and,
once decided, *did the fan-out fail?*  Strategies are stored with the fan-out record
(:meth:`Strategy.to_detail`), so a replay decides exactly as the first run did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .validation import check_number


@dataclass(frozen=True)
class Outcome:
    """What one child of a fan-out came to, in input order.

    ``status`` is ``succeeded``, ``failed`` or ``cancelled``; ``value`` is the child's
    result when it succeeded; ``error`` is the child's error text otherwise.
    """

    status: str
    value: Any = None
    error: str | None = None
    job_id: str | None = None

    @property
    def ok(self) -> bool:
        """True when the child succeeded (``value`` holds its result)."""
        return self.status == "succeeded"


class Strategy:
    """Decides a fan-in from how many children succeeded and how many did not."""

    kind = "strategy"

    def decided(self, total: int, succeeded: int, not_ok: int) -> bool:
        """True when the fan-in is decided (children still running are then cancelled)."""
        return succeeded + not_ok >= total

    def could_decide(self, total: int, succeeded: int, not_ok: int, running: int) -> bool:
        """True when the ``running`` children, finishing somehow, could decide the fan-in.

        A child's fan-in check cannot see siblings whose terminal write is not committed
        yet; it takes the parent's lock only when they could matter.  ``decided`` is
        monotone in both counts, so the two extremes cover every split.
        """
        return self.decided(total, succeeded + running, not_ok) or self.decided(
            total, succeeded, not_ok + running
        )

    def could_decide_pending(self, any_not_ok: bool) -> bool | None:
        """``could_decide`` while some children are still queued or waiting (and so
        ``decided`` while some have not ended), from whether any child failed or was
        cancelled; ``None`` when only counts can tell.

        A child's fan-in check asks this first: it costs two index probes where
        counting the siblings costs a scan of all of them, and every child of a
        10,000-child fan-out checks once (counting each time is O(n^2) in all).
        This default does not know and says so.
        """
        return None

    def failed(self, outcomes: Sequence[Outcome]) -> bool:
        """True when the decided fan-out raises :class:`~nbjobs.FanOutError`."""
        return False

    def to_detail(self) -> dict[str, Any]:
        return {"strategy": self.kind}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.to_detail() == self.to_detail()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_detail().items())))


class FailFast(Strategy):
    """The first child failure cancels the unfinished siblings and raises ``FanOutError``."""

    kind = "fail_fast"

    def decided(self, total: int, succeeded: int, not_ok: int) -> bool:
        return not_ok > 0 or succeeded >= total

    def could_decide(self, total: int, succeeded: int, not_ok: int, running: int) -> bool:
        # A failure decides alone, and the failing child's own check counts itself.
        return not_ok > 0 or succeeded + running >= total

    def could_decide_pending(self, any_not_ok: bool) -> bool | None:
        # With a child still queued, succeeded + running < total: only a failure decides.
        return any_not_ok

    def failed(self, outcomes: Sequence[Outcome]) -> bool:
        return any(not o.ok for o in outcomes)


class CollectAll(Strategy):
    """Wait for every child whatever happens; never raises for child failures."""

    kind = "collect_all"

    def could_decide_pending(self, any_not_ok: bool) -> bool | None:
        # Decided only once every child ended, and a queued one has not.
        return False


class Threshold(Strategy):
    """Succeed once ``n`` children succeeded (the rest are cancelled); fail once that is
    impossible."""

    kind = "threshold"

    def __init__(self, n: int) -> None:
        self.n = check_number("Threshold(n)", n, 1, integer=True)

    def decided(self, total: int, succeeded: int, not_ok: int) -> bool:
        return succeeded >= self.n or total - not_ok < self.n or succeeded + not_ok >= total

    def failed(self, outcomes: Sequence[Outcome]) -> bool:
        return sum(o.ok for o in outcomes) < self.n

    def to_detail(self) -> dict[str, Any]:
        return {"strategy": self.kind, "n": self.n}

    def __repr__(self) -> str:
        return f"Threshold({self.n})"


_KINDS: dict[str, type[Strategy]] = {c.kind: c for c in (FailFast, CollectAll, Threshold)}


def strategy_from_detail(detail: dict[str, Any]) -> Strategy:
    """The strategy stored with a fan-out record."""
    cls = _KINDS[detail.get("strategy", FailFast.kind)]
    return cls(detail["n"]) if cls is Threshold else cls()
