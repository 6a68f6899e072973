"""The engine: what runs jobs, below the App and above the store.

Read top to bottom, a job's path is ``engine`` (submit, wait, cancel, this process's
worker) -> ``worker`` (claim, dispatch, heartbeat, reaper, schedules) -> ``execution``
(one attempt, its outcome recorded under the lease) -> ``callstate`` (the steps and
durable waits a workflow makes).  Every module here receives the small
:class:`~nbjobs.runtime.context.Runtime` context, never the App, and none imports
``nbjobs.app``.
"""
