"""Prompt templates (built-in and MLflow Prompt Registry) and their approval workflow."""
