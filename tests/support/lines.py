"""The lake against the service, line by line: both sides as `{(invoice_no, line_no): (stock_code,
quantity, unit_price, customer_id, invoice_day)}`, the service's as its paged read answers it over HTTP,
the lake's from its `invoice_lines` rows (local or on S3, however they were read)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import httpx

Lines = dict[tuple[str, int], tuple[Any, ...]]


def service_lines(url: str, headers: Mapping[str, str]) -> Lines:
    """Every line the service at `url` holds, by (invoice_no, line_no), as its paged read answers it."""
    lines: Lines = {}
    cursor = None
    with httpx.Client(base_url=url, headers=dict(headers), timeout=30) as client:
        while True:
            params = {"start": "2010-01-01", "end": "2012-12-31", "limit": 1000}
            page = client.get("/invoices", params={**params, **({"cursor": cursor} if cursor else {})}).json()
            for item in page["items"]:
                for row in item["lines"]:
                    lines[(item["invoice_no"], row["line_no"])] = (
                        row["stock_code"],
                        row["quantity"],
                        Decimal(row["unit_price"]),
                        item.get("customer_id"),
                        item["invoice_day"],
                    )
            cursor = page.get("next_cursor")
            if not cursor:
                return lines


def lake_lines(rows: Iterable[Mapping[str, Any]]) -> Lines:
    """The lake's `invoice_lines` rows (`Table.to_pylist()`) in the shape of `service_lines`."""
    return {
        (row["invoice_no"], row["line_no"]): (
            row["stock_code"],
            row["quantity"],
            row["unit_price"],
            row["customer_id"],
            str(row["invoice_day"]),
        )
        for row in rows
    }
