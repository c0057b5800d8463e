"""The source's dialect: date order and decimal mark decided from every value, the header's delimiter and
names, the options that override them — and every shape of the sample validating to the same lines."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from etl.dialect import ISO_DATES, DateFormat, SourceDialect, SourceOptions
from etl.errors import SourceError
from etl.load import load_source
from etl.schema import SOURCE_COLUMNS, DayRange
from etl.sources.dates import detect_date_format
from etl.sources.header import canonical_name, split_header
from etl.sources.numbers import detect_decimal
from etl.validate import validate
from tests.etl.conftest import SAMPLE_CSV, Shapes
from tests.support.shapes import BASE_SHAPES, SHAPES, delimited, sample_rows

# --- --date-format ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "order", "separator", "pattern"),
    [
        ("%d/%m/%Y %H:%M", "dmy", "/", "%d/%m/%Y %H:%M"),
        ("%m/%d/%Y %H:%M:%S", "mdy", "/", "%m/%d/%Y %H:%M"),
        ("%d.%m.%Y %H:%M", "dmy", ".", "%d.%m.%Y %H:%M"),
        ("%Y-%m-%d %H:%M:%S", "ymd", "-", "%Y-%m-%d %H:%M:%S"),
        ("  %Y/%m/%dT%H:%M ", "ymd", "/", "%Y/%m/%d %H:%M"),
    ],
)
def test_a_date_format_is_read_from_its_strptime_spelling(
    text: str, order: str, separator: str, pattern: str
) -> None:
    parsed = DateFormat.from_pattern(text)

    assert (parsed.order, parsed.separator, parsed.pattern) == (order, separator, pattern)
    assert parsed.basis == "given"


@pytest.mark.parametrize(
    "text", ["%d/%m/%y %H:%M", "%d/%m/%Y", "%d/%d/%Y %H:%M", "%Y-%d-%m %H:%M", "%d/%m-%Y %H:%M", "dd/mm/yyyy"]
)
def test_a_date_format_outside_the_grammar_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(SourceError, match="not supported") as error:
        DateFormat.from_pattern(text)
    assert "\n" not in str(error.value)


def test_dialect_options_take_their_usual_spellings() -> None:
    options = SourceOptions.from_text(date_format="%d/%m/%Y %H:%M", delimiter="tab", decimal="comma")
    assert options == SourceOptions(DateFormat("dmy", "/"), "\t", ",", None)
    assert SourceOptions.from_text(delimiter="\\t", encoding="UTF-16") == SourceOptions(
        None, "\t", None, "utf-16"
    )
    assert SourceOptions.from_text(date_format="", delimiter="") == SourceOptions()


# --- day-first or month-first ----------------------------------------------------------------------


def _dates(*values: str) -> pa.Array:
    return pa.array(list(values), pa.string())


def test_iso_dates_need_no_decision() -> None:
    assert detect_date_format(_dates("2010-12-01 08:26:00", "2011-01-02 10:00:00"), "s").is_iso


def test_a_first_field_over_12_settles_day_first_for_every_value() -> None:
    found = detect_date_format(_dates("01/12/2010 08:26", "02/12/2010 09:00", " 25/09/2011 10:00 "), "s")

    assert (found.order, found.separator) == ("dmy", "/")
    assert found.basis == "detected: 1 of 3 dates have a first field (day) > 12"


def test_a_second_field_over_12_settles_month_first() -> None:
    found = detect_date_format(_dates("12/1/2010 8:26", "12/13/2010 8:26", "12/13/2010 8:26"), "s")

    assert (found.order, found.separator) == ("mdy", "/")
    assert found.basis == "detected: 2 of 3 dates have a second field (day) > 12"


def test_iso_values_beside_day_first_ones_and_unreadable_ones_do_not_disturb_the_decision() -> None:
    found = detect_date_format(_dates("2010-12-01 08:26:00", "", "garbage", "25.09.2011 10:00"), "s")
    assert (found.order, found.separator) == ("dmy", ".")


def test_both_orders_in_one_source_contradict() -> None:
    with pytest.raises(SourceError) as error:
        detect_date_format(_dates("25/09/2011 10:00", "9/25/2011 10:00", "9/25/2011 11:00"), "src.csv")
    assert str(error.value) == (
        "src.csv: InvoiceDate contradicts itself: 1 dates read only day-first (e.g. '25/09/2011 10:00') "
        "and 2 only month-first (e.g. '9/25/2011 10:00'): pass --date-format"
    )


def test_dates_that_cannot_tell_stop_the_run_and_ask_for_the_format() -> None:
    with pytest.raises(SourceError) as error:
        detect_date_format(_dates("01/12/2010 08:26", "01/12/2010 08:26", "02/12/2010 09:00"), "src.csv")
    assert str(error.value) == (
        "src.csv: dates are ambiguous (all 3 day/month dates have both fields <= 12, e.g. "
        "'01/12/2010 08:26'): pass --date-format, e.g. --date-format \"%d/%m/%Y %H:%M\""
    )


def test_dates_whose_day_equals_their_month_read_the_same_either_way() -> None:
    found = detect_date_format(_dates("01/01/2011 08:26", "12/12/2011 09:00"), "s")
    assert found.order in ("dmy", "mdy")
    assert "equal" in found.basis


# --- decimal mark ----------------------------------------------------------------------------------


def _prices(*values: str) -> pa.Array:
    return pa.array(list(values), pa.string())


def test_decimal_points_or_none() -> None:
    assert detect_decimal(_prices("2.55", "3", "0.001"), "s")[0] == "."
    assert detect_decimal(_prices("2", "3"), "s")[0] == "."


def test_decimal_commas() -> None:
    assert detect_decimal(_prices("2,55", "3", "1,250"), "s") == (
        ",",
        "detected: 2 prices have a decimal comma",
    )


def test_points_and_commas_contradict() -> None:
    with pytest.raises(
        SourceError, match=r"mixes decimal points \(1 prices, e.g. '2.55'\) and decimal commas"
    ):
        detect_decimal(_prices("2.55", "2,55", "2,55"), "s")


def test_commas_that_may_be_thousands_separators_are_ambiguous() -> None:
    with pytest.raises(SourceError, match=r"UnitPrice is ambiguous.*'1,250'.*pass --decimal"):
        detect_decimal(_prices("1,250", "3", "12,500", "1,000,000"), "s")


# --- header ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelled", "canonical"),
    [
        ("InvoiceNo", "InvoiceNo"),
        ("invoiceno", "InvoiceNo"),
        (" Invoice No ", "InvoiceNo"),
        ("INVOICE_NO", "InvoiceNo"),
        ("Invoice", "InvoiceNo"),
        ("unit-price", "UnitPrice"),
        ("Price", "UnitPrice"),
        ("Customer ID", "CustomerID"),
        ("customer.id", "CustomerID"),
        ("Invoice Date", "InvoiceDate"),
        ("Customer", None),
        ("Date", None),
    ],
)
def test_header_names_are_matched_without_case_or_spacing(spelled: str, canonical: str | None) -> None:
    assert canonical_name(spelled) == canonical


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_the_delimiter_is_the_one_that_splits_the_header(delimiter: str) -> None:
    line = delimiter.join(["Extra", *reversed(SOURCE_COLUMNS)])
    header = split_header(line, "s")
    assert header.delimiter == delimiter
    assert header.column_names == ["_other_0", *reversed(SOURCE_COLUMNS)]


def test_a_column_spelled_twice_is_a_duplicate() -> None:
    with pytest.raises(SourceError, match=r"duplicate column\(s\) InvoiceNo \('InvoiceNo', 'invoice no'\)"):
        split_header(",".join([*SOURCE_COLUMNS, "invoice no"]), "s")


def test_a_delimiter_given_that_does_not_split_the_header_says_what_would() -> None:
    with pytest.raises(
        SourceError, match=r"not split by the --delimiter given \(comma\); it looks tab-separated"
    ):
        split_header("\t".join(SOURCE_COLUMNS), "s", ",")


# --- through the loader ----------------------------------------------------------------------------


def test_the_issues_day_first_line_lands_on_the_first_of_december(tmp_path: Path) -> None:
    source = tmp_path / "uk.csv"
    rows = sample_rows()[:2]
    rows[0]["InvoiceDate"], rows[1]["InvoiceDate"] = "01/12/2010 08:26", "13/12/2010 08:26"
    rows[1]["InvoiceNo"] = "536366"  # one invoice has one day
    source.write_bytes(delimited(rows))

    raw = load_source(str(source))
    lines = validate(raw, DayRange()).lines

    assert raw.dialect.date_format.pattern == "%d/%m/%Y %H:%M"
    assert lines["invoice_date"].to_pylist() == [
        dt.datetime(2010, 12, 1, 8, 26),
        dt.datetime(2010, 12, 13, 8, 26),
    ]


def test_the_kaggle_shape_settles_month_first_from_its_own_days(shapes: Shapes) -> None:
    raw = load_source(str(shapes.path("data.csv")))

    assert raw.shape == "kaggle-csv"
    assert raw.dialect.date_format == DateFormat("mdy", "/")
    assert raw.dialect.date_format.basis == "detected: 1,987 of 8,326 dates have a second field (day) > 12"


def test_the_workbook_needs_no_decision(shapes: Shapes) -> None:
    raw = load_source(str(shapes.path("Online Retail.xlsx")))
    assert raw.dialect.date_format == ISO_DATES
    assert raw.dialect.date_format.basis == "typed workbook cells"
    assert raw.dialect.delimiter is None


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_shape_validates_to_the_canonical_lines(name: str, tmp_path: Path) -> None:
    shape = SHAPES[name]
    source = tmp_path / shape.file_name
    source.write_bytes(shape.build(sample_rows()))
    canonical = validate(load_source(str(SAMPLE_CSV)), DayRange())

    raw = load_source(str(source))
    validated = validate(raw, DayRange())

    assert {key: raw.dialect.describe().get(key) for key in shape.dialect} == shape.dialect
    assert validated.rejects.num_rows == 0
    assert validated.lines.equals(canonical.lines)
    assert raw.shape == ("export-csv" if name.startswith("lower-case") else "csv") + (
        "+gzip" if name.endswith("gzip") else ""
    )


def test_options_override_detection(tmp_path: Path) -> None:
    source = tmp_path / "european.csv"
    source.write_bytes(BASE_SHAPES["semicolons and decimal commas"].build(sample_rows()))

    raw = load_source(
        str(source), options=SourceOptions.from_text(date_format="%d/%m/%Y %H:%M", delimiter=";", decimal=",")
    )

    assert raw.dialect == SourceDialect(DateFormat("dmy", "/"), ",", ";", "utf-8")
    assert raw.dialect.date_format.basis == "given (--date-format)"
    assert raw.dialect.decimal_basis == "given (--decimal)"


def test_a_decimal_comma_source_rejects_a_point_with_the_cell_as_written(tmp_path: Path) -> None:
    rows = sample_rows()[:3]
    rows[0]["UnitPrice"], rows[1]["UnitPrice"], rows[2]["UnitPrice"] = "2,55", "3.39", "1,5"
    rows[2]["CustomerID"] = "17850,0"  # an id's zero fraction reads with either mark
    source = tmp_path / "european.csv"
    source.write_bytes(delimited(rows, delimiter=";"))

    with pytest.raises(SourceError, match="mixes decimal points"):
        load_source(str(source))
    validated = validate(load_source(str(source), options=SourceOptions(decimal=",")), DayRange())

    assert validated.lines["unit_price"].to_pylist() == [Decimal("2.550"), Decimal("1.500")]
    assert validated.lines["customer_id"].to_pylist() == ["17850", "17850"]
    assert validated.rejects["reason"].to_pylist() == ["unparseable UnitPrice '3.39'"]
    assert validated.rejects["source_row"].to_pylist() == [2]


def test_an_encoding_given_reads_excels_unicode_text(tmp_path: Path) -> None:
    # Excel's "Unicode Text" export: tab-separated UTF-16 with a BOM, refused without --encoding.
    source = tmp_path / "unicode.txt"
    source.write_bytes(delimited(sample_rows()[:5], delimiter="\t").decode().encode("utf-16"))
    with pytest.raises(SourceError, match="UTF-16"):
        load_source(str(source))

    raw = load_source(str(source), options=SourceOptions.from_text(encoding="utf-16"))

    assert raw.num_rows == 5
    assert raw.dialect.delimiter == "\t" and raw.dialect.encoding == "utf-16"
    assert raw.table.column("InvoiceNo")[0].as_py() == "536365"


def test_an_encoding_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / "latin1.csv"
    source.write_bytes(
        delimited(sample_rows()[:2]) + "536366,1,CAFÉ,1,2010-12-01 08:26:00,1,,UK\n".encode("latin-1")
    )
    with pytest.raises(SourceError, match=r"not valid utf-8 text \(byte 0xc9 at offset \d+\)"):
        load_source(str(source), options=SourceOptions.from_text(encoding="utf-8"))


def test_dutch_dashes_are_day_first_dates_too() -> None:
    found = detect_date_format(_dates("1-12-2010 08:26", "13-12-2010 08:26", "2010-12-01 08:26:00"), "s")
    assert (found.order, found.separator, found.pattern) == ("dmy", "-", "%d-%m-%Y %H:%M")


def test_the_quick_iso_check_leaves_anything_else_to_the_full_decision() -> None:
    # Sliced and chunked columns, short values and padding must not fool the check over raw buffers.
    column = pa.chunked_array([_dates("x", "2010-12-01 08:26:00").slice(1), _dates(" 25/12/2010 08:26")])
    assert detect_date_format(column, "s").order == "dmy"
    assert detect_date_format(_dates("2010-12-01 08:26:00", ""), "s").is_iso
    assert detect_date_format(_dates("2010-12-01 08:26:00").slice(0, 0), "s").is_iso
