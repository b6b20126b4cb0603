"""The pipeline: each interval collects, enriches, diagnoses and hands one finished record to every sink."""
