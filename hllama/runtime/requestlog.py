"""The request log: every answer kept in ``$HLLAMA_HOME/logs.db`` (SQLite), when ``log_requests`` is on.

Prompts are private, so it is off by default. Writing never slows or breaks an answer: entries go to a bounded
queue that one thread writes from, and a locked or full database (or a full queue) loses the entry, counted,
never the request. The schema changes by named migrations, each recorded once it has run, so an older
database is brought up to date when opened. ``retention`` bounds the log to its newest entries.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Who asked: a client's address (set per request by the server), or "cli".
current_client: ContextVar[str] = ContextVar("hllama_client", default="cli")

#: Entries waiting to be written; beyond this they are dropped (and counted).
QUEUE_SIZE = 1024


@dataclass
class Entry:
    """One answer, as the log keeps it."""

    model: str
    alias: str | None
    messages: list[dict[str, Any]]
    response: str
    settings: str  # the effective settings and the layer of each, as the X-Hllama-Effective header has them
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    duration_ms: float = 0.0
    first_token_ms: float = 0.0
    done_reason: str = ""
    client: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)


def _initial(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE responses (
        id TEXT PRIMARY KEY, created_at REAL NOT NULL, model TEXT NOT NULL, alias TEXT, client TEXT,
        settings TEXT, messages TEXT NOT NULL, response TEXT NOT NULL, thinking TEXT, tool_calls TEXT,
        prompt_tokens INTEGER, generated_tokens INTEGER, duration_ms REAL, first_token_ms REAL, done_reason TEXT)""")
    db.execute("CREATE INDEX responses_created_at ON responses (created_at)")


def _full_text(db: sqlite3.Connection) -> None:
    db.execute("CREATE VIRTUAL TABLE responses_fts USING fts5(messages, response, content='responses', "
               "content_rowid='rowid')")
    db.execute("INSERT INTO responses_fts (rowid, messages, response) SELECT rowid, messages, response FROM responses")
    db.execute("""CREATE TRIGGER responses_ai AFTER INSERT ON responses BEGIN
        INSERT INTO responses_fts (rowid, messages, response) VALUES (new.rowid, new.messages, new.response); END""")
    db.execute("""CREATE TRIGGER responses_ad AFTER DELETE ON responses BEGIN
        INSERT INTO responses_fts (responses_fts, rowid, messages, response)
        VALUES ('delete', old.rowid, old.messages, old.response); END""")


#: The schema's history, in order: each runs once, and its name is recorded.
MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("m001_initial", _initial),
    ("m002_full_text_search", _full_text),
]


def connect(path: Path, *, timeout: float = 5.0) -> sqlite3.Connection:
    """The log's database, its migrations applied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=timeout, check_same_thread=False)
    db.row_factory = sqlite3.Row
    with db:
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {row["name"] for row in db.execute("SELECT name FROM _migrations")}
        for name, migrate in MIGRATIONS:
            if name not in done:
                migrate(db)
                db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
    return db


class RequestLog:
    """Writes entries from a thread of its own; ``dropped`` is told of each entry lost."""

    def __init__(self, path: Path, *, retention: int, dropped: Callable[[], None] = lambda: None) -> None:
        self.path = path
        self.retention = retention
        self.dropped = dropped
        self._queue: queue.Queue[Entry | None] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._write_all, name="hllama-request-log", daemon=True)
        self._thread.start()

    def record(self, entry: Entry) -> None:
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``), then stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _write_all(self) -> None:
        try:
            db = connect(self.path, timeout=0.5)
        except sqlite3.Error as exc:
            log.warning("the request log %s cannot be opened (%s); answers are not logged", self.path, exc)
            db = None
        while (entry := self._queue.get()) is not None:
            if db is None:
                self.dropped()
                continue
            try:
                with db:
                    db.execute("INSERT INTO responses VALUES (:id, :created_at, :model, :alias, :client, :settings, "
                               ":messages, :response, :thinking, :tool_calls, :prompt_tokens, :generated_tokens, "
                               ":duration_ms, :first_token_ms, :done_reason)", _row(entry))
                    db.execute("DELETE FROM responses WHERE rowid <= (SELECT max(rowid) FROM responses) - ?",
                               (self.retention,))
            except sqlite3.Error as exc:  # locked, full, read-only: the entry is lost, the answer is not
                log.warning("a request log entry was lost: %s", exc)
                self.dropped()
        if db is not None:
            db.close()


def _row(entry: Entry) -> dict[str, Any]:
    row = asdict(entry)
    row["messages"] = json.dumps(entry.messages, ensure_ascii=False, default=str)
    row["tool_calls"] = json.dumps(entry.tool_calls, ensure_ascii=False)
    return row


def read(path: Path, *, limit: int = 10, model: str | None = None, since: float | None = None,
         search: str | None = None) -> list[dict[str, Any]]:
    """The newest entries first; ``search`` is SQLite full-text search over messages and answers."""
    if not path.is_file():
        return []
    db = connect(path)
    try:
        where, values = [], []
        if model:
            where.append("(r.model = ? OR r.alias = ?)")
            values += [model, model]
        if since is not None:
            where.append("r.created_at >= ?")
            values.append(since)
        source = "responses r"
        if search:
            source = "responses r JOIN responses_fts f ON f.rowid = r.rowid"
            where.append("responses_fts MATCH ?")
            values.append(search)
        query = (f"SELECT r.* FROM {source} {'WHERE ' + ' AND '.join(where) if where else ''} "
                 "ORDER BY r.created_at DESC LIMIT ?")
        try:
            rows = db.execute(query, [*values, limit]).fetchall()
        except sqlite3.OperationalError as exc:  # a search the full-text syntax cannot read
            from hllama.errors import InvalidOption

            raise InvalidOption(f"--search: {exc}") from None
        return [{**dict(row), "messages": json.loads(row["messages"]), "tool_calls": json.loads(row["tool_calls"])}
                for row in rows]
    finally:
        db.close()


def clear(path: Path) -> int:
    """Delete every entry; how many there were."""
    if not path.is_file():
        return 0
    db = connect(path)
    try:
        with db:
            count = db.execute("SELECT count(*) FROM responses").fetchone()[0]
            db.execute("DELETE FROM responses")
        db.execute("VACUUM")
        return int(count)
    finally:
        db.close()
