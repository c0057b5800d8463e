"""JSON values kept as their encoded text, for reports that hold many small records.

A run over a 100x source checks ~30,000 days on each side; kept as objects and serialised at the end, the
report's day records took ~115 MiB to build and ~220 MiB more to write. Kept as one compact text each
(`JsonTexts`) they take ~300 bytes a day, and `etl.lake.reports` writes them as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


class JsonTexts(list[str]):
    """A JSON array whose items are already encoded (one compact JSON text each)."""

    def values(self) -> Iterator[Any]:
        """The items decoded, one at a time."""
        for text in self:
            yield json.loads(text)


def compact(value: Any) -> str:
    """`value` as one compact JSON text (keys sorted, as the report writes them)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
