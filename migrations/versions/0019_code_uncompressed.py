"""Compiled code stored uncompressed: a new connection's first call reads it faster (README
"Benchmarks" (d)).

Revision ID: 0019_code_uncompressed
Revises: 0018_compiled_routines
"""

from pyfuncs.migrate import run_sql

revision = "0019_code_uncompressed"
down_revision = "0018_compiled_routines"


def upgrade() -> None:
    run_sql("0019_code_uncompressed.up.sql")


def downgrade() -> None:
    run_sql("0019_code_uncompressed.down.sql")
