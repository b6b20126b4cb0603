"""Sinks: each takes the finished interval record (live view, plain text, NDJSON, run summary)."""
