"""The change feed: every committed change of a customer, an invoice or a line, in commit order.

Writers add a `change_feed` row in the transaction of their change (`api.events.outbox.record`), with
no position. Positions are given after the commit by the **stamper** (`stamp`): one short transaction
at a time (PostgreSQL: `pg_advisory_xact_lock`; SQLite: `BEGIN IMMEDIATE`, its one write lock) that
numbers the rows it sees committed without a position, in insertion order, after the last position
given out, and commits.

Why a reader never skips a change (docs/feed.md): stamping transactions run one after another, and
each sees only committed rows. A reader that sees position N sees the commit of the stamp that gave
N, and every smaller position was given by that stamp or by one that committed before it began, so it
is visible too. A change still uncommitted has no position yet; it gets one, larger than every position
given out so far, from the first stamp after its commit: a cursor that moved past N can never have
passed it. An id or timestamp taken when a transaction writes (the bug of dlt #2269, Airbyte #9668,
Kafka Connect JDBC #172) lacks that property on PostgreSQL, where transactions commit in another order
than they write.

Every read of the feed (and of its head) stamps first, then reads in one snapshot.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, delete, func, select, text, update

from api.core.db import WRITE_OPTION
from api.errors import InvalidInputError
from api.events.outbox import utcnow
from api.models import Change, ChangeFeedState

#: Key of the PostgreSQL advisory lock that serialises stamping and retention ("feed").
FEED_LOCK_KEY = 0x6665_6564
#: Largest page of changes.
MAX_LIMIT = 5_000

_STATE = ChangeFeedState.id == 1
_ROW_COLUMNS = (
    Change.position,
    Change.stamped_at,
    Change.kind,
    Change.resource,
    Change.resource_id,
    Change.invoice_day,
    Change.previous_invoice_day,
    Change.event_id,
    Change.content,
)


def _writing(engine: Engine) -> Connection:
    """A connection whose transaction is a write (`BEGIN IMMEDIATE` on SQLite); at READ COMMITTED on
    PostgreSQL, so that each statement after the lock sees every commit made before it was taken."""
    connection = engine.connect().execution_options(**{WRITE_OPTION: True})
    if engine.dialect.name == "postgresql":
        connection = connection.execution_options(isolation_level="READ COMMITTED")
    return connection


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FEED_LOCK_KEY})


def stamp(engine: Engine, *, now: dt.datetime | None = None) -> int:
    """Give positions to the committed changes that have none; returns how many got one.

    A cheap read first: a feed read with nothing to stamp takes no lock (on SQLite it would otherwise
    wait for whatever writer holds the write lock).
    """
    with engine.connect() as connection:
        pending = connection.execute(select(Change.id).where(Change.position.is_(None)).limit(1)).first()
    if pending is None:
        return 0
    with _writing(engine) as connection, connection.begin():
        _lock(connection)
        # Read after the lock: the previous stamp's commit is visible from here on.
        last = connection.execute(select(ChangeFeedState.last_position).where(_STATE)).scalar_one()
        numbered = (
            select(Change.id, func.row_number().over(order_by=Change.id).label("rank"))
            .where(Change.position.is_(None))
            .subquery()
        )
        result = connection.execute(
            update(Change)
            .where(Change.id == numbered.c.id)
            .values(position=last + numbered.c.rank, stamped_at=now or utcnow())
        )
        count = int(result.rowcount or 0)
        if count:
            connection.execute(update(ChangeFeedState).where(_STATE).values(last_position=last + count))
    return count


def purge_stamped_before(engine: Engine, cutoff: dt.datetime) -> int:
    """Delete the changes stamped before `cutoff` (a prefix of positions: retention); returns how many.

    A cursor before the last position deleted has expired from then on (`read_changes` answers 410).
    """
    with _writing(engine) as connection, connection.begin():
        _lock(connection)
        boundary = connection.execute(
            select(func.max(Change.position)).where(Change.stamped_at < cutoff)
        ).scalar_one_or_none()
        if boundary is None:
            return 0
        result = connection.execute(delete(Change).where(Change.position <= boundary))
        connection.execute(
            update(ChangeFeedState)
            .where(_STATE, ChangeFeedState.purged_through < boundary)
            .values(purged_through=boundary)
        )
        return int(result.rowcount or 0)


def _reading(engine: Engine) -> Connection:
    """A connection whose transaction reads one snapshot (REPEATABLE READ on PostgreSQL; a SQLite read
    transaction is one snapshot already): the feed's state and its rows agree."""
    connection = engine.connect()
    if engine.dialect.name == "postgresql":
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
    return connection


@dataclass(frozen=True)
class FeedHead:
    """The last position given out, and the last one deleted by retention."""

    position: int
    purged_through: int


def head(engine: Engine) -> FeedHead:
    """Stamp, then the feed's head: a snapshot read after this continues from `position`."""
    stamp(engine)
    with engine.connect() as connection:
        row = connection.execute(
            select(ChangeFeedState.last_position, ChangeFeedState.purged_through).where(_STATE)
        ).one()
    return FeedHead(position=int(row[0]), purged_through=int(row[1]))


def cursor_error(message: str, *, status_code: int, error_type: str) -> InvalidInputError:
    """A refused `after` (400 unknown, 410 expired), named as FastAPI names a query parameter."""
    return InvalidInputError(message, loc=("query", "after"), error_type=error_type, status_code=status_code)


@dataclass(frozen=True)
class ChangePage:
    """Changes after a cursor, as rows, with the cursor to continue from and whether more follow."""

    rows: list[Any]
    next_position: int
    more: bool


def read_changes(engine: Engine, *, after: int, limit: int) -> ChangePage:
    """Stamp, then the changes with a position after `after`, in position order, at most `limit`.

    `after` past the head is unknown (400); before the last position retention deleted, expired (410).
    """
    stamp(engine)
    with _reading(engine) as connection, connection.begin():
        state = connection.execute(
            select(ChangeFeedState.last_position, ChangeFeedState.purged_through).where(_STATE)
        ).one()
        if after > state[0]:
            raise cursor_error(
                f"after={after} is unknown: the feed's last position is {state[0]}",
                status_code=400,
                error_type="cursor_unknown",
            )
        if after < state[1]:
            raise cursor_error(
                f"after={after} has expired: changes up to position {state[1]} were deleted by "
                "retention; read a snapshot and continue from GET /changes/head",
                status_code=410,
                error_type="cursor_expired",
            )
        stmt = select(*_ROW_COLUMNS).where(Change.position > after).order_by(Change.position)
        rows = list(connection.execute(stmt.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return ChangePage(rows=rows, next_position=int(rows[-1].position) if rows else after, more=more)


def change_document(row: Any) -> dict[str, Any]:
    """One change as the feed sends it (`schemas.ChangePublic`); its content is spliced in as the
    JSON text it was stored as, not parsed and dumped again."""
    return {
        "position": row.position,
        "committed_at": row.stamped_at.isoformat(timespec="microseconds") + "Z",
        "kind": row.kind,
        "resource": row.resource,
        "id": row.resource_id,
        "invoice_day": row.invoice_day,
        "previous_invoice_day": row.previous_invoice_day,
        "event_id": row.event_id,
        "content": orjson.Fragment(row.content) if row.content is not None else None,
    }


def page_json(page: ChangePage) -> bytes:
    """A page as the JSON `schemas.ChangePage`."""
    return orjson.dumps(
        {
            "changes": [change_document(row) for row in page.rows],
            "next_cursor": str(page.next_position),
            "more": page.more,
        }
    )
