"""Field limits both sides enforce: the service's columns and request schemas (`api/models.py`,
`api/schemas.py`, `api/arrow_writes.py`) and the job's validation (`etl/validate.py`), which rejects a
source row the service would refuse. docs/design.md ("Decisions ...": identifiers)."""

from __future__ import annotations

#: Characters (not bytes) of each text field.
CUSTOMER_ID_LENGTH = 20
INVOICE_NO_LENGTH = 20
COUNTRY_LENGTH = 64
STOCK_CODE_LENGTH = 32
DESCRIPTION_LENGTH = 255
#: A content hash: lowercase hex sha256.
CONTENT_HASH_LENGTH = 64

#: Prices are exact decimals of this precision and scale: NUMERIC(12, 3), decimal128(12, 3).
PRICE_PRECISION = 12
PRICE_SCALE = 3
