"""Trigger mode without a serialised commit step: the consumer gives committed transactions
their positions (README "Realtime: the change feed").

Revision ID: 0014_trigger_positions
Revises: 0013_wal_write_plans
"""

from pyfuncs.migrate import run_sql

revision = "0014_trigger_positions"
down_revision = "0013_wal_write_plans"


def upgrade() -> None:
    run_sql("0014_trigger_positions.up.sql")


def downgrade() -> None:
    run_sql("0014_trigger_positions.down.sql")
