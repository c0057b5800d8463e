"""The database tables as SQLAlchemy 2 models; Alembic (`api/migrations`) owns the schema."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

# Column sizes: the contract's field limits, which the request schemas and the job's validation use too.
from retail_contract.limits import (
    CONTENT_HASH_LENGTH,
    COUNTRY_LENGTH,
    CUSTOMER_ID_LENGTH,
    DESCRIPTION_LENGTH,
    INVOICE_NO_LENGTH,
    PRICE_PRECISION,
    PRICE_SCALE,
    STOCK_CODE_LENGTH,
)

_THOUSANDTHS = 10**PRICE_SCALE


class Money(TypeDecorator[Decimal]):
    """`Numeric(12, 3)`, exact on every dialect.

    SQLite has no decimal type and would store a float, so there the value is an integer count of
    thousandths: exact, and MIN/MAX/ORDER BY still work on it.
    """

    impl = Numeric(PRICE_PRECISION, PRICE_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """BIGINT thousandths on SQLite, NUMERIC(12, 3) elsewhere."""
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(PRICE_PRECISION, PRICE_SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        """Decimal to thousandths on SQLite; refuse what would lose digits."""
        if value is None or dialect.name != "sqlite":
            return value
        thousandths = Decimal(value).scaleb(PRICE_SCALE)
        if thousandths != thousandths.to_integral_value():
            raise ValueError(f"{value} has more than {PRICE_SCALE} decimal places")
        return int(thousandths)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        """Thousandths back to a Decimal with three places."""
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-PRICE_SCALE)
        return Decimal(value)


class Base(DeclarativeBase):
    """Declarative base with named constraints, so migrations can refer to them."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
        }
    )


class Customer(Base):
    """A customer and the first country posted for it."""

    __tablename__ = "customers"

    customer_id: Mapped[str] = mapped_column(String(CUSTOMER_ID_LENGTH), primary_key=True)
    country: Mapped[str] = mapped_column(String(COUNTRY_LENGTH))


class Invoice(Base):
    """An invoice header; its lines are in `invoice_lines`."""

    __tablename__ = "invoices"

    invoice_no: Mapped[str] = mapped_column(String(INVOICE_NO_LENGTH), primary_key=True)
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customers.customer_id"))
    invoice_date: Mapped[dt.datetime]
    invoice_day: Mapped[dt.date]
    country: Mapped[str] = mapped_column(String(COUNTRY_LENGTH))
    #: sha256 of the canonical invoice and its lines: a replay is compared without reading the lines.
    content_hash: Mapped[str] = mapped_column(String(CONTENT_HASH_LENGTH))

    __table_args__ = (
        # Read-back pages are keyset-ordered on (invoice_day, invoice_no).
        Index("ix_invoices_invoice_day_invoice_no", "invoice_day", "invoice_no"),
        # A customer's invoices, and "customers with an invoice in the range".
        Index("ix_invoices_customer_id_invoice_day", "customer_id", "invoice_day"),
    )


class InvoiceLine(Base):
    """One line of an invoice, identified by its 1-based position `line_no`."""

    __tablename__ = "invoice_lines"

    invoice_no: Mapped[str] = mapped_column(
        ForeignKey("invoices.invoice_no", ondelete="CASCADE"), primary_key=True
    )
    line_no: Mapped[int] = mapped_column(primary_key=True)
    stock_code: Mapped[str] = mapped_column(String(STOCK_CODE_LENGTH), index=True)
    description: Mapped[str | None] = mapped_column(String(DESCRIPTION_LENGTH))
    quantity: Mapped[int] = mapped_column(BigInteger)
    unit_price: Mapped[Decimal] = mapped_column(Money)
    invoice_date: Mapped[dt.datetime]


class OutboxEvent(Base):
    """A domain event written in the transaction of the change; the relay publishes it to RabbitMQ."""

    __tablename__ = "outbox_events"

    #: Publication order. BIGINT on PostgreSQL; on SQLite an INTEGER primary key is the rowid.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(64))
    #: The whole event (envelope and data) as JSON text: published byte for byte.
    payload: Mapped[str] = mapped_column(Text)
    #: Naive UTC, like `published_at`.
    created_at: Mapped[dt.datetime]
    published_at: Mapped[dt.datetime | None]

    __table_args__ = (
        # The relay's queue: only the unpublished rows, in order.
        Index(
            "ix_outbox_events_unpublished",
            "seq",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
        # Retention deletes published rows by age.
        Index("ix_outbox_events_published_at", "published_at"),
    )


class Change(Base):
    """One committed change of a customer, an invoice or a line (the change feed, api/events/feed.py).

    Written in the transaction of the change, next to its outbox event, with no `position`; the stamper
    gives positions to committed rows only, one serialized transaction at a time, so positions follow
    commit order and a reader never sees a position before all smaller ones.
    """

    __tablename__ = "change_feed"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    position: Mapped[int | None] = mapped_column(BigInteger)
    #: Naive UTC: when the stamper saw the change committed (at or shortly after the commit).
    stamped_at: Mapped[dt.datetime | None]
    #: The outbox event of the same change (`outbox_events.event_id`).
    event_id: Mapped[str] = mapped_column(String(36))
    #: created, replaced, patched or deleted.
    kind: Mapped[str] = mapped_column(String(16))
    #: customer, invoice or line.
    resource: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(64))
    invoice_day: Mapped[dt.date | None]
    #: The invoice's day before the change, when the change moved it to another day.
    previous_invoice_day: Mapped[dt.date | None]
    #: The resource after the change as JSON text (what its GET answers); NULL for a deletion.
    content: Mapped[str | None] = mapped_column(Text)
    #: Naive UTC, when the writer recorded it (not an order: transactions commit in another order).
    created_at: Mapped[dt.datetime]

    __table_args__ = (
        Index("ix_change_feed_position", "position", unique=True),
        Index(
            "ix_change_feed_unstamped",
            "id",
            postgresql_where=text("position IS NULL"),
            sqlite_where=text("position IS NULL"),
        ),
        Index(
            "ix_change_feed_deleted",
            "resource",
            "resource_id",
            postgresql_where=text("kind = 'deleted'"),
            sqlite_where=text("kind = 'deleted'"),
        ),
    )


class ChangeFeedState(Base):
    """The feed's one row of state: the last position given out and the last one purged."""

    __tablename__ = "change_feed_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_position: Mapped[int] = mapped_column(BigInteger)
    purged_through: Mapped[int] = mapped_column(BigInteger)


# --- Credentials of the service's clients (api/auth): API keys and OAuth2 clients, never their secrets.

CREDENTIAL_NAME_LENGTH = 64
SCOPES_LENGTH = 64
API_KEY_PREFIX_LENGTH = 12
SHA256_HEX_LENGTH = 64
CLIENT_ID_LENGTH = 32
PASSWORD_HASH_LENGTH = 255

#: Names are unique among the credentials in use; a revoked one keeps its row (and frees its name).
_ACTIVE = text("revoked_at IS NULL")


class ApiKey(Base):
    """An API key `rk_<prefix>_<secret>`: found by its public prefix, checked by the SHA-256 of the key."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(CREDENTIAL_NAME_LENGTH))
    prefix: Mapped[str] = mapped_column(String(API_KEY_PREFIX_LENGTH), unique=True)
    #: Hex SHA-256 of the whole key: the key is random and long, so a fast hash is safe to store.
    digest: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH))
    #: Space-separated, as in OAuth2: `read`, `write`, `admin`.
    scopes: Mapped[str] = mapped_column(String(SCOPES_LENGTH))
    #: Naive UTC, like every timestamp of these tables.
    created_at: Mapped[dt.datetime]
    rotated_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]

    __table_args__ = (
        Index(
            "ix_api_keys_active_name",
            "name",
            unique=True,
            postgresql_where=_ACTIVE,
            sqlite_where=_ACTIVE,
        ),
    )


class OAuthClient(Base):
    """An OAuth2 client of the client-credentials grant; its secret is stored as an Argon2 hash."""

    __tablename__ = "oauth_clients"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(CREDENTIAL_NAME_LENGTH))
    client_id: Mapped[str] = mapped_column(String(CLIENT_ID_LENGTH), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(PASSWORD_HASH_LENGTH))
    scopes: Mapped[str] = mapped_column(String(SCOPES_LENGTH))
    #: Counts rotations; a token carries the generation it was issued in, so rotating ends older tokens.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime]
    rotated_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]

    __table_args__ = (
        Index(
            "ix_oauth_clients_active_name",
            "name",
            unique=True,
            postgresql_where=_ACTIVE,
            sqlite_where=_ACTIVE,
        ),
    )
