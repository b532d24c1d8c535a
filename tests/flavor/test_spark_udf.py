"""The ``mlflow_lite`` flavor as a Spark UDF: ``mlflow.pyfunc.spark_udf`` on a local SparkSession.

Spark's Python workers are separate processes: they load the model themselves, read the API key
from their environment (inherited from this process through the JVM) and call the loopback stub
LLM server. A row whose question is in the model's warm cache is answered without a provider call.

Needs Java (17+ for pyspark 4) and the ``spark`` extra (``pip install -e .[spark]``, done by
``.ci/run``); without them these tests fail, they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.testing import StubLLMServer

from tests.helpers import KEY
from tests.served_app import KNOWN, KNOWN_ANSWER, PARAPHRASE, PROMPT, model_settings, stub_answer

pytestmark = pytest.mark.slow




def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else shutil.which("java")
    if java is None:
        pytest.fail(
            "Java is not installed (Spark needs a JRE 17+): apt-get install default-jre-headless, or set JAVA_HOME"
        )
    probe = subprocess.run([java, "-version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"{java} -version failed: {probe.stderr.strip()}")
    return java


@pytest.fixture(scope="module")
def spark():
    """One local SparkSession for the module (1 core, small memory, no UI), stopped at the end."""
    _java()
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        pytest.fail(f"pyspark is not installed ({exc}): pip install -e '.[spark]' (done by .ci/run)")
    # Set before the JVM starts: its Python workers inherit this environment.
    env = {
        "OPENAI_API_KEY": KEY,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        session = (
            SparkSession.builder.master("local[1]")
            .appName("mlflow-lite-spark-udf-test")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.memory", "512m")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.sql.shuffle.partitions", "1")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .getOrCreate()
        )
    except Exception as exc:  # no JVM gateway, bad Java version...
        _restore(saved)
        pytest.fail(f"could not start a local SparkSession: {type(exc).__name__}: {exc}")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    _restore(saved)


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def model_path(stub_server: StubLLMServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("spark-udf") / "support_bot"
    ml.save_model(path, **model_settings(stub_server.openai_base))
    return str(path)


def test_spark_udf_scores_a_dataframe(spark, model_path: str, stub: StubLLMServer):
    udf = mlflow.pyfunc.spark_udf(spark, model_path, result_type="string", env_manager="local")
    new = "How do I export my invoices as a CSV file?"
    frame = spark.createDataFrame([(1, PARAPHRASE), (2, new), (3, KNOWN)], ["id", "question"])
    rows = frame.withColumn("answer", udf("question")).orderBy("id").collect()
    assert [r["answer"] for r in rows] == [KNOWN_ANSWER, stub_answer(new), KNOWN_ANSWER]

    # Only the new question reached the provider, with the key from the workers' environment.
    [request] = stub.requests_to("/chat/completions")
    assert request.body["messages"][-1]["content"] == PROMPT.format(question=new)
    assert request.headers.get("authorization") == f"Bearer {KEY}"


def test_spark_udf_passes_params_to_the_provider(spark, model_path: str, stub: StubLLMServer):
    udf = mlflow.pyfunc.spark_udf(
        spark, model_path, result_type="string", env_manager="local", params={"temperature": 0.3}
    )
    new = "Which payment methods do you accept?"
    [row] = spark.createDataFrame([(new,)], ["question"]).select(udf("question").alias("answer")).collect()
    assert row["answer"] == stub_answer(new)
    [request] = stub.requests_to("/chat/completions")
    assert request.body["temperature"] == 0.3
