"""Data access, one module per resource: keyword-only functions over a Session, so route handlers stay
thin.

- `customers`: a customer's create/read/replace/patch/delete, its invoice links, the bulk write, pages.
- `invoices`: one invoice and its lines (create, read, replace, patch, delete; lines by stock code).
- `invoice_store`: storing invoices all or nothing (single, bulk JSON and Arrow bodies, replace).
- `invoice_pages`: the job's read-back pages.
- `stockcodes`: the stock code summary.
- `common`: transactions, key lists, cursors and row shapes they share.

API keys get a module of their own here (`keys`) with authentication.
"""
