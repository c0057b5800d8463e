"""Customers, invoices and invoice lines.

Revision ID: 0001
Revises:
Create Date: 2024-06-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Exact money on every dialect: NUMERIC(12, 3), or integer thousandths on SQLite (see api.models.Money).
MONEY = sa.Numeric(12, 3).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    """Create the three tables and their indexes."""
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.String(20), nullable=False),
        sa.Column("country", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name="pk_customers"),
    )
    op.create_table(
        "invoices",
        sa.Column("invoice_no", sa.String(20), nullable=False),
        sa.Column("customer_id", sa.String(20), nullable=True),
        sa.Column("invoice_date", sa.DateTime(), nullable=False),
        sa.Column("invoice_day", sa.Date(), nullable=False),
        sa.Column("country", sa.String(64), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.customer_id"], name="fk_invoices_customer_id_customers"
        ),
        sa.PrimaryKeyConstraint("invoice_no", name="pk_invoices"),
    )
    op.create_index("ix_invoices_invoice_day_invoice_no", "invoices", ["invoice_day", "invoice_no"])
    op.create_index("ix_invoices_customer_id_invoice_day", "invoices", ["customer_id", "invoice_day"])
    op.create_table(
        "invoice_lines",
        sa.Column("invoice_no", sa.String(20), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("stock_code", sa.String(32), nullable=False),
        sa.Column("description", sa.String(255), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("unit_price", MONEY, nullable=False),
        sa.Column("invoice_date", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_no"],
            ["invoices.invoice_no"],
            name="fk_invoice_lines_invoice_no_invoices",
            ondelete="CASCADE",
        ),
        # The primary key is the unique (invoice_no, line_no) index that replays rely on.
        sa.PrimaryKeyConstraint("invoice_no", "line_no", name="pk_invoice_lines"),
    )
    op.create_index("ix_invoice_lines_stock_code", "invoice_lines", ["stock_code"])


def downgrade() -> None:
    """Drop everything `upgrade` created."""
    op.drop_index("ix_invoice_lines_stock_code", table_name="invoice_lines")
    op.drop_table("invoice_lines")
    op.drop_index("ix_invoices_customer_id_invoice_day", table_name="invoices")
    op.drop_index("ix_invoices_invoice_day_invoice_no", table_name="invoices")
    op.drop_table("invoices")
    op.drop_table("customers")
