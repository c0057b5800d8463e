"""The job's own exception types.

Every error a user can act on is one of these; the edges (CLI, DAG) turn them into a one-line message
and a non-zero exit. Anything else is a bug and may show a traceback.
"""

from __future__ import annotations


class EtlError(Exception):
    """Base class: a failure of the run that a person can act on."""

    exit_code = 1


class SourceError(EtlError):
    """The source cannot be read: missing, wrong format, missing columns, truncated, ..."""

    exit_code = 2


class ServiceError(EtlError):
    """The service refused a request, or stayed unreachable after every retry."""

    exit_code = 3


class InvoiceConflictError(ServiceError):
    """The service holds invoices of the source with other content (corrections) and the run was not
    asked to replace them (`--on-conflict replace`): a retry cannot help."""


class CursorExpiredError(ServiceError):
    """The change feed no longer holds the changes after the lake's cursor (retention deleted them):
    the lake must be read whole from the service again."""


class SyncBusyError(EtlError):
    """Another sync holds the lake: this one did nothing (and need not)."""

    exit_code = 0


class ReconciliationError(EtlError):
    """What the service or the lake holds differs from the source."""

    exit_code = 4


class LakeError(EtlError):
    """The lake cannot be written."""

    exit_code = 5


class DestinationError(EtlError):
    """A destination besides the lake (warehouse, message queue) is misnamed, unreachable or refused."""

    exit_code = 6


class DestinationUrlError(DestinationError):
    """A destination's URL names no destination the job knows (bad scheme, no path): retrying cannot help."""
