"""Where the bytes come from: a local path, a `file:` URL, or an http(s) URL downloaded once into a cache.

Downloads are streamed to a hidden temporary file and renamed into place only when complete, and
retried: transport errors, 429 and 5xx (honouring `Retry-After`); other 4xx are the user's to fix.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import os
import re
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from etl.errors import SourceError
from etl.sources.common import one_line as _one_line

DEFAULT_CACHE_DIR = Path("~/.cache/retail-etl")

# Download policy: transport errors, 429 and 5xx are retried; other 4xx are the user's to fix.
_DOWNLOAD_ATTEMPTS = 5
_RETRY_MIN_WAIT = 0.5  # seconds; also the floor for `Retry-After: 0`, so a retry never spins
_RETRY_MAX_WAIT = 30.0
_DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_CHUNK = 1024 * 1024


def source_path(source: str, cache_dir: Path | None = None) -> Path:
    """The local file that holds `source` (a local path, a `file:` URL, or an http(s) URL, downloaded
    into `cache_dir`, default `~/.cache/retail-etl`, once). Raises `SourceError` naming the source when
    it is missing, a directory, or cannot be downloaded."""
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        path = _download(source, (cache_dir or DEFAULT_CACHE_DIR).expanduser())
    elif scheme == "file":
        path = Path(unquote(urlsplit(source).path))
    else:
        path = Path(source).expanduser()

    if not path.exists():
        raise SourceError(f"{source}: file not found")
    if path.is_dir():
        raise SourceError(f"{source}: is a directory, not a data file")
    return path


def source_bytes(source: str, cache_dir: Path | None = None) -> bytes:
    """The content of `source` (see `source_path`). Raises `SourceError` naming the source when it is
    missing, a directory, unreadable, or cannot be downloaded."""
    path = source_path(source, cache_dir)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{source}: cannot read: {_one_line(exc)}") from exc


class _RetryableStatus(Exception):
    """A 429 or 5xx answer: worth another attempt, honouring Retry-After."""

    def __init__(self, status_code: int, reason: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status_code} {reason}".strip())
        self.status_code = status_code
        self.retry_after = retry_after


def _download(url: str, cache_dir: Path) -> Path:
    """The cached copy of `url`, downloading it first if there is none.

    The body is streamed to a hidden temporary file in the cache and renamed into place only when
    complete, so an interrupted download is never mistaken for a cached one.
    """
    target = cache_dir / _cache_name(url)
    if target.is_file():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob(f".{target.name}.*.part"):
            stale.unlink(missing_ok=True)
    except OSError as exc:
        raise SourceError(f"{url}: cannot use cache directory {cache_dir}: {_one_line(exc)}") from exc
    partial = cache_dir / f".{target.name}.{uuid.uuid4().hex}.part"
    try:
        _fetch(url, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _cache_name(url: str) -> str:
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", unquote(Path(urlsplit(url).path).name))[:80]
    return f"{digest}-{base}" if base else digest


def _fetch(url: str, destination: Path) -> None:
    retrying = Retrying(
        retry=retry_if_exception(lambda exc: isinstance(exc, _RetryableStatus | httpx.TransportError)),
        stop=stop_after_attempt(_DOWNLOAD_ATTEMPTS),
        wait=_retry_wait,
        reraise=True,
    )
    try:
        with httpx.Client(timeout=_DOWNLOAD_TIMEOUT, follow_redirects=True) as client:
            for attempt in retrying:
                with attempt:
                    _fetch_once(client, url, destination)
    except _RetryableStatus as exc:
        raise SourceError(f"{url}: download failed: {exc} after {_DOWNLOAD_ATTEMPTS} attempts") from exc
    except httpx.TransportError as exc:
        detail = _one_line(exc) or type(exc).__name__
        raise SourceError(f"{url}: download failed after {_DOWNLOAD_ATTEMPTS} attempts: {detail}") from exc
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise SourceError(f"{url}: invalid URL: {_one_line(exc)}") from exc
    except OSError as exc:
        raise SourceError(f"{url}: cannot write download to {destination.parent}: {_one_line(exc)}") from exc


def _fetch_once(client: httpx.Client, url: str, destination: Path) -> None:
    with client.stream("GET", url) as response:
        status = response.status_code
        if status == 429 or status >= 500:
            raise _RetryableStatus(status, response.reason_phrase, _retry_after(response))
        if status >= 400:
            raise SourceError(f"{url}: download failed: HTTP {status} {response.reason_phrase}".strip())
        with destination.open("wb") as out:
            # iter_bytes undoes a Content-Encoding; the format is detected from the bytes afterwards.
            for chunk in response.iter_bytes(_CHUNK):
                out.write(chunk)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - dt.datetime.now(dt.UTC)).total_seconds()


_exponential = wait_exponential(multiplier=_RETRY_MIN_WAIT, min=_RETRY_MIN_WAIT, max=_RETRY_MAX_WAIT)


def _retry_wait(state: RetryCallState) -> float:
    """Exponential backoff, or the server's Retry-After clamped to [min, max] so 0 never spins."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _RetryableStatus) and exc.retry_after is not None:
        return min(max(exc.retry_after, _RETRY_MIN_WAIT), _RETRY_MAX_WAIT)
    return float(_exponential(state))
