"""Durable waits: timers, signals and fan-out/fan-in (suspend without holding a slot).

Each wait is a checkpoint.  The first time a run reaches it, the wait is recorded and
the job parked as ``waiting`` in one transaction, and the run stops by raising the
internal ``_Suspend`` (the worker slot is free at once).  When the timer is due, the
signal arrives or the fan-in is decided, the job is queued again and *replayed*: its
finished steps return their stored values, and the wait now returns what it waited for.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigurationError,
    DuplicateCheckpoint,
    FanOutError,
    SerializationError,
    SignalTimeout,
    _Cancelled,
    _LeaseLost,
    _Suspend,
)
from .store.waits import CANCELLED, LOST, SUSPENDED, TIMEOUT, WaitResult
from .strategies import FailFast, Outcome, Strategy, strategy_from_detail
from .validation import check_name as _check_name
from .validation import check_number
from .workflow import Spec

if TYPE_CHECKING:
    from sqlalchemy.engine import Row

    from .app import App
    from .execution import Execution
    from .workflow import CallState


class Waits:
    """The waiting half of the durable-execution model."""

    def __init__(self, app: App) -> None:
        self.app = app

    # -- shared ------------------------------------------------------------------------
    def _begin(self, x: Execution, cs: CallState, name: str, what: str) -> Row | None:
        """Claim ``name`` for this run and return its stored checkpoint, if any."""
        _check_name(what, name)
        if name in cs._seen:
            raise DuplicateCheckpoint(
                f"{what} {name!r} is used twice in one run of job {cs.job_id}; give each "
                "step, sleep and fan-out its own name"
            )
        cs._seen.add(name)
        x.check()
        x.flush_steps()  # the wait's own write adds to the job row's count of steps
        return x.stored.get(name)

    @staticmethod
    def _seq(x: Execution, stored: Row | None) -> int:
        if stored is not None:
            return stored.seq
        x._seq += 1
        return x._seq

    @staticmethod
    def _settle(x: Execution, result: WaitResult) -> WaitResult:
        """Turn a store answer into control flow: suspend, stop, or go on."""
        if result.state == SUSPENDED:
            raise _Suspend()
        if result.state == LOST:
            x.lost = True
            raise _LeaseLost()
        if result.state == CANCELLED:
            x.cancel_requested = True
            raise _Cancelled()
        return result

    @staticmethod
    def _detail(stored: Row | None) -> dict[str, Any]:
        return json.loads(stored.detail) if stored is not None and stored.detail else {}

    # -- timers ------------------------------------------------------------------------
    def sleep(self, x: Execution, cs: CallState, name: str, wake_at: float) -> None:
        stored = self._begin(x, cs, name, "sleep name")
        if stored is not None:
            if stored.done:
                return
            wake_at = self._detail(stored).get("wake_at", wake_at)  # the first run's time
        if not math.isfinite(wake_at):
            raise ConfigurationError(f"sleep {name!r}: the wake-up time must be finite")
        self._settle(
            x,
            self.app.store.begin_sleep(
                job_id=x.job.id,
                token=x.token,
                attempt=x.job.attempt,
                name=name,
                seq=self._seq(x, stored),
                wake_at=wake_at,
                exists_=stored is not None,
                code_fingerprint=x.workflow.fingerprint,
            ),
        )

    # -- signals -----------------------------------------------------------------------
    def wait_signal(self, x: Execution, cs: CallState, name: str, timeout: float | None) -> Any:
        _check_name("signal name", name)
        check_number("timeout", timeout, 0, optional=True)
        # The n-th wait for a name in a run is its own checkpoint (fixed by call order).
        waits: dict[str, int] = vars(cs).setdefault("_signal_waits", {})
        waits[name] = count = waits.get(name, 0) + 1
        checkpoint = f"signal:{name}" if count == 1 else f"signal:{name}#{count}"
        stored = self._begin(x, cs, checkpoint, "signal wait")
        if stored is not None and stored.done:
            if self._detail(stored).get("timed_out"):
                raise SignalTimeout(f"no signal {name!r} arrived within {timeout} s")
            return self.app.codec.loads(stored.value)
        if stored is not None:
            deadline = self._detail(stored).get("deadline")
        else:
            deadline = None if timeout is None else self.app.store.now() + timeout
        result = self._settle(
            x,
            self.app.store.take_signal(
                job_id=x.job.id,
                token=x.token,
                attempt=x.job.attempt,
                checkpoint=checkpoint,
                name=name,
                seq=self._seq(x, stored),
                deadline=deadline,
                exists_=stored is not None,
                code_fingerprint=x.workflow.fingerprint,
            ),
        )
        if result.state == TIMEOUT:
            raise SignalTimeout(f"no signal {name!r} arrived within {timeout} s")
        return self.app.codec.loads(result.value)

    def send_signal(self, job_id: str, name: str, payload: Any) -> None:
        _check_name("signal name", name)
        try:
            text = self.app.codec.dumps(payload)
        except SerializationError as exc:
            raise SerializationError(
                f"signal {name!r}: the payload cannot be stored: {exc}"
            ) from None
        self.app.store.send_signal(job_id, name, text)

    # -- fan-out -----------------------------------------------------------------------
    def fan_out(self, x: Execution, cs: CallState, name: str, specs: list, strategy: Any) -> list:
        strategy = FailFast() if strategy is None else strategy
        if not isinstance(strategy, Strategy):
            raise ConfigurationError(
                f"strategy must be FailFast(), CollectAll() or Threshold(n), got {strategy!r}"
            )
        specs = list(specs)
        for spec in specs:
            if not isinstance(spec, Spec):
                raise ConfigurationError(
                    f"fan_out takes workflow specs (child.spec(...)), got {spec!r}"
                )
        stored = self._begin(x, cs, name, "fan-out name")
        if stored is not None and stored.done:
            return self._outcomes(name, stored.value, self._detail(stored))
        detail = self._detail(stored) or dict(strategy.to_detail(), count=len(specs))
        if stored is None and not specs:
            return self._judge(name, [], strategy)
        children = None
        if stored is None:
            children = [self._child_fields(spec) for spec in specs]
        result = self._settle(
            x,
            self.app.store.begin_fanout(
                job_id=x.job.id,
                token=x.token,
                attempt=x.job.attempt,
                root_id=x.job.root_id,
                name=name,
                seq=self._seq(x, stored),
                detail=detail,
                children=children,
                code_fingerprint=x.workflow.fingerprint,
            ),
        )
        return self._outcomes(name, result.value, detail)

    def _child_fields(self, spec: Spec) -> dict[str, Any]:
        workflow = self.app.get_workflow(spec.workflow)
        fields = self.app._job_fields(workflow, spec.args, spec.kwargs, spec.options)
        fields.pop("key", None)  # children get deterministic keys from the store
        return fields

    def _outcomes(self, name: str, text: str | None, detail: dict[str, Any]) -> list[Outcome]:
        loads = self.app.codec.loads
        outcomes = [
            Outcome(
                status=o["status"],
                value=loads(o["result"]) if o["status"] == "succeeded" else None,
                error=o.get("error"),
                job_id=o.get("job_id"),
            )
            for o in json.loads(text or "[]")
        ]
        return self._judge(name, outcomes, strategy_from_detail(detail))

    @staticmethod
    def _judge(name: str, outcomes: list[Outcome], strategy: Strategy) -> list[Outcome]:
        if not strategy.failed(outcomes):
            return outcomes
        bad = [o for o in outcomes if not o.ok]
        first = next((o for o in bad if o.status == "failed"), bad[0] if bad else None)
        message = (
            f"fan-out {name!r} failed under {strategy!r}: {len(bad)} of {len(outcomes)} "
            "children did not succeed"
        )
        if first is not None:
            message += f" (first: {first.status}: {first.error})"
        raise FanOutError(message, outcomes)
