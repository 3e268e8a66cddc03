"""Capture writes money in the C locale and identifiers unquoted, whatever a writer's
lc_monetary and quote_all_identifiers (README "Realtime: how changes are captured").

Revision ID: 0022_pinned_values
Revises: 0021_bounded_enable
"""

from pyfuncs.migrate import run_sql

revision = "0022_pinned_values"
down_revision = "0021_bounded_enable"


def upgrade() -> None:
    run_sql("0022_pinned_values.up.sql")


def downgrade() -> None:
    run_sql("0022_pinned_values.down.sql")
