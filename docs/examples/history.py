"""Two questions an analyst asks of the lake's history (docs/lake.md, "History"), in DuckDB and in pandas.

    .venv/bin/python docs/examples/history.py LAKE INVOICE_NO AT CUSTOMER_ID

`changes/` holds every change `retail-etl sync` read from the service; `customer_history/` each customer's
versions with their validity. Both start at the lake's first sync.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

import duckdb
import pandas as pd

# What did invoice X hold at time T? Its last change at or before T (content null: deleted by then).
INVOICE_AS_OF = """
select content from read_parquet($changes)
where resource = 'invoice' and id = $invoice_no and committed_at <= $at
order by position desc limit 1
"""

# Where was customer C when invoice I was made? The version valid at I's creation, in commit order
# (feed positions: commit times between two reads of the feed are one).
COUNTRY_WHEN_MADE = """
with made as (
    select min(position) as at from read_parquet($changes)
    where resource = 'invoice' and id = $invoice_no and kind = 'created'
)
select country from read_parquet($history), made
where customer_id = $customer_id
  and (position is null or position <= made.at)
  and (valid_to_position is null or made.at < valid_to_position)
"""


def invoice_as_of_duckdb(lake: str, invoice_no: str, at: dt.datetime) -> dict[str, Any] | None:
    """The invoice as the service held it at `at` (None: not there, or deleted), with DuckDB."""
    row = duckdb.execute(
        INVOICE_AS_OF, {"changes": f"{lake}/changes/*.parquet", "invoice_no": invoice_no, "at": at}
    ).fetchone()
    return json.loads(row[0]) if row and row[0] else None


def country_when_made_duckdb(lake: str, customer_id: str, invoice_no: str) -> str | None:
    """The customer's country when the invoice was created, with DuckDB."""
    row = duckdb.execute(
        COUNTRY_WHEN_MADE,
        {
            "changes": f"{lake}/changes/*.parquet",
            "history": f"{lake}/customer_history/*.parquet",
            "invoice_no": invoice_no,
            "customer_id": customer_id,
        },
    ).fetchone()
    return str(row[0]) if row else None


def invoice_as_of_pandas(lake: str, invoice_no: str, at: dt.datetime) -> dict[str, Any] | None:
    """The same question with pandas."""
    changes = pd.read_parquet(f"{lake}/changes")
    mine = changes[
        (changes.resource == "invoice") & (changes.id == invoice_no) & (changes.committed_at <= at)
    ]
    if mine.empty:
        return None
    content = mine.sort_values("position").iloc[-1]["content"]
    return None if pd.isna(content) else json.loads(content)


def country_when_made_pandas(lake: str, customer_id: str, invoice_no: str) -> str | None:
    """The same question with pandas."""
    changes = pd.read_parquet(f"{lake}/changes")
    created = changes[
        (changes.resource == "invoice") & (changes.id == invoice_no) & (changes.kind == "created")
    ]
    if created.empty:
        return None
    made = created.position.min()
    versions = pd.read_parquet(f"{lake}/customer_history")
    valid = versions[
        (versions.customer_id == customer_id)
        & (versions.position.isna() | (versions.position <= made))
        & (versions.valid_to_position.isna() | (made < versions.valid_to_position))
    ]
    return None if valid.empty else str(valid.iloc[0]["country"])


if __name__ == "__main__":
    lake_root, number, when, customer = sys.argv[1:5]
    moment = dt.datetime.fromisoformat(when)
    print("invoice as of", when, "(DuckDB):", invoice_as_of_duckdb(lake_root, number, moment))
    print("invoice as of", when, "(pandas):", invoice_as_of_pandas(lake_root, number, moment))
    print("country when it was made (DuckDB):", country_when_made_duckdb(lake_root, customer, number))
    print("country when it was made (pandas):", country_when_made_pandas(lake_root, customer, number))
