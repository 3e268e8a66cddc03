"""In 'trigger' mode, a TRUNCATE of a partition of an enabled table makes consumers resync
(README "Realtime: how changes are captured").

Revision ID: 0016_partition_truncate
Revises: 0015_wal_domain_values
"""

from pyfuncs.migrate import run_sql

revision = "0016_partition_truncate"
down_revision = "0015_wal_domain_values"


def upgrade() -> None:
    run_sql("0016_partition_truncate.up.sql")


def downgrade() -> None:
    run_sql("0016_partition_truncate.down.sql")
