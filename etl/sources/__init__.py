"""Reading a source, apart from validating it: one module per concern, so that a new input shape is one
new file (and one line in `containers.read_bytes`).

| module          | what it decides                                                             |
| --------------- | --------------------------------------------------------------------------- |
| `download`      | where the bytes come from: path, `file:` URL, http(s) URL (cached, retried) |
| `containers`    | the format from the leading bytes; gzip and zip around it                   |
| `delimited`     | CSV / `;` / tab / `|` text: encoding, parsing with Arrow                    |
| `header`        | the delimiter, and which column is which (case, spaces, order)              |
| `workbook`      | UCI's .xlsx: typed cells as the export's text                               |
| `dates`         | day-first or month-first, from every InvoiceDate                            |
| `numbers`       | decimal point or decimal comma, from every UnitPrice                        |

`etl.load.load_source` chains them; `etl.validate` only applies what they decided (`RawSource.dialect`).
"""
