"""reconcile: exact per-day figures and row-by-row equality, with messages that say where."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from etl.errors import ReconciliationError
from etl.reconcile import DistinctValues, RunReconciliation, reconcile
from etl.schema import LINE_ORDER, LINE_SCHEMA, in_line_order
from tests.etl.conftest_client import line_rows, sample_lines

DAY1 = "2010-12-01"
DAY2 = "2010-12-02"


@pytest.fixture(scope="module")
def source():
    return sample_lines()


def _replace(table: pa.Table, row: int, column: str, value) -> pa.Table:
    values = table[column].to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(
        index, table.schema.field(column), pa.array(values, table.schema.field(column).type)
    )


def _row_of(table: pa.Table, invoice_no: str, line_no: int) -> int:
    mask = pc.and_(pc.equal(table["invoice_no"], invoice_no), pc.equal(table["line_no"], line_no))
    return pc.index(mask, True).as_py()


def _fails(report, *fragments: str) -> str:
    assert not report.ok
    with pytest.raises(ReconciliationError) as raised:
        report.raise_for_differences()
    message = str(raised.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_equal_tables_pass_whatever_their_row_order(source):
    shuffled = source.take(pa.array(list(range(source.num_rows - 1, -1, -1))))
    report = reconcile(source, shuffled)
    assert report.ok
    report.raise_for_differences()
    assert [d.day.isoformat() for d in report.days] == [DAY1, DAY2, "2011-08-12", "2011-09-25"]
    first = report.days[0]
    assert first.source == first.other
    assert (first.source.lines, first.source.invoices) == (3108, 143)
    assert report.total_source.lines == source.num_rows
    assert report.message() == f"service matches source on 4 days ({source.num_rows} lines)"


def test_a_missing_line_names_the_day_and_the_measures(source):
    row = _row_of(source, "536365", 3)
    service = source.filter(pa.array([i != row for i in range(source.num_rows)]))
    report = reconcile(source, service)
    message = _fails(
        report,
        "service differs from source on 1 day: 2010-12-01 lines 3108 vs 3107,",
        "1 line missing",
        "rows: 1 missing (536365/3)",
    )
    assert "amount 58635.560 vs 58613.560" in message  # 8 x 2.75 less; exact to the thousandth
    assert report.rows.missing == 1 and report.rows.extra == 0 and report.rows.different == 0


def test_an_extra_line_names_the_day(source):
    extra = line_rows([{"invoice_no": "536365", "line_no": 99, "quantity": 1, "unit_price": "1.00"}])
    report = reconcile(source, pa.concat_tables([source, extra]))
    _fails(report, f"{DAY1} lines 3108 vs 3109", "1 line extra", "rows: 1 extra (536365/99)")


def test_a_line_stored_twice_is_one_extra_line():
    table = line_rows([{"invoice_no": "1", "line_no": 1}, {"invoice_no": "1", "line_no": 2}])
    report = reconcile(table, pa.concat_tables([table, table.slice(1, 1)]))
    assert (report.rows.missing, report.rows.extra, report.rows.different) == (0, 1, 0)
    _fails(report, "lines 2 vs 3", "rows: 1 extra (1/2)")


def test_a_price_changed_by_a_thousandth_is_caught(source):
    row = _row_of(source, "536365", 1)  # 6 x 2.550
    service = _replace(source, row, "unit_price", Decimal("2.551"))
    report = reconcile(source, service)
    _fails(
        report,
        f"{DAY1} amount 58635.560 vs 58635.566, unit_price differs on 1 line",
        "rows: 1 different (536365/1)",
    )
    assert report.days[0].measures_differing == ("amount",)


def test_a_changed_quantity_is_caught(source):
    row = _row_of(source, "536365", 2)
    service = _replace(source, row, "quantity", 7)
    report = reconcile(source, service)
    _fails(report, f"{DAY1} quantity ", "amount 58635.560 vs 58638.950", "quantity differs on 1 line")


def test_a_changed_description_is_caught_by_the_row_check(source):
    row = _row_of(source, "536366", 1)
    service = _replace(source, row, "description", "SOMETHING ELSE")
    report = reconcile(source, service)
    _fails(
        report,
        f"differs from source on 1 day: {DAY1} description differs on 1 line",
        "1 different (536366/1)",
    )
    assert report.days[0].measures_differing == ()  # no figure can see it


def test_a_description_lost_to_null_is_a_difference(source):
    row = _row_of(source, "536366", 1)
    report = reconcile(source, _replace(source, row, "description", None))
    _fails(report, "description differs on 1 line")


def test_changes_on_two_days_are_both_named(source):
    service = _replace(source, _row_of(source, "536365", 1), "quantity", 5)
    day2 = source.filter(pc.equal(source["invoice_day"], dt.date(2010, 12, 2)))
    first_day2 = day2["invoice_no"][0].as_py()
    service = _replace(service, _row_of(source, first_day2, 1), "stock_code", "ZZZ")
    message = _fails(
        reconcile(source, service, label="lake"), "lake differs from source on 2 days: 2010-12-01 "
    )
    assert f"; {DAY2} stock_code differs on 1 line" in message


def test_exact_decimal_sums():
    source = line_rows(
        [
            {"invoice_no": "1", "line_no": 1, "quantity": 1, "unit_price": "0.001"},
            {"invoice_no": "1", "line_no": 2, "quantity": 1, "unit_price": "0.001"},
            {"invoice_no": "1", "line_no": 3, "quantity": 1, "unit_price": "0.001"},
            {
                "invoice_no": "A563185",
                "line_no": 1,
                "quantity": 1,
                "unit_price": "-11062.06",
                "customer_id": None,
            },
            {
                "invoice_no": "2",
                "line_no": 1,
                "quantity": 3,
                "unit_price": "0.1",
                "invoice_date": "2010-12-02 09:00:00",
            },
        ]
    )
    report = reconcile(source, source)
    day1, day2 = report.days
    assert day1.source.amount == Decimal("-11062.057")  # 3 x 0.001 - 11062.06, no float noise
    assert day2.source.amount == Decimal("0.300")  # 3 x 0.1 is 0.30000000000000004 in floats
    assert report.total_source.amount == Decimal("-11061.757")
    assert (day1.source.invoices, day1.source.customers, day1.source.quantity) == (2, 1, 4)


def test_an_amount_off_by_a_thousandth_in_total_is_caught():
    source = line_rows([{"invoice_no": "1", "line_no": n, "unit_price": "0.001"} for n in (1, 2, 3)])
    service = _replace(source, 2, "unit_price", Decimal("0.002"))
    _fails(reconcile(source, service), "amount 0.003 vs 0.004")


def test_customers_count_distinct_non_null():
    source = line_rows(
        [
            {"invoice_no": "1", "line_no": 1, "customer_id": "12370"},
            {"invoice_no": "2", "line_no": 1, "customer_id": None},
            {"invoice_no": "3", "line_no": 1, "customer_id": "12370"},
        ]
    )
    service = _replace(source, 2, "customer_id", "12371")
    report = reconcile(source, service)
    assert report.days[0].source.customers == 1
    _fails(report, "customers 1 vs 2", "customer_id differs on 1 line")


def test_a_day_only_one_side_has_is_reported_against_zero():
    source = line_rows([{"invoice_no": "1", "line_no": 1}])
    report = reconcile(source, source.slice(0, 0))
    _fails(
        report,
        "2010-12-01 lines 1 vs 0, invoices 1 vs 0, customers 1 vs 0, quantity 1 vs 0, amount 1.000 vs 0",
    )


def test_to_dict_is_json_ready_with_decimals_as_strings(source):
    row = _row_of(source, "536365", 3)
    service = source.filter(pa.array([i != row for i in range(source.num_rows)]))
    as_dict = reconcile(source, service).to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["ok"] is False and as_dict["label"] == "service"
    day = as_dict["days"][0]
    assert day["day"] == DAY1
    assert day["source"]["amount"] == "58635.560" and day["other"]["amount"] == "58613.560"
    assert as_dict["rows"]["missing_keys"] == [["536365", 3]]


def test_schema_differences_in_nullability_or_column_order_do_not_matter(source):
    loose = pa.schema([f.with_nullable(True) for f in reversed(LINE_SCHEMA)])
    other = source.select(list(reversed(LINE_SCHEMA.names))).cast(loose)
    assert reconcile(source, other).ok


def test_a_table_without_a_line_schema_column_is_refused(source):
    with pytest.raises(ValueError, match="service lines lack column"):
        reconcile(source, source.drop_columns(["unit_price"]))


def test_line_order_sorts_once_and_differences_in_line_order_are_still_found(source):
    ordered = in_line_order(source.take(pa.array(list(range(source.num_rows - 1, -1, -1)))))
    keys = list(zip(*(ordered[k].to_pylist() for k in LINE_ORDER), strict=True))
    assert keys == sorted(keys)
    assert in_line_order(ordered) is ordered  # already in order: not sorted again
    # Both sides in line order take the equal-tables path; one changed cell must still be caught.
    row = _row_of(ordered, "536365", 1)
    changed = _replace(ordered, row, "quantity", ordered["quantity"][row].as_py() + 1)
    _fails(reconcile(ordered, changed), "536365")
    assert reconcile(ordered, ordered).ok


def _by_days(table: pa.Table, days: list[str]) -> pa.Table:
    wanted = pa.array([dt.date.fromisoformat(d) for d in days], pa.date32())
    return table.filter(pc.is_in(table["invoice_day"], value_set=wanted))


@pytest.mark.parametrize("change", ["none", "a price on the first day", "a line gone on the last day"])
def test_a_run_added_up_from_batches_reports_what_one_report_over_all_days_does(source, change):
    other = source
    if change == "a price on the first day":
        other = _replace(source, 0, "unit_price", Decimal("99.990"))
    elif change == "a line gone on the last day":
        last = in_line_order(source)
        other = last.slice(0, last.num_rows - 1)  # the last line of the last day
    whole = reconcile(source, other, label="lake").to_dict()

    run = RunReconciliation("lake")
    seen_source, seen_other = DistinctValues(), DistinctValues()
    for days in ([DAY1], [DAY2, "2011-08-12"], ["2011-09-25"]):
        part_source, part_other = _by_days(source, days), _by_days(other, days)
        run.add(reconcile(part_source, part_other, label="lake"))
        seen_source.add(part_source["customer_id"])
        seen_other.add(part_other["customer_id"])
    added = run.to_dict(customers=(len(seen_source), len(seen_other)))

    assert run.batches == 3 and added["ok"] is (change == "none") is whole["ok"]
    assert list(added.pop("days").values()) == whole.pop("days")  # every day, kept as compact texts
    assert added == whole  # message, totals (distinct customers too), rows


def test_distinct_values_counts_each_non_null_value_once_across_batches():
    values = DistinctValues()
    assert len(values) == 0
    values.add(pa.chunked_array([pa.array(["a", None, "b"]), pa.array(["a"])]))
    values.add(pa.array(["b", "c", None]))
    assert len(values) == 3
    many = pa.array([str(i) for i in range(200_000)])  # beyond the merge threshold, twice over
    values.add(many)
    values.add(many.slice(100_000))
    values.add(pa.array(["c", "zz"]))
    assert len(values) == 200_000 + 4  # "a", "b", "c", "zz" besides the numbers
