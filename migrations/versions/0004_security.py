"""The security boundary: definer functions checked and pinned, locks no other role can take,
JWT identities refused by the database when no token may name them, the gateway's position key.

Revision ID: 0004_security
Revises: 0003_gateway
"""

from pyfuncs.migrate import run_sql

revision = "0004_security"
down_revision = "0003_gateway"


def upgrade() -> None:
    run_sql("0004_security.up.sql")


def downgrade() -> None:
    run_sql("0004_security.down.sql")
