"""The side-effect tables of :mod:`tests.apps.ledger_app`, importable without an App."""

from __future__ import annotations

import sqlalchemy as sa

#: Checkpointed steps per ledger job.
STEPS = 2

side = sa.MetaData()
ledger = sa.Table(
    "ledger",
    side,
    sa.Column("job_id", sa.String(40), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.UniqueConstraint("job_id", "step", name="uq_ledger_job_step"),
)
replays = sa.Table(
    "replays",
    side,
    sa.Column("job_id", sa.String(40), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)
