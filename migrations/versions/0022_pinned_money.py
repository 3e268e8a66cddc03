"""Money in the change log in the C locale, whatever a writer's lc_monetary (README
"Realtime: how changes are captured").

Revision ID: 0022_pinned_money
Revises: 0021_bounded_enable
"""

from pyfuncs.migrate import run_sql

revision = "0022_pinned_money"
down_revision = "0021_bounded_enable"


def upgrade() -> None:
    run_sql("0022_pinned_money.up.sql")


def downgrade() -> None:
    run_sql("0022_pinned_money.down.sql")
