"""The plain view: after a commit, each table's committed object copied to its published name (S3: a
server-side copy; locally a hard link renamed into place), so a reader that lists a table finds one
whole, committed file per day. On object stores, days another writer committed meanwhile are
published again afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec

from etl.lake import commit, storage
from etl.lake.encoding import stored_digest
from etl.lake.tables import Unit
from retail_contract.lake_layout import DAY_FILE, DEFAULT_PARTITION, TABLES


def publish_unit(
    fs: fsspec.AbstractFileSystem,
    base: str,
    plan: commit.UnitPlan,
    published: Mapping[str, Mapping[str, Mapping[str, Any] | None]],
    directories: set[str],
) -> tuple[list[str], list[str], list[str]]:
    """Make each table's published file the unit's committed object (or remove it if the table has
    no rows now): (files put in place, files removed, files already right)."""
    written: list[str] = []
    removed: list[str] = []
    unchanged: list[str] = []
    tables = plan.tables
    for table in plan.unit.tables:
        target = f"{base}/{plan.unit.published(table)}"
        directory, name = target.rsplit("/", 1)
        present = name in published.get(directory, {})
        entry = tables.get(table)
        if entry is None:
            if present:
                fs.rm(target)
                removed.append(target)
                storage.remove_if_empty(fs, directory)
            continue
        source = f"{base}/{entry['object']}"
        if present and _is_published(fs, source, target, entry, published[directory][name]):
            unchanged.append(target)
        else:
            publish_file(fs, source, target, replace=present, directories=directories)
            written.append(target)
        removed.extend(_remove_other_files(fs, target, published))
    return written, removed, unchanged


def publish_later_commits(
    fs: fsspec.AbstractFileSystem, base: str, plans: Sequence[commit.UnitPlan], directories: set[str]
) -> list[str]:
    """On object stores, after publishing: republish the days another writer committed meanwhile.

    Without a lock, writer A may still be copying its objects when B, who committed over A's commit,
    has published B's; A's copies would then win in the published view. Reading the manifests again
    after A's copies closes that: any commit later than A's re-read publishes after it. Returns the
    files put in place."""
    keys = [plan.unit.key for plan in plans]
    latest = commit.read_manifests(fs, base, keys)
    written: list[str] = []
    for plan in plans:
        now = latest.get(plan.unit.key)
        if now is None or now.manifest["tables"] == plan.tables:
            continue
        later = commit.UnitPlan(plan.unit, now)
        later.kept = dict(now.manifest["tables"])
        # A fresh listing of the day's published files: the one taken before this write is stale.
        fresh: dict[str, dict[str, Mapping[str, Any] | None]] = {}
        for table in plan.unit.tables:
            directory = f"{base}/{plan.unit.published(table)}".rsplit("/", 1)[0]
            listed = storage.listing(fs, directory)
            fresh[directory] = {p.rsplit("/", 1)[1]: info for p, info in listed.items()}
        new, _gone, _same = publish_unit(fs, base, later, fresh, directories)
        written.extend(new)
    return written


def _is_published(
    fs: fsspec.AbstractFileSystem,
    source: str,
    target: str,
    entry: Mapping[str, Any],
    info: Mapping[str, Any] | None,
) -> bool:
    """Whether the published file at `target` already holds the committed object's rows."""
    if storage.is_local_filesystem(fs):
        with contextlib.suppress(OSError):
            if os.path.samefile(source, target):  # the hard link this lake publishes with
                return True
    elif info is not None and entry.get("md5") and str(info.get("ETag", "")).strip('"') == entry["md5"]:
        return True  # a single-part object's ETag is its MD5, and a copy keeps it
    return stored_digest(fs, target) == entry.get("content_sha256")


def publish_file(
    fs: fsspec.AbstractFileSystem, source: str, target: str, *, replace: bool, directories: set[str]
) -> None:
    """Put a copy of the committed object `source` at `target`, whole: a reader sees the old file or
    this one."""
    if not storage.is_local_filesystem(fs):
        # S3: a HEAD, then CopyObject, server-side; the new object appears whole. (copy() would
        # first list both paths, to expand folders and globs, which these never are.)
        fs.cp_file(source, target)
        return
    directory, name = target.rsplit("/", 1)
    if directory not in directories:
        os.makedirs(directory, exist_ok=True)
        directories.add(directory)
    if not replace:
        try:
            os.link(source, target)  # a new name appears pointing at a complete file
            return
        except OSError as exc:
            # Someone published it meanwhile, or no hard links here: a copy must not be seen half
            # made, so it goes by a temporary name like a replacement.
            if exc.errno != errno.EEXIST and exc.errno not in _NO_LINKS:
                raise
    temporary = f"{directory}/.{name}.{uuid.uuid4().hex}{storage.TEMP_SUFFIX}"
    try:
        _link_or_copy(source, temporary)
        os.replace(temporary, target)  # atomic within the directory
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


_NO_LINKS = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP)


def _link_or_copy(source: str, target: str) -> None:
    """`target` (a temporary name) as the same file as `source`, or a copy of it."""
    try:
        os.link(source, target)  # no bytes copied: the committed object and its published name share them
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        shutil.copyfile(source, target)  # a storage.filesystem without hard links


def list_tables(
    fs: fsspec.AbstractFileSystem, base: str, units: Sequence[Unit], *, whole_lake: bool = True
) -> dict[str, dict[str, Mapping[str, Any] | None]]:
    """The published files of `units`' partitions (or of every table, when that is fewer requests),
    as {directory: {file name: details}}, after deleting the temporary files an interrupted write left
    behind there (details: object stores only). One listing per table (or table partition): it then
    answers which files exist, so none is looked up on its own.

    Locally, with `whole_lake`, every table is walked, to delete any interrupted write's temporary
    files; a run of many batches asks for that once: walking a 100x lake (30,500 days, 4 tables)
    after every batch made its writes quadratic."""
    local = storage.is_local_filesystem(fs)
    if (local and whole_lake) or (not local and len(units) > commit.PER_UNIT_LOOKUPS_UP_TO):
        folders = [f"{base}/{table}" for table in TABLES]
    else:
        # On object stores temporary files are a local write's (a PUT and a copy are whole), so the
        # folders outside these units hold nothing to clean up.
        folders = sorted({f"{base}/{table}/{unit.partition}" for unit in units for table in unit.tables})
    stored: dict[str, dict[str, Mapping[str, Any] | None]] = {}
    for folder in folders:
        for found, info in storage.files_with_details(fs, folder):
            directory, name = found.rsplit("/", 1)
            if name.startswith(".") and name.endswith(storage.TEMP_SUFFIX):
                fs.rm(found)
            else:
                stored.setdefault(directory, {})[name] = info
    return stored


def _remove_other_files(
    fs: fsspec.AbstractFileSystem, final: str, stored: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """In a day partition, any visible data file besides `final` (an older layout's) is stale."""
    directory, name = final.rsplit("/", 1)
    if directory.endswith(DEFAULT_PARTITION) or name != DAY_FILE:
        return []  # the default partition holds one file per source: the others are not ours
    stale = [
        f"{directory}/{other}"
        for other in sorted(stored.get(directory, ()))
        if other != name and not other.startswith((".", "_"))
    ]
    for path in stale:
        fs.rm(path)
    return stale
