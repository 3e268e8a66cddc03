"""A table dropped and another that takes its name while capture lags are not confused;
new partitions' names are noted as their DDL commits (README "Realtime: how changes are
captured").

Revision ID: 0017_wal_names
Revises: 0016_partition_truncate
"""

from pyfuncs.migrate import run_sql

revision = "0017_wal_names"
down_revision = "0016_partition_truncate"


def upgrade() -> None:
    run_sql("0017_wal_names.up.sql")


def downgrade() -> None:
    run_sql("0017_wal_names.down.sql")
