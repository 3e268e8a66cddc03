"""Realtime change capture: commit-ordered change log, enable/disable, pruning.

Revision ID: 0002_realtime
Revises: 0001_core
"""

from pyfuncs.migrate import run_sql

revision = "0002_realtime"
down_revision = "0001_core"


def upgrade() -> None:
    run_sql("0002_realtime.up.sql")


def downgrade() -> None:
    run_sql("0002_realtime.down.sql")
