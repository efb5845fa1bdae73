"""Plumbing shared by the tests' local HTTP servers.

They stand in for endpoints that cannot run here (a remote teacher or judge API, a chat
webhook) or sit in front of the real vLLM to record and cut requests. Each test defines what its
server answers; this module only reads bodies, writes replies and runs the server.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing, with body and reply helpers."""

    def read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def respond(self, status: int, data: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass

    def respond_completion(self, body: dict, content: str) -> None:
        """An OpenAI chat completion: ``content`` as each of the request's ``n`` choices."""
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
            for i in range(body.get("n", 1))
        ]
        usage = {"prompt_tokens": 10, "completion_tokens": 5}
        self.respond(200, json.dumps({"choices": choices, "usage": usage}).encode())


def serve(handler: type[BaseHTTPRequestHandler], port: int = 0) -> ThreadingHTTPServer:
    """Serve ``handler`` on 127.0.0.1 (``port`` 0: any free port) from a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def base_url(server: ThreadingHTTPServer, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.server_address[1]}"
