"""A token may not act as a role that reaches other sessions or the whole cluster either
(README "Security model"): pg_signal_backend, pg_monitor and the like, pg_database_owner.

Revision ID: 0023_quiet_powers
Revises: 0022_pinned_values
"""

from pyfuncs.migrate import run_sql

revision = "0023_quiet_powers"
down_revision = "0022_pinned_values"


def upgrade() -> None:
    run_sql("0023_quiet_powers.up.sql")


def downgrade() -> None:
    run_sql("0023_quiet_powers.down.sql")
