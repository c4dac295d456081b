"""A stand-in for vLLM's OpenAI server, for tests of the engine hllama starts: it answers every chat with the
command line it was started with, so a test can see what hllama asked for. ``--fail-to-start`` fails to start,
``--start-delay S`` takes S seconds to, and
``--chunk-delay S`` streams its answer a hundred times over, S seconds a chunk, and says when the client left."""

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--model")
parser.add_argument("--port", type=int)
parser.add_argument("--host")
parser.add_argument("--start-delay", type=float, default=0.0)
parser.add_argument("--chunk-delay", type=float, default=0.0)
known, _ = parser.parse_known_args()
if known.start_delay:
    print("Loading weights took a while", flush=True)
    time.sleep(known.start_delay)
if "--fail-to-start" in sys.argv:
    print("ValueError: this model cannot be loaded", flush=True)
    sys.exit(3)
ANSWER = " ".join(sys.argv[1:])


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, b"")
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"data": [{"id": known.model, "max_model_len": 2048}]}).encode())
        else:
            self._send(404, b"{}")

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if request.get("model") != known.model:
            self._send(404, json.dumps({"error": {"message": f"model {request.get('model')} does not exist"}}).encode())
            return
        chunks = [{"choices": [{"index": 0, "delta": {"content": word + " "}}]} for word in ANSWER.split()]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        chunks.append({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": len(chunks) - 1}})
        if known.chunk_delay:  # slowly, one chunk at a time, saying whether the client stayed to the end
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                for chunk in chunks * 100:
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(known.chunk_delay)
            except (BrokenPipeError, ConnectionResetError):
                print("the client left", flush=True)
            return
        body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        self._send(200, body.encode(), "text/event-stream")


ThreadingHTTPServer((known.host, known.port), Handler).serve_forever()
