"""The streaming consumer's fixed cost per write: the functions realtime_wal_write calls keep
their plans (README "Realtime: how changes are captured").

Revision ID: 0013_wal_write_plans
Revises: 0012_wal_stream
"""

from pyfuncs.migrate import run_sql

revision = "0013_wal_write_plans"
down_revision = "0012_wal_stream"


def upgrade() -> None:
    run_sql("0013_wal_write_plans.up.sql")


def downgrade() -> None:
    run_sql("0013_wal_write_plans.down.sql")
