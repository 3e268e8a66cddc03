"""The realtime slot created in a subtransaction: PostgreSQL 15 failed some creations with an
internal error while another database created its slot (README "Capture from the WAL").

Revision ID: 0020_slot_subtransaction
Revises: 0019_code_uncompressed
"""

from pyfuncs.migrate import run_sql

revision = "0020_slot_subtransaction"
down_revision = "0019_code_uncompressed"


def upgrade() -> None:
    run_sql("0020_slot_subtransaction.up.sql")


def downgrade() -> None:
    run_sql("0020_slot_subtransaction.down.sql")
