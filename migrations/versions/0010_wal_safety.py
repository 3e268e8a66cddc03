"""Capture from the WAL made safe with writers and login roles one does not trust: only the
captured tables decoded and no messages, a transaction that cannot be captured skipped with
a resync, output settings pinned, renames noticed, the capture lock held for seconds at most
(README "Realtime: how changes are captured").

Revision ID: 0010_wal_safety
Revises: 0009_wal_capture
"""

from pyfuncs.migrate import run_sql

revision = "0010_wal_safety"
down_revision = "0009_wal_capture"


def upgrade() -> None:
    run_sql("0010_wal_safety.up.sql")


def downgrade() -> None:
    run_sql("0010_wal_safety.down.sql")
