"""MLflow plugins (run-context tags, the evaluator), loaded by MLflow through entry points: keep them light."""
