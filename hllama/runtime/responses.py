"""Responses kept for the Responses API (``store``): a later request continues one by its id
(``previous_response_id``), and ``GET``/``DELETE /v1/responses/{id}`` read or remove it.

Each row holds the response as it was answered and the conversation that led to it (its input items, those of
the responses it continued included), so a continuation needs one read. SQLite under ``HLLAMA_HOME``, bounded:
rows older than the retention go, and only the newest :data:`MAX_KEPT` stay.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from hllama.errors import ResponseNotFound

#: How many responses are kept at most (the oldest go first), and for how long.
MAX_KEPT = 10_000
RETENTION_SECONDS = 30 * 86400


class ResponseStore:
    def __init__(self, path: Path, *, retention: float = RETENTION_SECONDS, max_kept: int = MAX_KEPT) -> None:
        self.path, self.retention, self.max_kept = path, retention, max_kept
        self._lock = threading.Lock()
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=10)
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, created REAL NOT NULL, "
                               "items TEXT NOT NULL, response TEXT NOT NULL)")
            connection.execute("CREATE INDEX IF NOT EXISTS responses_created ON responses (created)")
            self._ready = True
        return connection

    def put(self, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """Keep ``response`` (a response object) and the input items that led to it; the oldest go past the bounds."""
        now = time.time()
        with self._lock, self._connect() as connection:
            connection.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                               (response["id"], now, json.dumps(items), json.dumps(response)))
            connection.execute("DELETE FROM responses WHERE created < ?", (now - self.retention,))
            connection.execute("DELETE FROM responses WHERE id NOT IN (SELECT id FROM responses ORDER BY created "
                               "DESC LIMIT ?)", (self.max_kept,))

    def get(self, response_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The response kept under ``response_id`` and the input items that led to it."""
        with self._lock, self._connect() as connection:
            row = connection.execute("SELECT response, items FROM responses WHERE id = ? AND created >= ?",
                                     (response_id, time.time() - self.retention)).fetchone()
        if row is None:
            raise ResponseNotFound(response_id)
        return json.loads(row[0]), json.loads(row[1])

    def conversation(self, response_id: str) -> list[dict[str, Any]]:
        """The items a continuation of ``response_id`` starts from: what led to it, then what it answered."""
        response, items = self.get(response_id)
        return [*items, *(item for item in response.get("output", []) if item.get("type") != "reasoning")]

    def delete(self, response_id: str) -> None:
        with self._lock, self._connect() as connection:
            removed = connection.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount
        if not removed:
            raise ResponseNotFound(response_id)
