"""Where the job's results go: the lake, a warehouse, a message queue; one module each.

Every destination implements `base.Destination` (publish a day, replace a day, verify a day). The lake is
written first and is the reference: the other destinations receive each day as the lake holds it
(`lake.LakeDestination.read_day`) and are reconciled against it. A new destination is one new module
here plus its option in `fanout.open_destinations`.

Importing this package is cheap: the drivers (duckdb, psycopg, pika) load with the module that needs them.
"""

from etl.destinations.base import DayReceipt, DayTables, DayTotals, Destination

__all__ = ["DayReceipt", "DayTables", "DayTotals", "Destination"]
