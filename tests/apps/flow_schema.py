"""The side table of :mod:`tests.apps.flow_app`, importable without an App."""

from __future__ import annotations

import sqlalchemy as sa

side = sa.MetaData()
flow_ledger = sa.Table(
    "flow_ledger",
    side,
    sa.Column("job_id", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("part", sa.String(40)),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("start", sa.Double, nullable=False),
    sa.Column("end", sa.Double, nullable=False),
)
