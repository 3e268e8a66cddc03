"""Realtime capture from the WAL through logical decoding, the trigger capture kept as the
fallback mode (README "Realtime: how changes are captured").

Revision ID: 0009_wal_capture
Revises: 0008_rt3
"""

from pyfuncs.migrate import run_sql

revision = "0009_wal_capture"
down_revision = "0008_rt3"


def upgrade() -> None:
    run_sql("0009_wal_capture.up.sql")


def downgrade() -> None:
    run_sql("0009_wal_capture.down.sql")
