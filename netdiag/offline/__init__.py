"""Recordings offline: the Parquet recording format (write, read) and the report's pandas analysis."""
