"""Capture from the WAL: a heartbeat, so that the slot follows the WAL of other databases while
this one is quiet (README "Realtime: how changes are captured").

Revision ID: 0011_wal_heartbeat
Revises: 0010_wal_safety
"""

from pyfuncs.migrate import run_sql

revision = "0011_wal_heartbeat"
down_revision = "0010_wal_safety"


def upgrade() -> None:
    run_sql("0011_wal_heartbeat.up.sql")


def downgrade() -> None:
    run_sql("0011_wal_heartbeat.down.sql")
