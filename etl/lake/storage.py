"""The lake's storage: a root opened as an fsspec filesystem (one shared botocore session per process
on S3), and the few reads and writes the lake needs, each with the fewest requests an object store
allows: whole writes (a PUT; locally a temporary file renamed), write-once (`put_if_absent`), fresh
listings and HEADs that bypass fsspec's caches. Knows nothing of tables, manifests or days.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem as FsspecLocalFileSystem
from pyarrow.fs import FileSystem, FSSpecHandler, LocalFileSystem, PyFileSystem

from etl.errors import LakeError

LOCAL_FS = LocalFileSystem()  # stateless: one instance serves every thread


TEMP_SUFFIX = ".tmp"


def precondition_failed(exc: OSError) -> bool:
    """Whether s3fs's error is S3's answer to a failed `If-Match` / `If-None-Match`."""
    if isinstance(exc, FileExistsError):
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def filesystem(
    root: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of a lake root and the root's path on it; `LakeError` when it cannot be
    opened (an unknown protocol, s3fs missing, bad options)."""
    options = dict(storage_options or {})
    if _is_s3_url(root) and not {"session", "profile"} & options.keys():
        options["session"] = _s3_session()
    try:
        fs, path = fsspec.core.url_to_fs(root, **options)
    except (ImportError, ValueError, OSError) as exc:  # unknown protocol, missing s3fs, bad options
        raise LakeError(f"cannot open the lake at {root}: {one_line(exc)}") from exc
    return fs, str(path).rstrip("/")


def _is_s3_url(root: str) -> bool:
    return root.split("://", 1)[0] in {"s3", "s3a"} if "://" in root else False


# One botocore session per process and AWS environment, shared by its S3 filesystems. A session caches
# what every S3 client is made from (the service model, the endpoint rules: ~0.15 s of parsing JSON), so
# a process forked after `prepare_s3_client()` (each Airflow task, from its Celery pool process) makes
# its first request without that cost. Keyed by the AWS_* variables: a changed environment (endpoint,
# credentials) gets a new session, as each filesystem used to.
_S3_SESSIONS: dict[tuple[tuple[str, str], ...], Any] = {}


def _s3_session() -> Any:
    from aiobotocore.session import AioSession  # s3fs's own dependency: there whenever s3:// works

    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    session = _S3_SESSIONS.get(key)
    if session is None:
        session = _S3_SESSIONS[key] = AioSession()
    return session


def prepare_s3_client() -> None:
    """Make (without any request) an S3 client of this process's environment, so that the shared
    session has loaded what clients are made from: processes forked afterwards inherit it. Does
    nothing when s3fs is not installed."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem(session=_s3_session(), skip_instance_cache=True).connect()


def is_local_filesystem(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `fs` is the local disk (where directories must exist before a file is written)."""
    return isinstance(fs, FsspecLocalFileSystem)


def is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `fs` is S3 (or S3-compatible): conditional PUTs and ETags are available."""
    protocol = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return "s3" in protocol


def arrow_fs(fs: fsspec.AbstractFileSystem) -> FileSystem:
    """`fs` for pyarrow's readers: its native local filesystem on the local disk."""
    if is_local_filesystem(fs):
        return LOCAL_FS
    return PyFileSystem(FSSpecHandler(fs))


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes, directories: set[str]) -> None:
    """Write `data` at `path`, which no reader looks at before a manifest names it."""
    parent = path.rsplit("/", 1)[0]
    if parent not in directories:
        _make_parent(fs, path)  # two threads may both get here: makedirs(exist_ok=True) allows that
        directories.add(parent)
    if is_local_filesystem(fs):
        # The same bytes as through fsspec's local file, without its per-open Python overhead.
        with open(path, "wb") as out:
            out.write(data)
    else:
        fs.pipe_file(path, data)


def put_whole(
    fs: fsspec.AbstractFileSystem, path: str, data: bytes, directories: set[str] | None = None
) -> None:
    """Write `data` at `path` so that readers see the old content or all of the new (`directories`:
    local directories known to exist)."""
    if not is_local_filesystem(fs):
        fs.pipe_file(path, data)  # one PUT: an object store shows it whole or not at all
        return
    directory, name = path.rsplit("/", 1)
    if directories is None or directory not in directories:
        _make_parent(fs, path)
    temporary = f"{directory}/.{name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
    try:
        with open(temporary, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _make_parent(fs: fsspec.AbstractFileSystem, path: str) -> None:
    # Only local directories must exist before a write. On object stores `makedirs` would create a
    # missing *bucket*, which is the operator's decision (region, policy), not the job's: a missing
    # bucket must fail the write instead.
    if is_local_filesystem(fs):
        os.makedirs(path.rsplit("/", 1)[0], exist_ok=True)


def listing(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, dict[str, Any]]:
    """Every file below `path` on an object store, with its details (ETag, LastModified)."""
    fs.invalidate_cache(path)  # object-store listings are cached per filesystem instance
    try:
        if is_s3(fs) and "/" in path:
            # One LIST of the keys under `path/`: s3fs's find(path) follows an empty listing with a
            # HEAD and a second LIST to tell a missing folder from a file, three requests for the
            # usual answer of a daily write (nothing there yet).
            parent, name = path.rsplit("/", 1)
            found = fs.find(parent, prefix=f"{name}/", detail=True)
        else:
            found = fs.find(path, detail=True)
    except FileNotFoundError:
        return {}
    return {p: info for p, info in found.items() if info.get("type", "file") != "directory"}


def object_info(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """The details (ETag) of the object at `path` on an object store, fresh; None when absent."""
    fs.invalidate_cache(path)  # not an answer from an earlier listing
    try:
        if is_s3(fs):
            # One HEAD; s3fs's info() follows a 404 with a LIST, to see whether it is a folder.
            bucket, key, _version = fs.split_path(path)
            return dict(fs.call_s3("head_object", Bucket=bucket, Key=key))
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return dict(info) if info.get("type", "file") != "directory" else None


def files_with_details(
    fs: fsspec.AbstractFileSystem, path: str
) -> list[tuple[str, Mapping[str, Any] | None]]:
    """Every file below `path` with its details (object stores; None locally, where none are needed)."""
    if is_local_filesystem(fs):
        return [(p, None) for p in files_under(fs, path)]
    return list(listing(fs, path).items())


def files_under(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Every file below `path` (none when it does not exist), as paths on `fs`."""
    if is_local_filesystem(fs):
        # os.walk reads directory entries only; fsspec's find also stats every file. Like find, it
        # follows links to directories.
        return [
            f"{directory}/{name}"
            for directory, _subdirectories, names in os.walk(path, followlinks=True)
            for name in names
        ]
    return list(listing(fs, path))


def remove_if_empty(fs: fsspec.AbstractFileSystem, directory: str) -> None:
    """Remove `directory` if it is a local directory left empty."""
    # Only local directories exist on their own; object stores have none to remove.
    if is_local_filesystem(fs):
        # Not empty (e.g. another source's default-partition file): then it stays.
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def discard(fs: fsspec.AbstractFileSystem, paths: Sequence[str]) -> None:
    """Best-effort removal of this write's uncommitted objects after a failure."""
    for path in paths:
        # The original error matters more; a later write removes what is left once it is old.
        with contextlib.suppress(Exception):
            fs.rm(path)


def display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """`path` as callers are told it: a local path, or a URL with its protocol."""
    return path if is_local_filesystem(fs) else str(fs.unstrip_protocol(path))


def one_line(exc: BaseException) -> str:
    """An error's message on one line, for the one-line errors the job shows."""
    return " ".join(str(exc).split()) or type(exc).__name__


def put_if_absent(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Write `data` at `path` only if nothing is there yet; False when another writer was first.

    The commit of anything written once by whichever of several writers comes first (the source's
    staging): locally a hard link of a complete temporary file (atomic, and refused when the name
    exists), on S3 a PUT with `If-None-Match: *`. Other fsspec stores check, then write (not atomic).
    """
    if is_local_filesystem(fs):
        directory, name = path.rsplit("/", 1)
        os.makedirs(directory, exist_ok=True)
        temporary = f"{directory}/.{name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            with open(temporary, "wb") as out:
                out.write(data)
            os.link(temporary, path)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.remove(temporary)
        return True
    if is_s3(fs):
        try:
            fs.pipe_file(path, data, IfNoneMatch="*")
        except OSError as exc:
            if precondition_failed(exc):
                return False
            raise
        return True
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return True
