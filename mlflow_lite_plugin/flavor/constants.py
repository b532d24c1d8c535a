"""Names of the ``mlflow_lite`` flavor: its MLflow flavor name, the files a saved model holds and
the keys of its settings file (``mlflow.openai.constant`` plays the same part for MLflow's own)."""

FLAVOR_NAME = "mlflow_lite"
CONFIG_FILE = "mlflow_lite.yaml"
SEMANTIC_CACHE_DIR = "semantic_cache"
# The settings file's key naming the saved semantic cache's directory (written at save, read at load).
SEMANTIC_CACHE_DIR_KEY = "semantic_cache_dir"
ANSWER_COLUMN = "answer"
DEFAULT_PROMPT = "{prompt}"
# Predict-time parameters a caller may override per request (None: the saved setting applies).
PREDICT_PARAMS = {"temperature": "double", "max_tokens": "long", "top_p": "double"}
DETAIL_COLUMNS = (
    "text", "model", "cost", "latency", "prompt_tokens", "completion_tokens", "total_tokens",
    "cached", "validation_passed", "validation_errors", "trace_id", "error",
)
# Set by `mlflow models serve` in its workers (mlflow.pyfunc.scoring_server._SERVER_MODEL_PATH).
SERVED_BY_MLFLOW_ENV = "__pyfunc_model_path__"
