"""SQLite settings shared by the files several processes open at once (cache, budget ledger)."""

from __future__ import annotations

import sqlite3
import time


def enable_wal(db: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Switch to WAL (persistent, so a no-op after the first time). Processes that open a new
    file together race for this switch, and SQLite reports the loser as "database is locked"
    at once, without its busy handler: retry it until ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
