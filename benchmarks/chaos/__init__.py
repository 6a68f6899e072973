"""The chaos harness: ``python -m benchmarks.chaos --url URL --seed N --duration S --workers K``.

Several real ``nbjobs worker benchmarks.chaos.app:app`` processes drain a seeded mixed
workload (multi-step sync and async workflows, nested fan-outs under every strategy,
durable timers, signals, a cron schedule, idempotency keys, retries, cancellations) while
a random worker is killed with SIGKILL every few seconds and restarted.  Afterwards the
harness checks invariants against the database and prints them as a table; the exit
status is 0 only when every invariant holds.  See docs/reliability.md.
"""
