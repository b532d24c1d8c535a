"""notebooks/quickstart.ipynb runs top to bottom (nbclient), so it can never rot."""

from __future__ import annotations

import os

import pytest

from tests.helpers import REPO

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'nb.db'}")
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "true")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    resources = {"metadata": {"path": str(tmp_path)}}
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources=resources).execute()
    outputs = "".join(
        o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    assert "Echo: How do I reset my password?" in outputs
    assert "anthropic/claude-sonnet-4-5" in outputs
    assert "mlflow_lite.query" in outputs and "open the UI" in outputs
    assert "cached=semantic" in outputs and "cached=None" in outputs
    assert "attempts: 2" in outputs and "stopped after" in outputs
    assert "Use the 'Forgot password' link." in outputs and "expected_response" in outputs
    assert os.path.exists(tmp_path / "nb.db")
