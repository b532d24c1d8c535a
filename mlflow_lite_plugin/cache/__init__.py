"""Response caches: exact (memory, SQLite, Redis) and semantic (embeddings + FAISS + verification)."""

from .backends import CacheBackend, MemoryBackend, RedisBackend, SQLiteBackend, make_backend
from .stats import CacheStats

__all__ = ["CacheBackend", "CacheStats", "MemoryBackend", "RedisBackend", "SQLiteBackend", "make_backend"]
