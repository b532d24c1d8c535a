"""What users run: the ``mlflow-lite`` command, the demo and the web UI."""
