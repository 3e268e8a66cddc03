"""Routine modules compiled ahead of their first call, by `pyfuncs deploy` and `pyfuncs install`,
and loaded by a backend whose runtime and Python are the ones they were compiled for (README
"How it works").

Revision ID: 0018_compiled_routines
Revises: 0017_wal_names
"""

from pyfuncs.migrate import run_sql

revision = "0018_compiled_routines"
down_revision = "0017_wal_names"


def upgrade() -> None:
    run_sql("0018_compiled_routines.up.sql")


def downgrade() -> None:
    run_sql("0018_compiled_routines.down.sql")
