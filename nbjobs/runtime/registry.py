"""The workflows a process knows: their definitions and the names its workers claim.

A :class:`Definition` is what the engine needs of a workflow (the function, its name,
default options and code fingerprint); the user-facing :class:`~nbjobs.workflow.Workflow`
adds ``submit`` and ``run`` on top.  The :class:`Registry` maps names to definitions
and works out the names a worker claims: the registered ones, plus the bare
``qualname`` of a module-qualified name when no other workflow has it (jobs submitted
from a script's ``__main__``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError
from ..options import Options
from ..steps import Cache

log = logging.getLogger(__name__)


def fingerprint(fn: Callable[..., Any]) -> str:
    """A fingerprint of a function's code: its source, or its bytecode when none."""
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        source = repr((code.co_code, code.co_consts)) if code else repr(fn)
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def default_workflow_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` for a function of an importable module; the bare ``qualname``
    in a notebook or a script (``__main__``: a worker importing the script under its
    module name matches its jobs by the bare name, see :meth:`Registry.get`)."""
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        raise ConfigurationError(f"cannot name the workflow {func!r}: pass name=...")
    if getattr(func, "__name__", None) == "<lambda>":
        raise ConfigurationError(
            "a lambda workflow needs an explicit name (lambdas would all be '<lambda>'): "
            "app.workflow(lambda cs, x: ..., name='square')"
        )
    module = getattr(func, "__module__", None)
    if module in (None, "__main__", "__mp_main__") or module not in sys.modules:
        return qualname
    return f"{module}.{qualname}"


def check_call_state_parameter(name: str, func: Callable[..., Any]) -> None:
    """Refuse at decoration a function that cannot take the call state first."""
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return  # a builtin or an odd callable: let the run tell
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    if not parameters or parameters[0].kind not in positional:
        raise ConfigurationError(
            f"workflow {name!r} must take the call state as its first parameter, e.g. "
            f"def {getattr(func, '__name__', 'fn')}(cs, ...): it makes the durable steps "
            "(cs.checkpoint)"
        )


@dataclasses.dataclass(frozen=True)
class FlowLimits:
    """A workflow's fleet-wide limits (``@app.workflow(concurrency=, rate=,
    partition_concurrency=)``), written to the database by the workers that serve it."""

    concurrency: int | None = None
    rate: tuple[int, float] | None = None
    partition_concurrency: int | None = None


class Definition:
    """What the engine runs: a workflow function under a name, with default options.

    ``retry_on`` / ``give_up_on``: the exception classes a failed attempt is retried on
    (its job's ``retries`` allowing) and those that fail the job at once.  They are code,
    not stored with the job: the definition of the process running the attempt decides.
    """

    #: ``@app.workflow(cache=...)``: every step of the workflow may be reused across
    #: jobs (see :mod:`nbjobs.caching`); a step's own ``@nbjobs.step(cache=...)`` wins.
    cache: Cache | None = None
    #: Fleet-wide limits (none by default).
    flow: FlowLimits = FlowLimits()

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        defaults: Options,
        *,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        give_up_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.fn = fn
        self.retry_on = retry_on
        self.give_up_on = give_up_on
        self.name = name
        #: The bare qualname a module-qualified default name also answers to (jobs of a
        #: script's ``__main__`` and of older nbjobs), when no other workflow claims it.
        self.alias: str | None = None
        self.defaults = defaults
        self.is_async = inspect.iscoroutinefunction(fn)
        self.fingerprint = fingerprint(fn)

    @property
    def queue(self) -> str:
        return self.defaults.queue or "default"

    def check_arguments(self, args: tuple, kwargs: dict) -> None:
        """Refuse, at submit, arguments the workflow cannot take (a notebook's unknown
        parameters); a function's own signature is checked when it runs."""


def _definition(func: Callable[..., Any]) -> tuple[Any, Any]:
    """What makes two functions one definition: a re-run cell or a reloaded module
    defines a new function object with the same module and qualname."""
    return getattr(func, "__module__", None), getattr(func, "__qualname__", None)


def _describe(func: Callable[..., Any]) -> str:
    module, qualname = _definition(func)
    return f"{module}.{qualname}" if module else repr(func)


class Registry:
    """Workflow definitions by name; safe to read from worker threads while a cell
    registers another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, Definition] = {}
        #: The workflow names a worker claims: the registered names, and the bare
        #: qualname of a module-qualified one when no other workflow has it.
        self.claim_names: tuple[str, ...] = ()
        #: The bare qualnames among ``claim_names`` -> the registered name each stands
        #: for: a limit on a workflow holds its jobs stored under the alias too.
        self.aliases: dict[str, str] = {}

    def add(self, definition: Definition) -> Definition | None:
        """Register ``definition``; returns the one it replaces (the same function
        defined again: a re-run cell), or raises when another function has the name."""
        func, name = definition.fn, definition.name
        with self._lock:
            old = self._by_name.get(name)
            if old is not None and _definition(old.fn) != _definition(func):
                raise ConfigurationError(
                    f"workflow name {name!r} is taken by {_describe(old.fn)}; "
                    f"register {_describe(func)} under another name with name=..."
                )
            self._by_name[name] = definition
            self.claim_names = self._claimed()
            self.aliases = {
                d.alias: d.name
                for d in self._by_name.values()
                if d.alias is not None and d.alias in self.claim_names[len(self._by_name) :]
            }
        if old is not None and old.fingerprint != definition.fingerprint:
            log.info("workflow %r redefined; new claims use the new code", name)
        return old

    def _claimed(self) -> tuple[str, ...]:
        names = self._by_name
        aliases = [d.alias for d in names.values() if d.alias and d.alias not in names]
        unique = [a for a in aliases if aliases.count(a) == 1]
        return (*names, *unique)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._by_name)

    def definitions(self) -> list[Definition]:
        with self._lock:
            return list(self._by_name.values())

    def get(self, name: str) -> Definition:
        """The workflow registered as ``name``, or (for jobs submitted under the bare
        ``qualname``: from a script's ``__main__``, or by nbjobs before 0.x made default
        names module-qualified) the one workflow whose ``qualname`` that is."""
        with self._lock:
            found = self._by_name.get(name)
            if found is None and name in self.claim_names:
                found = next(d for d in self._by_name.values() if d.alias == name)
        if found is None:
            raise ConfigurationError(f"no workflow named {name!r} is registered")
        return found

    def find(self, name: str) -> Definition | None:
        """``get``, or None for a name not registered here."""
        try:
            return self.get(name)
        except ConfigurationError:
            return None

    def fingerprints(self) -> dict[str, str]:
        """Workflow name -> the fingerprint of the code registered under it."""
        return {d.name: d.fingerprint for d in self.definitions()}

    def queues(self) -> list[str]:
        """``default`` and the default queue of every registered workflow."""
        names = {d.queue for d in self.definitions()}
        return ["default", *sorted(names - {"default"})]
