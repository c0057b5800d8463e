"""Customers: create, read, replace, patch, delete, the links to their invoices, the bulk write and
the read-back pages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, delete, exists, func, insert, select, update
from sqlalchemy.orm import Session

from api import schemas
from api.core import etag
from api.core.merge_patch import apply_merge_patch
from api.crud import common
from api.errors import ConflictError, NotFoundError
from api.events import outbox
from api.models import Customer, Invoice


def customer_json(customer_id: str, country: str) -> bytes:
    """A customer as GET /customer/{customer_id} sends it (`CustomerPublic`); its ETag is of these bytes."""
    return orjson.dumps({"customer_id": customer_id, "country": country})


def _stored(session: Session, customer_id: str, *, for_update: bool = False) -> tuple[str, str] | None:
    """The stored (customer_id, country), or None; locked for the transaction with `for_update`."""
    stmt = select(Customer.customer_id, Customer.country).where(Customer.customer_id == customer_id)
    if for_update:
        stmt = stmt.with_for_update()
    # Core execution: a plain row, without the ORM's identity map (the hot GET).
    row = session.connection().execute(stmt).first()
    return (row[0], row[1]) if row is not None else None


# The resource GET's statement, built once: building a select per request (column comparisons, clause
# objects) cost about as much as running it on SQLite.
_CUSTOMER_BY_ID = select(Customer.customer_id, Customer.country).where(
    Customer.customer_id == bindparam("customer_id")
)


def read_customer_json(db: Session | Connection, *, customer_id: str) -> bytes | None:
    """The stored customer as JSON (`customer_json`), or None.

    The resource GET passes a plain pooled connection (`api.deps.reading_rows`): no ORM session to
    build per request (~55 µs on SQLite); the cache keeps these bytes.
    """
    row = common.connection_of(db).execute(_CUSTOMER_BY_ID, {"customer_id": customer_id}).first()
    return customer_json(row[0], row[1]) if row is not None else None


def create_customer(session: Session, *, customer: schemas.CustomerCreate) -> tuple[bytes, bool]:
    """Store `customer`; returns it as JSON and whether it was created (False: an identical replay).

    Raises ConflictError when the id is stored with another country.
    """
    with common.writing(session):
        stmt = common.insert_ignoring_duplicates(session, common.CUSTOMERS).returning(Customer.customer_id)
        created = session.execute(stmt, [customer.model_dump()]).first() is not None
        if created:
            outbox.record(session, [outbox.customer_created(customer.customer_id, customer.country)])
        stored = _stored(session, customer.customer_id)
    assert stored is not None  # inserted now, or there before
    if stored[1] != customer.country:
        raise ConflictError(
            f"customer {customer.customer_id} exists with country {stored[1]!r}, not {customer.country!r}"
        )
    return customer_json(*stored), created


def _check_preconditions(
    stored: tuple[str, str] | None, *, if_match: str | None, if_none_match: str | None = None
) -> None:
    if if_match is None and if_none_match is None:
        return
    current = etag.etag_of(customer_json(*stored)) if stored is not None else None
    etag.require_match(if_match, current)
    etag.require_none_match(if_none_match, current)


def replace_customer(
    session: Session,
    *,
    customer_id: str,
    customer: schemas.CustomerReplace,
    if_match: str | None = None,
    if_none_match: str | None = None,
) -> tuple[bytes, bool]:
    """PUT: store the customer as given, creating it when missing; returns it as JSON and whether it was
    created. A change emits `customer.updated`, a creation `customer.created`; an identical PUT changes
    and emits nothing."""
    common.require_path_identifier("customer_id", customer.customer_id, customer_id)
    with common.writing(session):
        stored = _stored(session, customer_id, for_update=True)
        _check_preconditions(stored, if_match=if_match, if_none_match=if_none_match)
        if stored is None:
            session.execute(
                insert(common.CUSTOMERS), [{"customer_id": customer_id, "country": customer.country}]
            )
            outbox.record(session, [outbox.customer_created(customer_id, customer.country)])
        elif stored[1] != customer.country:
            _update_country(session, customer_id, customer.country, kind=outbox.REPLACED)
    return customer_json(customer_id, customer.country), stored is None


def _update_country(session: Session, customer_id: str, country: str, *, kind: str) -> None:
    session.execute(update(Customer).where(Customer.customer_id == customer_id).values(country=country))
    outbox.record(session, [outbox.customer_updated(customer_id, country, kind=kind)])


def patch_customer(session: Session, *, customer_id: str, patch: Any, if_match: str | None = None) -> bytes:
    """PATCH: merge `patch` (RFC 7396) into the stored customer; returns it as JSON.

    The patch applies to the customer's members other than its id, which the path names (a patch
    setting `customer_id` to another id is refused). The result must be a valid customer (else
    InvalidBodyError naming the field); a change emits `customer.updated`.
    """
    with common.writing(session):
        stored = _stored(session, customer_id, for_update=True)
        if stored is None:
            raise NotFoundError(f"customer {customer_id} not found")
        merged = apply_merge_patch({"country": stored[1]}, patch)
        # The body is checked first: a bad patch is 422 whatever its If-Match.
        customer = common.validate_body(schemas.CustomerReplace, merged)
        common.require_path_identifier("customer_id", customer.customer_id, customer_id)
        _check_preconditions(stored, if_match=if_match)
        if customer.country != stored[1]:
            _update_country(session, customer_id, customer.country, kind=outbox.PATCHED)
    return customer_json(customer_id, customer.country)


#: How many of a customer's invoices a refused DELETE lists.
LISTED_INVOICES = 20


def delete_customer(session: Session, *, customer_id: str, if_match: str | None = None) -> None:
    """DELETE: remove a customer without invoices and emit `customer.deleted`.

    A customer with invoices is a ConflictError naming the first `LISTED_INVOICES` of them and their
    count: its invoices would lose their customer, so they are deleted (or moved) first.
    """
    with common.writing(session):
        stored = _stored(session, customer_id, for_update=True)
        if stored is None:
            raise NotFoundError(f"customer {customer_id} not found")
        _check_preconditions(stored, if_match=if_match)
        of_customer = Invoice.customer_id == customer_id
        count = session.scalar(select(func.count()).select_from(Invoice).where(of_customer)) or 0
        if count:
            listed = list(
                session.scalars(
                    select(Invoice.invoice_no)
                    .where(of_customer)
                    .order_by(Invoice.invoice_day, Invoice.invoice_no)
                    .limit(LISTED_INVOICES)
                )
            )
            more = ", ..." if count > len(listed) else ""
            raise ConflictError(
                f"customer {customer_id} has {count} invoice(s): {', '.join(listed)}{more}; "
                "delete them first",
                invoice_nos=listed,
                invoice_count=count,
            )
        session.execute(delete(Customer).where(Customer.customer_id == customer_id))
        outbox.record(session, [outbox.customer_deleted(customer_id, stored[1])])


def customer_invoice_links(session: Session, *, customer_id: str) -> dict[str, str]:
    """`{"id_<invoice_no>": "/invoice/<invoice_no>"}` for the customer's invoices, oldest first."""
    if _stored(session, customer_id) is None:
        raise NotFoundError(f"customer {customer_id} not found")
    invoice_nos = session.scalars(
        select(Invoice.invoice_no)
        .where(Invoice.customer_id == customer_id)
        .order_by(Invoice.invoice_day, Invoice.invoice_no)
    )
    return {f"id_{invoice_no}": f"/invoice/{invoice_no}" for invoice_no in invoice_nos}


def bulk_create_customers(
    session: Session, *, customers: Sequence[schemas.CustomerCreate]
) -> schemas.BulkCustomersResult:
    """Store the customers not stored yet; existing ones stay as they are.

    A customer keeps the first country posted: an id stored (or repeated in the request) with another
    country is listed in `conflicts`, which is not an error.
    """
    countries: dict[str, str] = {}
    conflicts: set[str] = set()
    for customer in customers:
        first = countries.setdefault(customer.customer_id, customer.country)
        if first != customer.country:
            conflicts.add(customer.customer_id)

    with common.writing(session):
        stored = _stored_countries(session, list(countries))
        new_rows = [
            {"customer_id": customer_id, "country": country}
            for customer_id, country in sorted(countries.items())
            if customer_id not in stored
        ]
        inserted: set[str] = set()
        if new_rows:
            stmt = common.insert_ignoring_duplicates(session, common.CUSTOMERS).returning(
                Customer.customer_id
            )
            inserted = set(session.scalars(stmt, new_rows))
            outbox.record(
                session,
                [
                    outbox.customer_created(row["customer_id"], row["country"])
                    for row in new_rows
                    if row["customer_id"] in inserted
                ],
            )
            # Another request stored some of them in the meantime: read what it stored.
            raced = [row["customer_id"] for row in new_rows if row["customer_id"] not in inserted]
            stored.update(_stored_countries(session, raced))

    for customer_id, country in countries.items():
        if customer_id in stored and stored[customer_id] != country:
            conflicts.add(customer_id)
    return schemas.BulkCustomersResult(
        created=len(inserted), existing=len(countries) - len(inserted), conflicts=sorted(conflicts)
    )


def _stored_countries(session: Session, customer_ids: Sequence[str]) -> dict[str, str]:
    return common.stored_values(session, Customer.customer_id, Customer.country, customer_ids)


def read_customers_page(
    session: Session, *, start: dt.date | None, end: dt.date | None, limit: int, cursor: str | None
) -> schemas.CustomerPage:
    """Customers with an invoice whose day is in [start, end], ordered by customer_id, one page."""
    has_invoice = select(Invoice.invoice_no).where(
        Invoice.customer_id == Customer.customer_id, *common.invoice_days(start, end)
    )
    stmt = select(Customer.customer_id, Customer.country).where(exists(has_invoice))
    if cursor is not None:
        # The cursor is the last customer id of the previous page (any customer id is a position).
        stmt = stmt.where(Customer.customer_id > cursor)
    rows = session.execute(stmt.order_by(Customer.customer_id).limit(limit + 1)).all()
    next_cursor = rows[limit - 1].customer_id if len(rows) > limit else None
    return schemas.CustomerPage.model_validate(
        {
            "items": [{"customer_id": row.customer_id, "country": row.country} for row in rows[:limit]],
            "next_cursor": next_cursor,
        }
    )
