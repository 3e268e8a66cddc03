"""Capture from the WAL by streaming: realtime_wal_write applies what a consumer streaming the
slot over the replication protocol received, and reading or dropping the slot ends a stream
that holds it (README "Realtime: how changes are captured").

Revision ID: 0012_wal_stream
Revises: 0011_wal_hold_ups
"""

from pyfuncs.migrate import run_sql

revision = "0012_wal_stream"
down_revision = "0011_wal_hold_ups"


def upgrade() -> None:
    run_sql("0012_wal_stream.up.sql")


def downgrade() -> None:
    run_sql("0012_wal_stream.down.sql")
