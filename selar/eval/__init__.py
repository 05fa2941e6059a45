"""Evaluation: benchmark registry, grading, resumable runs, metrics and reports."""
