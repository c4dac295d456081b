"""A small HTTP server on 127.0.0.1 that speaks the Hub's download protocol for local folders.

It answers what ``huggingface_hub`` asks when it downloads (``repo_info``, the recursive tree,
``HEAD``/``GET`` on ``resolve/`` with ranges) and the Hub's error headers for a missing repo or a
gated one, so ``pull`` runs the real client code against it through ``HF_ENDPOINT``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .tinymodel import file_oid

_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)(?:/revision/(?P<rev>[^/]+))?$")  # "gpt2" too
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass
class FakeRepo:
    folder: Path
    revision: str
    gated: bool = False

    def files(self) -> list[Path]:
        return sorted(path for path in self.folder.rglob("*") if path.is_file())


class FakeHub:
    """``with FakeHub({"org/name": FakeRepo(...)}) as hub:`` then ``HF_ENDPOINT=hub.url``.

    ``rate`` (bytes per second) makes file downloads as slow as a real network, to watch progress.
    """

    def __init__(self, repos: dict[str, FakeRepo], *, rate: int | None = None) -> None:
        self.repos = repos
        self.rate = rate
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def _answer(self, *, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                for pattern, method in ((_INFO, self._info), (_TREE, self._tree), (_RESOLVE, self._resolve)):
                    if match := pattern.match(path):
                        repo = hub.repos.get(match["repo"])
                        if repo is None:
                            return self._error(401, "RepoNotFound", "Repository not found")
                        if repo.gated and method != self._info:
                            return self._error(403, "GatedRepo", "Access to this model is restricted")
                        if match["rev"] not in (None, "main", repo.revision):
                            return self._error(404, "RevisionNotFound", "Invalid rev id")
                        return method(repo, match, head=head)
                self._error(404, None, "Not found")

            def _info(self, repo: FakeRepo, match: re.Match, *, head: bool) -> None:
                name = match["repo"]
                siblings = [{"rfilename": str(path.relative_to(repo.folder)), "size": path.stat().st_size}
                            for path in repo.files()]
                self._json({"_id": name, "id": name, "modelId": name, "sha": repo.revision, "private": False,
                            "gated": "auto" if repo.gated else False, "disabled": False, "downloads": 0,
                            "likes": 0, "tags": ["transformers", "safetensors"], "library_name": "transformers",
                            "lastModified": "2026-01-01T00:00:00.000Z", "siblings": siblings}, head=head)

            def _tree(self, repo: FakeRepo, match: re.Match, *, head: bool) -> None:
                entries = []
                for path in repo.files():
                    oid, lfs = file_oid(path)
                    entry = {"type": "file", "oid": oid if not lfs else "0" * 40, "size": path.stat().st_size,
                             "path": str(path.relative_to(repo.folder))}
                    if lfs:
                        entry["lfs"] = {"oid": oid, "size": path.stat().st_size, "pointerSize": 134}
                    entries.append(entry)
                self._json(entries, head=head)

            def _resolve(self, repo: FakeRepo, match: re.Match, *, head: bool) -> None:
                file = repo.folder / match["path"]
                if not file.is_file():
                    return self._error(404, "EntryNotFound", "Entry not found")
                data = file.read_bytes()
                oid, lfs = file_oid(file)
                status, body = 200, data
                if (ranged := re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))) is not None:
                    start = int(ranged[1])
                    end = min(int(ranged[2]) if ranged[2] else len(data) - 1, len(data) - 1)
                    status, body = 206, data[start:end + 1]
                    self.send_response(status)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    self.send_response(status)
                self.send_header("X-Repo-Commit", repo.revision)
                self.send_header("ETag", f'"{oid}"')
                if lfs:
                    self.send_header("X-Linked-Etag", f'"{oid}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if not head:
                    self._send_slowly(body)

            def _send_slowly(self, body: bytes) -> None:
                piece = 16 * 1024 if hub.rate else len(body) or 1
                try:
                    for start in range(0, len(body), piece):
                        self.wfile.write(body[start:start + piece])
                        if hub.rate:
                            self.wfile.flush()
                            time.sleep(piece / hub.rate)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up

            def _json(self, document: object, *, head: bool) -> None:
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, status: int, code: str | None, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        return Handler
