"""The realtime gateway's audit trail.

Revision ID: 0003_gateway
Revises: 0002_realtime
"""

from pyfuncs.migrate import run_sql

revision = "0003_gateway"
down_revision = "0002_realtime"


def upgrade() -> None:
    run_sql("0003_gateway.up.sql")


def downgrade() -> None:
    run_sql("0003_gateway.down.sql")
