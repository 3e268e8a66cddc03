"""Capture from the WAL, what a second red team found: partitions listed without locks, so a
writer's lock cannot hold every batch up; lock waits bounded; json numbers jsonb cannot hold
found in one pass; a heartbeat, so that the slot follows other databases' WAL while this
database is quiet (README "Realtime: how changes are captured").

Revision ID: 0011_wal_hold_ups
Revises: 0010_wal_safety
"""

from pyfuncs.migrate import run_sql

revision = "0011_wal_hold_ups"
down_revision = "0010_wal_safety"


def upgrade() -> None:
    run_sql("0011_wal_hold_ups.up.sql")


def downgrade() -> None:
    run_sql("0011_wal_hold_ups.down.sql")
