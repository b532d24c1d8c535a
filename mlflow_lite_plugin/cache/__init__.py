"""Response caches: exact (memory, SQLite, Redis) and semantic (embeddings + FAISS + verification)."""

from mlflow_lite_plugin.cache.backends import CacheBackend, MemoryBackend, RedisBackend, SQLiteBackend, make_backend
from mlflow_lite_plugin.cache.stats import CacheStats

__all__ = ["CacheBackend", "CacheStats", "MemoryBackend", "RedisBackend", "SQLiteBackend", "make_backend"]
