"""The ``mlflow-lite ui`` web app: a prompt playground, a trace explorer and a cost dashboard.

A standalone FastAPI app served by uvicorn (both come with MLflow): JSON endpoints under ``/api``
and a static single-page app under ``/static`` (no build step; charts by the vendored Chart.js).
``import mlflow_lite_plugin`` never imports this package; the CLI imports :mod:`.app` on demand.
"""
