"""The job's client for the retail service: one `httpx.AsyncClient` per run and one retry policy.

Every request goes through `RetailClient._request`, which is the only place that retries. What is
retried: transport failures (connect, read/write timeouts, resets, protocol errors), 429 and 5xx. Every
other status is final. Retrying is safe for every call this client makes: reads have no effect, and the
bulk writes are idempotent by contract (the same batch twice stores each row once), and so is a PUT
(the same invoice or customer twice is stored once and emits one event), so a write whose response was
lost can be sent again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import random
import re
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import orjson
import pyarrow as pa
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
)
from tenacity.stop import stop_base

from etl.errors import CursorExpiredError, ServiceError
from retail_contract.wire import ARROW_STREAM, NEXT_CURSOR_HEADER

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Statuses worth another attempt: the service is overloaded, restarting, or its database is away.
RETRY_STATUSES = frozenset({429, *range(500, 600)})

# These are `TransportError`s too, but they mean the request itself is malformed or the URL has no
# usable scheme: sending it again cannot succeed, so they fail at once like a 4xx.
_NOT_TRANSIENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)

#: Read-back pages as Arrow IPC (typed, columnar), JSON from a service that has no Arrow (docs/design.md).
ACCEPT_ARROW_OR_JSON = f"{ARROW_STREAM}, application/json;q=0.5"


#: What a run refused for a correction suggests (the CLI's option and the DAG's param of the same name).
REPLACE_HINT = "rerun with --on-conflict replace (DAG param on_conflict) to apply the source's corrections"


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request is retried. All times in seconds.

    The wait before attempt n+1 is `max(Retry-After, backoff(n))`, where backoff is
    `initial_wait * 2**(n-1)` plus up to `jitter` seconds of random jitter; each wait is then kept within
    `[min_wait, max_wait]` (the floor keeps a `Retry-After: 0` from turning into a busy loop). A request
    gives up after `max_attempts` attempts, or when the next wait would take its total time past
    `total_budget_seconds`.
    """

    max_attempts: int = 8
    total_budget_seconds: float = 300.0
    initial_wait: float = 0.5
    max_wait: float = 60.0
    min_wait: float = 0.5
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.min_wait <= self.max_wait:
            raise ValueError("need 0 < min_wait <= max_wait")
        if self.total_budget_seconds <= 0 or self.initial_wait < 0 or self.jitter < 0:
            raise ValueError("total_budget_seconds must be positive, initial_wait and jitter not negative")


@dataclass(frozen=True)
class RetryStats:
    """Retries made, by cause: an HTTP status (`"503"`) or a transport exception class (`"ConnectError"`)."""

    by_cause: Mapping[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """All retries, whatever their cause."""
        return sum(self.by_cause.values())

    def since(self, earlier: RetryStats) -> RetryStats:
        """The retries made after `earlier` was taken (for one stage's share of a run's client)."""
        delta = Counter(self.by_cause)
        delta.subtract(earlier.by_cause)
        return RetryStats({k: n for k, n in sorted(delta.items()) if n > 0})

    def to_dict(self) -> dict[str, int]:
        """A plain dict, for the run report."""
        return dict(self.by_cause)


class _RetryableStatus(Exception):
    """A 429/5xx answer, raised inside an attempt so that tenacity sees it; never leaves this module."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait according to a `Retry-After` header: delay-seconds or an HTTP-date.

    Returns `None` when the header is absent or unreadable, and never a negative number (a date in the
    past means "now"). `now` (aware, UTC) is for tests.
    """
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a date without a zone is read as such
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())


class _stop_when_budget_spent(stop_base):
    """Stop when the wait about to start would take the request past its time budget.

    Elapsed time is the larger of the wall clock and the time spent sleeping: equal in a real run, but
    a test that injects a no-op sleep still spends its budget, deterministically.
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        elapsed = max(retry_state.seconds_since_start or 0.0, retry_state.idle_for)
        return elapsed + (retry_state.upcoming_sleep or 0.0) > self.budget


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, _RetryableStatus):
        return True
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, _NOT_TRANSIENT)


def _cause(exc: BaseException | None) -> str:
    """The key under which a retry is counted."""
    if isinstance(exc, _RetryableStatus):
        return str(exc.response.status_code)
    return type(exc).__name__


def _describe(exc: BaseException | None) -> str:
    """One line on what went wrong in an attempt, for the give-up message."""
    if isinstance(exc, _RetryableStatus):
        response = exc.response
        detail = _detail(response)
        return f"HTTP {response.status_code} {response.reason_phrase}" + (f" ({detail})" if detail else "")
    text = str(exc).strip()
    return f"{type(exc).__name__}" + (f": {text}" if text else "")


def _detail(response: httpx.Response) -> str:
    """The service's `detail`, flattened to one short line; FastAPI's 422 list names the fields."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for item in detail[:3]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()))
                parts.append(f"{loc}: {item.get('msg', '')}".strip(": "))
            else:
                parts.append(str(item))
        more = f" (+{len(detail) - 3} more)" if len(detail) > 3 else ""
        return "; ".join(parts) + more
    return "" if detail is None else str(detail)[:300]


def _refusal(method: str, path: str, response: httpx.Response) -> ServiceError:
    """The error for a final (non-retryable) 4xx answer."""
    status = response.status_code
    detail = _detail(response)
    where = f"{method} {path}"
    if status == 401:
        return ServiceError(f"the service refused the API key (401 on {where})")
    if status == 409 and path == "/bulk/invoices":
        try:
            numbers = [str(n) for n in response.json().get("invoice_nos", [])]
        except (ValueError, AttributeError):
            numbers = []
        shown = ", ".join(numbers[:5]) + (f" and {len(numbers) - 5} more" if len(numbers) > 5 else "")
        return ServiceError(
            f"the service holds invoice(s) {shown or '(not named)'} with other content "
            f"(409 on {where}: {detail}); {REPLACE_HINT}"
        )
    if status == 413:
        return ServiceError(f"the service found the request too large (413 on {where}); send fewer lines")
    if status == 410 and path == "/changes":
        return CursorExpiredError(f"the change feed no longer holds what follows the cursor (410: {detail})")
    return ServiceError(
        f"{where} was refused with {status} {response.reason_phrase}: {detail or '(no detail)'}"
    )


class RetailClient:
    """The service's API as the job uses it. Use as `async with RetailClient(...) as client:`.

    `transport` is the seam for tests (`httpx.MockTransport`, respx); `sleep` lets a test record the
    waits instead of spending them.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        policy: RetryPolicy | None = None,
        timeout_seconds: float = 60.0,
        timeout: httpx.Timeout | None = None,
        limits: httpx.Limits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self._sleep = sleep or asyncio.sleep
        self._retries: Counter[str] = Counter()
        # Connecting should be quick; reading waits for a bulk transaction of up to 50,000 lines, which
        # is the slow part, so it gets the whole per-request allowance.
        timeout = timeout or httpx.Timeout(timeout_seconds, connect=min(10.0, timeout_seconds))
        # Keep-alive for every connection the job may hold at once (its concurrency is small), so that
        # a run reuses its connections instead of reconnecting per batch.
        limits = limits or httpx.Limits(max_connections=16, max_keepalive_connections=16)
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"X-API-Key": api_key, "Accept": "application/json"},
            timeout=timeout,
            limits=limits,
            transport=transport,
            # A plain-HTTP service has no certificate to check, and redirects are not followed; the
            # default context would load certifi's bundle, ~0.05 s of every run's start.
            verify=httpx.URL(base_url).scheme == "https",
        )

    async def __aenter__(self) -> RetailClient:
        await self._http.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._http.__aexit__(*exc_info)

    async def aclose(self) -> None:
        """Close the connection pool (what leaving the `async with` block does)."""
        await self._http.aclose()

    @property
    def retry_stats(self) -> RetryStats:
        """A snapshot of the retries this client has made so far, by cause."""
        # A fresh dict each time: a snapshot never changes when the client retries again later.
        return RetryStats(dict(sorted(self._retries.items())))

    # -- endpoints -----------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """GET /health: `{"status": "ok", "database": "ok"}` (a 503 is retried like any other)."""
        return await self._request("GET", "/health")

    async def post_customers(self, customers: list[dict[str, Any]]) -> dict[str, Any]:
        """POST /bulk/customers → `{"created", "existing", "conflicts"}`."""
        return await self._request("POST", "/bulk/customers", json={"customers": customers})

    async def post_invoices(self, invoices: list[dict[str, Any]]) -> dict[str, Any]:
        """POST /bulk/invoices as JSON → `{"created", "unchanged", "lines_created"}`; 409 raises
        `ServiceError`."""
        return await self._request(
            "POST",
            "/bulk/invoices",
            json={"invoices": invoices},
            invoice_nos=[invoice.get("invoice_no") for invoice in invoices],
        )

    async def post_invoice_table(self, invoices: pa.Table) -> dict[str, Any]:
        """POST /bulk/invoices with `invoices` (one row per invoice, lines nested; `etl.post.invoice_table`)
        as an Arrow IPC stream → the same answer as `post_invoices`.

        The stream is written once and every retry resends the same bytes, as with a JSON body.
        """
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, invoices.schema) as writer:
            writer.write_table(invoices)
        return await self._request(
            "POST",
            "/bulk/invoices",
            content=sink.getvalue().to_pybytes(),
            content_type=ARROW_STREAM,
            invoice_nos=invoices["invoice_no"].to_pylist(),
        )

    async def compare_invoices(self, hashes: dict[str, str]) -> dict[str, Any]:
        """POST /bulk/invoices/compare → `{"unchanged", "different", "missing"}` invoice numbers."""
        return await self._request("POST", "/bulk/invoices/compare", json={"invoices": hashes})

    async def replace_invoice(self, invoice_no: str, invoice: dict[str, Any]) -> bool:
        """PUT /invoice/{invoice_no} with the whole invoice (`schemas.InvoiceReplace`: no `invoice_no` in
        the body); True when the service created it (201) rather than replaced it (200)."""
        path = f"/invoice/{urllib.parse.quote(invoice_no, safe='')}"
        response = await self._send("PUT", path, json=invoice, invoice_nos=[invoice_no])
        return response.status_code == 201

    async def replace_customer(self, customer_id: str, country: str) -> bool:
        """PUT /customer/{customer_id} with its country; True when the service created it (201)."""
        path = f"/customer/{urllib.parse.quote(customer_id, safe='')}"
        response = await self._send("PUT", path, json={"country": country})
        return response.status_code == 201

    async def get_invoice_page(
        self, start: dt.date, end: dt.date, cursor: str | None, limit: int = 1000
    ) -> dict[str, Any]:
        """GET /invoices for invoice days in `[start, end]` → `{"items": [Invoice], "next_cursor"}`."""
        return await self._request("GET", "/invoices", params=_page_params(start, end, cursor, limit))

    async def get_customer_page(
        self, start: dt.date, end: dt.date, cursor: str | None, limit: int = 1000
    ) -> dict[str, Any]:
        """GET /customers with an invoice in `[start, end]` → `{"items": [Customer], "next_cursor"}`."""
        return await self._request("GET", "/customers", params=_page_params(start, end, cursor, limit))

    async def get_changes(self, after: str, limit: int = 1000) -> dict[str, Any]:
        """GET /changes: the committed changes after position `after`, in commit order →
        `{"changes": [Change], "next_cursor", "more"}`; an expired cursor raises `CursorExpiredError`."""
        return await self._request("GET", "/changes", params={"after": after, "limit": limit})

    async def get_change_head(self) -> dict[str, Any]:
        """GET /changes/head → `{"position", "cursor", "purged_through"}`: where a snapshot read after
        this call continues from."""
        return await self._request("GET", "/changes/head")

    async def get_invoice_days(
        self, start: dt.date | None = None, end: dt.date | None = None
    ) -> list[dict[str, Any]]:
        """GET /invoice-days: per invoice day in `[start, end]` (open ends: all), the service's own
        `{"invoice_day", "invoices", "lines", "amount"}`, computed by its database."""
        params = {name: day.isoformat() for name, day in (("start", start), ("end", end)) if day}
        answer = await self._request("GET", "/invoice-days", params=params)
        days: list[dict[str, Any]] = answer["days"]
        return days

    async def get_invoice_page_arrow(
        self, start: dt.date, end: dt.date, cursor: str | None, limit: int = 1000
    ) -> tuple[pa.Table | list[dict[str, Any]], str | None]:
        """GET /invoices asking for the Arrow stream (JSON accepted too): the page's invoices, as an
        Arrow table of invoices with nested lines or, from a service that answers JSON, as `Invoice`
        objects; and the next cursor."""
        path = "/invoices"
        response = await self._send(
            "GET", path, params=_page_params(start, end, cursor, limit), accept=ACCEPT_ARROW_OR_JSON
        )
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media_type == ARROW_STREAM:
            try:
                table = pa.ipc.open_stream(response.content).read_all()
            except (pa.ArrowInvalid, OSError) as exc:
                raise ServiceError(f"GET {path} answered an unreadable Arrow stream: {exc}") from exc
            return table, response.headers.get(NEXT_CURSOR_HEADER)
        try:
            page = orjson.loads(response.content)
            return list(page["items"]), page.get("next_cursor")
        except (ValueError, KeyError, TypeError) as exc:
            raise ServiceError(f"GET {path} answered a page of {start}..{end} without 'items'") from exc

    def iter_invoice_tables(
        self, start: dt.date, end: dt.date, limit: int = 1000
    ) -> AsyncIterator[pa.Table | list[dict[str, Any]]]:
        """Every page of invoices of `[start, end]` as `get_invoice_page_arrow` gives them."""
        return _walk(self.get_invoice_page_arrow, start, end, limit)

    def iter_invoice_pages(
        self, start: dt.date, end: dt.date, limit: int = 1000
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every page of invoices of `[start, end]`, following the cursor chain to its end."""
        return _walk(_json_page(self.get_invoice_page), start, end, limit)

    def iter_customer_pages(
        self, start: dt.date, end: dt.date, limit: int = 1000
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every page of customers with an invoice in `[start, end]`."""
        return _walk(_json_page(self.get_customer_page), start, end, limit)

    # -- the one place that sends and retries ---------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, str | int] | None = None,
        invoice_nos: Sequence[str | None] | None = None,
    ) -> dict[str, Any]:
        response = await self._send(
            method,
            path,
            json=json,
            content=content,
            content_type=content_type,
            params=params,
            invoice_nos=invoice_nos,
        )
        try:
            body = orjson.loads(response.content)
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            raise ServiceError(f"{method} {path} answered {response.status_code} without JSON") from exc
        if not isinstance(body, dict):
            raise ServiceError(f"{method} {path} answered a JSON {type(body).__name__}, not an object")
        return body

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, str | int] | None = None,
        accept: str | None = None,
        invoice_nos: Sequence[str | None] | None = None,
    ) -> httpx.Response:
        """Send one request, retrying as the policy says; the final answer, raised as `ServiceError`
        when it is an error.

        The body is `json` (encoded here) or `content` already encoded, of type `content_type`.
        `invoice_nos`, the invoices a bulk write carries, are logged once with the request id.
        """
        if json is not None and content is not None:
            raise ValueError("give the body as json or as content, not both")
        # One id per logical request, kept across its retries, so the service's log shows a replay as one.
        request_id = str(uuid.uuid4())
        if invoice_nos is not None:
            _log_invoice_request(method, path, request_id, invoice_nos)
        started = time.monotonic()
        attempts = 0
        headers = {"X-Request-ID": request_id}
        if accept is not None:
            headers["Accept"] = accept
        if json is not None:
            # Encoded once, with orjson (several times faster than json for the bulk bodies), and resent
            # as the same bytes by every retry.
            content, content_type = orjson.dumps(json), "application/json"
        if content is not None and content_type is not None:
            headers["Content-Type"] = content_type

        async def attempt() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            sent = time.monotonic()
            response = await self._http.request(method, path, content=content, params=params, headers=headers)
            log.debug(
                "%s %s request_id=%s attempt=%d -> %d in %.3fs",
                method,
                path,
                request_id,
                attempts,
                response.status_code,
                time.monotonic() - sent,
            )
            if response.status_code in RETRY_STATUSES:
                raise _RetryableStatus(response)
            return response

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._retries[_cause(exc)] += 1
            log.warning(
                "%s %s request_id=%s attempt %d failed (%s); retrying in %.1fs",
                method,
                path,
                request_id,
                state.attempt_number,
                _describe(exc),
                state.upcoming_sleep,
            )

        policy = self.policy
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_retryable),
            wait=self._wait,
            stop=(
                stop_after_attempt(policy.max_attempts) | _stop_when_budget_spent(policy.total_budget_seconds)
            ),
            before_sleep=before_sleep,
            sleep=self._sleep,
        )
        try:
            response: httpx.Response = await retrying(attempt)
        except RetryError as exc:
            last = exc.last_attempt
            raise ServiceError(
                f"{method} {path} failed after {last.attempt_number} attempt(s) in "
                f"{time.monotonic() - started:.1f}s: last {_describe(last.exception())} "
                f"(request id {request_id})"
            ) from last.exception()
        except httpx.HTTPError as exc:  # not transient: a bad URL or a request httpx cannot send
            raise ServiceError(f"cannot send {method} {path}: {_describe(exc)}") from exc

        if response.is_error:
            raise _refusal(method, path, response)
        return response

    def _wait(self, state: RetryCallState) -> float:
        """max(Retry-After, exponential backoff with jitter), within [min_wait, max_wait]."""
        policy = self.policy
        # Exponential backoff plus random jitter, so that workers that failed together do not retry in step.
        exponent = min(state.attempt_number - 1, 64)  # bounded: 2**n must stay a float
        backoff = min(policy.max_wait, policy.initial_wait * 2.0**exponent) + random.uniform(0, policy.jitter)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = (
            parse_retry_after(exc.response.headers.get("Retry-After"))
            if isinstance(exc, _RetryableStatus)
            else None
        )
        wait = backoff if retry_after is None else max(retry_after, backoff)
        return max(policy.min_wait, min(policy.max_wait, wait))


def _log_invoice_request(method: str, path: str, request_id: str, invoice_nos: Sequence[str | None]) -> None:
    """One INFO line per bulk invoices request naming its invoices, so that an invoice can be followed by
    the request id into the service's log (which logs the id with the invoices it created or found
    unchanged)."""
    log.info(
        "%s %s request_id=%s: %d invoice(s)",
        method,
        path,
        request_id,
        len(invoice_nos),
        extra={"request_id": request_id, "invoice_nos": list(invoice_nos)},
    )


P = TypeVar("P")
#: Fetches one page of `[start, end]` after `cursor`: the page and the next cursor (None: the last).
PageFetcher = Callable[[dt.date, dt.date, str | None, int], Awaitable[tuple[P, str | None]]]


async def _walk(get_page: PageFetcher[P], start: dt.date, end: dt.date, limit: int) -> AsyncIterator[P]:
    """Every page of `[start, end]`, following the cursor chain to its end."""
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        page, cursor = await get_page(start, end, cursor, limit)
        yield page
        if cursor is None:
            return
        # A cursor that comes back again would walk the same pages for ever.
        if cursor in seen:
            raise ServiceError(f"the service repeated cursor {cursor!r} while paging {start}..{end}")
        seen.add(cursor)


def _json_page(
    get_page: Callable[[dt.date, dt.date, str | None, int], Awaitable[dict[str, Any]]],
) -> PageFetcher[list[dict[str, Any]]]:
    """A fetcher of `{"items", "next_cursor"}` JSON pages as `_walk` wants it."""

    async def fetch(
        start: dt.date, end: dt.date, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        page = await get_page(start, end, cursor, limit)
        try:
            return list(page["items"]), page.get("next_cursor")
        except (KeyError, TypeError) as exc:
            raise ServiceError(f"the service answered a page of {start}..{end} without 'items'") from exc

    return fetch


def _page_params(start: dt.date, end: dt.date, cursor: str | None, limit: int) -> dict[str, str | int]:
    params: dict[str, str | int] = {"start": start.isoformat(), "end": end.isoformat(), "limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return params


async def gather_bounded(jobs: Iterable[Callable[[], Awaitable[T]]], concurrency: int) -> list[T]:
    """Run `jobs` (coroutine factories) with at most `concurrency` in flight; results in job order.

    On the first failure the jobs still running are cancelled and the failure is raised as itself (not
    wrapped in an ExceptionGroup), so a `ServiceError` reaches the edge as a one-line message.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    semaphore = asyncio.Semaphore(concurrency)

    async def bounded(job: Callable[[], Awaitable[T]]) -> T:
        # The job is only called once a slot is free, so work it prepares (e.g. a request body) exists
        # for at most `concurrency` jobs at a time.
        async with semaphore:
            return await job()

    tasks = [asyncio.ensure_future(bounded(job)) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
