"""Hardening after a third round of attacks: set_identity refuses members of roles that
are or can act as a superuser.

Revision ID: 0008_rt3
Revises: 0007_first_call
"""

from pyfuncs.migrate import run_sql

revision = "0008_rt3"
down_revision = "0007_first_call"


def upgrade() -> None:
    run_sql("0008_rt3.up.sql")


def downgrade() -> None:
    run_sql("0008_rt3.down.sql")
