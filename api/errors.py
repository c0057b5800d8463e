"""The service's own exceptions; api.main turns each into one HTTP error response."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ServiceError(Exception):
    """Base class of the errors a client can act on."""


class NotFoundError(ServiceError):
    """The named resource does not exist (404)."""


class ConflictError(ServiceError):
    """The request contradicts stored data (409); `invoice_nos` names the invoices concerned, if any."""

    def __init__(
        self, message: str, *, invoice_nos: Sequence[str] = (), invoice_count: int | None = None
    ) -> None:
        super().__init__(message)
        self.invoice_nos = list(invoice_nos)
        #: How many invoices are concerned, when `invoice_nos` lists only the first of them.
        self.invoice_count = invoice_count


class InvalidInputError(ServiceError):
    """A well-formed value that the stored data makes invalid (422), e.g. an unknown customer id.

    `loc` follows FastAPI's validation errors: `("body", "invoices", 3, "customer_id")`.
    """

    def __init__(
        self,
        message: str,
        *,
        loc: Sequence[str | int],
        error_type: str = "value_error",
        status_code: int = 422,
    ) -> None:
        super().__init__(message)
        self.loc = tuple(loc)
        self.error_type = error_type
        #: 422, or 409 when the value is well formed but names what is not stored (an unknown customer).
        self.status_code = status_code


class NotAcceptableError(ServiceError):
    """No representation the resource offers is acceptable to the request's `Accept` (406)."""

    def __init__(self, offered: Sequence[str]) -> None:
        super().__init__(f"Accept admits none of the types offered: {', '.join(offered)}")
        self.offered = list(offered)


class PreconditionFailedError(ServiceError):
    """A conditional write (`If-Match`, `If-None-Match`) whose condition does not hold (412)."""


class InvalidBodyError(ServiceError):
    """A request body that fails validation only once combined with stored data, e.g. a merge patch
    applied to the stored resource (422); `errors` are FastAPI-shaped (type, loc, msg)."""

    def __init__(self, errors: Sequence[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = list(errors)
