"""A client generated from the service's OpenAPI document (openapi-python-client) is one a person would
use: readable names, no warning but for the Arrow media type it cannot model, and the course's
conversation through it against the real service."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from tests.support.service import live_service

PACKAGE = "retail_api_client"


def _generate(document: dict[str, Any], into: Path) -> str:
    spec = into / "openapi.json"
    spec.write_text(json.dumps(document))
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        [
            str(bin_dir / "openapi-python-client"),
            *("generate", "--path", str(spec), "--meta", "none", "--output-path", str(into / PACKAGE)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},  # its ruff post-hook
    )
    return done.stdout + done.stderr


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_a_generated_client_has_readable_names_and_holds_the_courses_conversation(
    sqlite_url: str, tmp_path: Path
) -> None:
    with live_service(sqlite_url) as service:
        document = httpx.get(f"{service.url}/openapi.json").json()
        output = _generate(document, tmp_path)

        # Warnings only for what no Python model can be: the Arrow IPC body of the bulk write.
        warnings = (
            re.split(r"\n(?=WARNING )", output[output.find("WARNING ") :]) if "WARNING " in output else []
        )
        assert warnings and all(
            "Unsupported content type application/vnd.apache.arrow.stream" in warning for warning in warnings
        ), output
        operation_ids = {op["operationId"] for path in document["paths"].values() for op in path.values()}
        assert {
            "customers-read_customer",
            "invoices-replace_invoice",
            "customers-patch_customer",
        } <= operation_ids

        sys.path.insert(0, str(tmp_path))
        try:
            client_module = _module("client")
            models = _module("models")
            api = {
                name: _module(f"api.{folder}.{name}")
                for folder, names in {
                    "customers": [
                        "customers_create_customer",
                        "customers_read_customer",
                        "customers_replace_customer",
                        "customers_patch_customer",
                        "customers_delete_customer",
                        "customers_create_customer_invoice",
                    ],
                    "invoices": ["invoices_read_invoice", "invoices_delete_invoice"],
                }.items()
                for name in names
            }
            client = client_module.AuthenticatedClient(
                base_url=service.url, token=service.api_key, prefix="", auth_header_name="X-API-Key"
            )
            with client:
                created = api["customers_create_customer"].sync_detailed(
                    client=client, body=models.CustomerCreate(customer_id="17850", country="United Kingdom")
                )
                assert created.status_code == 201 and created.parsed.country == "United Kingdom"
                read = api["customers_read_customer"].sync_detailed("17850", client=client)
                assert read.status_code == 200 and read.parsed.customer_id == "17850"
                assert api["customers_read_customer"].sync_detailed("99999", client=client).status_code == 404

                replaced = api["customers_replace_customer"].sync_detailed(
                    "17850", client=client, body=models.CustomerReplace(country="France")
                )
                assert replaced.status_code == 200 and replaced.parsed.country == "France"
                patched = api["customers_patch_customer"].sync_detailed(
                    "17850", client=client, body=models.CustomerPatch(country="Germany")
                )
                assert patched.status_code == 200 and patched.parsed.country == "Germany"

                invoice = models.InvoiceCreate(
                    invoice_no="536365",
                    invoice_date="2010-12-01T08:26:00",  # local time, as the data set has it
                    lines=[models.LineCreate(stock_code="85123A", quantity=6, unit_price="2.55")],
                )
                posted = api["customers_create_customer_invoice"].sync_detailed(
                    "17850", client=client, body=invoice
                )
                assert posted.status_code == 201, posted.content
                stored = api["invoices_read_invoice"].sync_detailed("536365", client=client).parsed
                assert (stored.customer_id, stored.country) == ("17850", "Germany")
                assert [(line.stock_code, line.unit_price) for line in stored.lines] == [("85123A", "2.550")]

                # A customer with invoices stays; without them it goes.
                assert (
                    api["customers_delete_customer"].sync_detailed("17850", client=client).status_code == 409
                )
                assert (
                    api["invoices_delete_invoice"].sync_detailed("536365", client=client).status_code == 204
                )
                assert (
                    api["customers_delete_customer"].sync_detailed("17850", client=client).status_code == 204
                )
                assert api["customers_read_customer"].sync_detailed("17850", client=client).status_code == 404
        finally:
            sys.path.remove(str(tmp_path))
            for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
                del sys.modules[name]
