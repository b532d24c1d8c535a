"""Traces: spans recorded in memory and written to MLflow (thread or exporter process)."""
