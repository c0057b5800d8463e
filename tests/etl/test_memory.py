"""The job gives its free heap back between phases (etl/memory.py)."""

from __future__ import annotations

import platform

from etl.memory import release_free_heap


def test_the_job_trims_its_heap_where_glibc_can() -> None:
    assert release_free_heap() is (platform.libc_ver()[0] == "glibc")
