"""In 'wal' mode, values of domains over numbers and booleans as trigger mode gives them, and
a TRUNCATE of partitions only makes consumers resync (README "Realtime: how changes are
captured").

Revision ID: 0015_wal_domain_values
Revises: 0014_trigger_positions
"""

from pyfuncs.migrate import run_sql

revision = "0015_wal_domain_values"
down_revision = "0014_trigger_positions"


def upgrade() -> None:
    run_sql("0015_wal_domain_values.up.sql")


def downgrade() -> None:
    run_sql("0015_wal_domain_values.down.sql")
