"""retail-etl: the Online Retail data set through the service into a reconciled Parquet lake."""
