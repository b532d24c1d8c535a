"""Validation: rules, the incremental JSON stream checker and the pipeline stage."""
