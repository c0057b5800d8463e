"""GET /stockcode/{stockcode}."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.helpers import invoice, line


def test_stock_code_summary(client: TestClient) -> None:
    client.post(
        "/invoice",
        json=invoice(
            "536365",
            lines=[
                line(
                    "85123A", line_no=1, unit_price="2.55", description="WHITE HANGING HEART T-LIGHT HOLDER"
                ),
                line(
                    "85123A", line_no=2, unit_price="2.95", description="CREAM HANGING HEART T-LIGHT HOLDER"
                ),
                line("71053", line_no=3, unit_price="3.39"),
            ],
        ),
    )
    client.post("/invoice", json=invoice("536373", lines=[line("85123A", line_no=1, unit_price="0.001")]))
    client.post("/invoice", json=invoice("536374", lines=[line("85123A", line_no=1, description=None)]))

    response = client.get("/stockcode/85123A")

    assert response.status_code == 200
    assert response.json() == {
        "stock_code": "85123A",
        "descriptions": ["CREAM HANGING HEART T-LIGHT HOLDER", "WHITE HANGING HEART T-LIGHT HOLDER"],
        "min_unit_price": "0.001",
        "max_unit_price": "2.950",
        "line_count": 4,
        "invoice_count": 3,
    }


def test_stock_code_with_a_space_and_negative_price(client: TestClient) -> None:
    lines = [
        line("BANK CHARGES", line_no=1, unit_price="-11062.06", description=None),
        line("BANK CHARGES", line_no=2, unit_price="15", description="Bank Charges"),
    ]
    client.post("/invoice", json=invoice("A563185", lines=lines))

    response = client.get("/stockcode/BANK%20CHARGES")

    assert response.status_code == 200
    assert response.json()["min_unit_price"] == "-11062.060"
    assert response.json()["max_unit_price"] == "15.000"
    assert response.json()["descriptions"] == ["Bank Charges"]


def test_unknown_stock_code_is_404_naming_it(client: TestClient) -> None:
    response = client.get("/stockcode/gift_0001_10")
    assert response.status_code == 404
    assert "gift_0001_10" in response.json()["detail"]


def test_stock_code_too_long_is_422(client: TestClient) -> None:
    response = client.get("/stockcode/" + "X" * 33)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "stockcode"]
