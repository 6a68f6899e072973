"""Workflows as users hold them: what ``@app.workflow`` returns.

A :class:`Workflow` is a registered :class:`~nbjobs.runtime.registry.Definition` that can
``submit`` (queue a run), ``run`` (run durably here) and ``spec`` (describe a fan-out
child); ``wf.options(...)`` binds per-submission options.  Every call goes straight to
the engine of the App that registered it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .group import JobGroup
from .handle import JobHandle
from .options import Options, Spec
from .runtime.registry import Definition

if TYPE_CHECKING:
    from .runtime.engine import Engine
    from .runtime.notebook_run import NotebookRunner


class _Submitter:
    """What ``Workflow`` and ``wf.options(...)`` share: submit, run and spec."""

    workflow: Workflow
    _options: Options

    def submit(self, *args: Any, **kwargs: Any) -> JobHandle:
        """Queue a run; returns its :class:`~nbjobs.JobHandle` at once."""
        engine = self.workflow.engine
        return JobHandle(engine, engine.submit(self.workflow, args, kwargs, self._options))

    async def submit_async(self, *args: Any, **kwargs: Any) -> JobHandle:
        """``submit`` for async code: the database write runs off the event loop."""
        return await asyncio.to_thread(self.submit, *args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run durably in the calling thread and return the result (raises JobFailed)."""
        return self.workflow.engine.run(self.workflow, args, kwargs, self._options)

    def spec(self, *args: Any, **kwargs: Any) -> Spec:
        """Describe a run for ``cs.fan_out`` or ``app.submit_many`` (nothing is queued yet)."""
        return Spec(self.workflow.name, args, kwargs, self._options)

    def map(
        self,
        items: Iterable[Any],
        *,
        label: str | None = None,
        key: Callable[[Any], str] | None = None,
        **options: Any,
    ) -> JobGroup:
        """Queue one job per item (the item is its single argument), all in one
        transaction, and return their :class:`~nbjobs.JobGroup`.

        ``options`` apply to every job (``priority``, ``queue``, ``retries``...);
        ``key``, if given, is a function of the item that returns the job's idempotency
        key (an item whose key a job holds already is that job).  ``label`` names the
        group (the workflow's name by default).  A bad item (say, one that cannot be
        stored) raises, naming its index, and nothing is queued.
        """
        if key is not None and not callable(key):
            raise ConfigurationError(
                f"map: key= is a function of the item that returns its key (one key for "
                f"every job would make them one job), got {key!r}"
            )
        opts = self._options.merged(Options.build(**options)) if options else self._options
        name = self.workflow.name
        specs = []
        for index, item in enumerate(items):
            one = opts
            if key is not None:
                try:
                    one = opts.merged(Options.build(key=key(item)))
                except ConfigurationError as exc:
                    raise ConfigurationError(
                        f"item {index}: {exc}; nothing was submitted"
                    ) from None
            try:
                args, kwargs = self.workflow.call_of(item)
            except ConfigurationError as exc:
                raise ConfigurationError(f"item {index}: {exc}; nothing was submitted") from None
            specs.append(Spec(name, args, kwargs, one))
        engine = self.workflow.engine
        group_id = engine.submit_group(specs, name if label is None else label, noun="item")
        return JobGroup(engine, group_id)


class Workflow(_Submitter, Definition):
    """A registered workflow: ``submit``, ``options(...)``, ``spec`` and ``run``."""

    def __init__(
        self, engine: Engine, fn: Callable[..., Any], name: str, defaults: Options, **policy: Any
    ) -> None:
        Definition.__init__(self, fn, name, defaults, **policy)
        self.engine = engine
        self.workflow = self
        self._options = Options()
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def call_of(self, item: Any) -> tuple[tuple, dict]:
        """The arguments of the job ``map`` makes of ``item``: the item itself."""
        return (item,), {}

    def options(self, **options: Any) -> BoundWorkflow:
        """This workflow with options for one submission (priority, queue, delay, key...).

        ``run_at`` is a timezone-aware datetime or epoch seconds (a naive datetime is
        refused); numbers must be finite; a queue name has no comma.
        """
        return BoundWorkflow(self, Options.build(**options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"workflow {self.name!r} is not called directly: use {self.name}.submit(...) to "
            f"queue it or {self.name}.run(...) to run it durably here"
        )

    def __repr__(self) -> str:
        kind = "async workflow" if self.is_async else "workflow"
        return f"<nbjobs {kind} {self.name!r}>"


class BoundWorkflow(_Submitter):
    """A workflow with per-submission options; from ``wf.options(...)``."""

    def __init__(self, workflow: Workflow, options: Options) -> None:
        self.workflow = workflow
        self._options = options

    def options(self, **options: Any) -> BoundWorkflow:
        return BoundWorkflow(self.workflow, self._options.merged(Options.build(**options)))


class NotebookWorkflow(Workflow):
    """A notebook registered as a workflow (``app.notebook``): ``submit(**parameters)``,
    ``map([{...}, ...])``, ``options(...)``, ``run(**parameters)`` and schedules, as for
    any workflow.  Its code fingerprint is the notebook's (cells and kernel)."""

    def __init__(
        self, engine: Engine, runner: NotebookRunner, name: str, defaults: Options
    ) -> None:
        super().__init__(engine, runner, name, defaults)
        self.runner = runner
        self.path = runner.source.path
        self.fingerprint = runner.source.load().fingerprint

    @property
    def parameters(self) -> dict[str, str]:
        """Parameter name -> the source of its default, from the cell tagged ``parameters``."""
        return dict(self.runner.source.load().parameters)

    def check_arguments(self, args: tuple, kwargs: dict) -> None:
        parsed = self.runner.source.load()
        self.runner.source.check_parameters(args, kwargs, parsed)
        self.fingerprint = parsed.fingerprint  # the notebook as it is now

    def call_of(self, item: Any) -> tuple[tuple, dict]:
        """A notebook's ``map`` item is a dict of its parameters."""
        if not isinstance(item, Mapping):
            raise ConfigurationError(
                f"a notebook's map items are dicts of parameters ({{'day': ...}}), got {item!r}"
            )
        return (), dict(item)

    def __repr__(self) -> str:
        return f"<nbjobs notebook workflow {self.name!r} ({self.path})>"
