"""State shared between threads, processes and replicas: memory, SQLite and Redis."""
