"""The pipeline's controls: budget and alerts, rate limit, validation, metrics, routing."""
