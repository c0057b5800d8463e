"""The malloc settings the service applies at start (api/core/memory.py)."""

from __future__ import annotations

import platform

from api.core.memory import limit_heap_retention


def test_glibc_takes_the_settings_and_other_libraries_are_left_alone() -> None:
    # True exactly where the C library is glibc (this machine and the service's image): elsewhere the
    # function must do nothing rather than fail the service's start.
    assert limit_heap_retention() is (platform.libc_ver()[0] == "glibc")


def test_the_free_heap_is_given_back_after_a_bulk_write_where_glibc_can() -> None:
    from api.core.memory import release_free_heap

    assert release_free_heap() is (platform.libc_ver()[0] == "glibc")
