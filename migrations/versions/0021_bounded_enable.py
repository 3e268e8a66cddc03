"""Enabling a table in wal mode and making the slot wait 10 s at most under the capture lock
(README "Capture from the WAL").

Revision ID: 0021_bounded_enable
Revises: 0020_slot_subtransaction
"""

from pyfuncs.migrate import run_sql

revision = "0021_bounded_enable"
down_revision = "0020_slot_subtransaction"


def upgrade() -> None:
    run_sql("0021_bounded_enable.up.sql")


def downgrade() -> None:
    run_sql("0021_bounded_enable.down.sql")
