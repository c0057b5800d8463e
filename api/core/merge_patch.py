"""JSON Merge Patch (RFC 7396): the body of PATCH, applied to the stored resource's representation."""

from __future__ import annotations

from typing import Any

#: The media type RFC 7396 registers; PATCH accepts `application/json` as well.
MERGE_PATCH = "application/merge-patch+json"


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """`target` with `patch` merged in, as RFC 7396 §2 defines it: an object patch sets its members
    recursively and removes those it sets to null; any other patch (an array, a string) replaces the
    target whole. Neither argument is modified."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = apply_merge_patch(result.get(name), value)
    return result
