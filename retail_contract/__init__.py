"""What the service (`api/`) and the job (`etl/`, and through it the DAG) must agree on, in one place.

`content_hash` (the invoice's canonical hash), `wire` (media types, the cursor header, bulk limits, the
Arrow body and page schemas), `limits` (field lengths, price precision) and `lake_layout` (the lake's
table, folder and file names). Only the standard library, pyarrow, numpy and orjson: neither FastAPI nor
SQLAlchemy nor pydantic, so the job's install and the Airflow image need none of the service's web stack
(tests/contract/test_imports.py). Nothing is imported here: the DAG's parse imports `lake_layout` alone,
without paying for pyarrow.
"""
