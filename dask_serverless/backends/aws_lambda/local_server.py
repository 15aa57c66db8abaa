"""A Lambda API server on loopback: the subset of the Lambda REST API (2015-03-31) that
boto3 uses here, backed by ``LocalLambdaService`` (handlers run in local containers).

    server = LocalLambdaServer(port=0).start()
    boto3.client("lambda", endpoint_url=server.url, ...)

Invoke (Event, RequestResponse, DryRun; ``X-Amz-Function-Error`` on handler errors),
CreateFunction, UpdateFunctionCode, UpdateFunctionConfiguration, GetFunction,
GetFunctionConfiguration, ListFunctions, DeleteFunction. Errors are answered the way
Lambda does (``x-amzn-ErrorType`` header, JSON body), so botocore raises the usual
``ClientError`` codes.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .local_service import ApiError, LocalLambdaService

logger = logging.getLogger(__name__)

_PREFIX = "/2015-03-31/functions"
_ROUTES = [  # (method, path pattern, handler name)
    ("POST", re.compile(rf"{_PREFIX}/?$"), "create"),
    ("GET", re.compile(rf"{_PREFIX}/?$"), "list"),
    ("GET", re.compile(rf"{_PREFIX}/([^/]+)/?$"), "get"),
    ("GET", re.compile(rf"{_PREFIX}/([^/]+)/configuration/?$"), "get_configuration"),
    ("DELETE", re.compile(rf"{_PREFIX}/([^/]+)/?$"), "delete"),
    ("PUT", re.compile(rf"{_PREFIX}/([^/]+)/code/?$"), "update_code"),
    ("PUT", re.compile(rf"{_PREFIX}/([^/]+)/configuration/?$"), "update_configuration"),
    ("POST", re.compile(rf"{_PREFIX}/([^/]+)/invocations/?$"), "invoke"),
]


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: boto3 reuses connections
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            for verb, pattern, name in _ROUTES:
                m = pattern.match(url.path)
                if verb == method and m:
                    args = [unquote(g) for g in m.groups()]
                    getattr(self, "_" + name)(*args, body=body, query=parse_qs(url.query))
                    return
            raise ApiError(404, "UnknownOperationException",
                           f"{method} {url.path} is not part of the local Lambda API")
        except ApiError as exc:
            self._json(exc.status, {"Type": "User", "message": exc.message},
                       {"x-amzn-ErrorType": exc.code})
        except Exception as exc:
            logger.exception("local Lambda API: %s %s failed", method, url.path)
            self._json(500, {"Type": "Service", "message": f"{type(exc).__name__}: {exc}"},
                       {"x-amzn-ErrorType": "ServiceException"})

    # -- operations ------------------------------------------------------------------------
    def _create(self, *, body: bytes, query: dict) -> None:
        self._json(201, self.server.service.create_function(_body(body)))

    def _list(self, *, body: bytes, query: dict) -> None:
        marker = query.get("Marker", [None])[0]
        max_items = int(query["MaxItems"][0]) if "MaxItems" in query else None
        self._json(200, self.server.service.list_functions(marker, max_items))

    def _get(self, name: str, *, body: bytes, query: dict) -> None:
        self._json(200, self.server.service.get_function(name))

    def _get_configuration(self, name: str, *, body: bytes, query: dict) -> None:
        self._json(200, self.server.service.get_configuration(name))

    def _delete(self, name: str, *, body: bytes, query: dict) -> None:
        self.server.service.delete_function(name)
        self._send(204, b"", {})

    def _update_code(self, name: str, *, body: bytes, query: dict) -> None:
        self._json(200, self.server.service.update_code(name, _body(body)))

    def _update_configuration(self, name: str, *, body: bytes, query: dict) -> None:
        self._json(200, self.server.service.update_configuration(name, _body(body)))

    def _invoke(self, name: str, *, body: bytes, query: dict) -> None:
        kind = self.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
        status, payload, function_error = self.server.service.invoke(name, body, kind)
        headers = {"X-Amz-Executed-Version": "$LATEST"}
        if function_error:
            headers["X-Amz-Function-Error"] = "Unhandled"
        self._send(status, payload, {**headers, "Content-Type": "application/json"})

    # -- responses -------------------------------------------------------------------------
    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(),
                   {"Content-Type": "application/json", **(headers or {})})

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("x-amzn-RequestId", "local")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _body(raw: bytes) -> dict[str, Any]:
    try:
        return json.loads(raw or b"{}")
    except ValueError as exc:
        raise ApiError(400, "InvalidRequestContentException", f"bad JSON body: {exc}") from exc


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    service: LocalLambdaService


class LocalLambdaServer:
    """HTTP server + ``LocalLambdaService``; ``start()`` serves in a thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 service: LocalLambdaService | None = None, **service_options: Any):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the local Lambda API server binds to loopback only, not {host!r}")
        self.service = service or LocalLambdaService(**service_options)
        self.httpd = _HTTPServer((host, port), _RequestHandler)
        self.httpd.service = self.service
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalLambdaServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="dask-serverless-local-lambda")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.service.close()

    def __enter__(self) -> LocalLambdaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_process(*options: str, port: int | None = None,
                  timeout: float = 30.0) -> tuple[subprocess.Popen, str]:
    """Run ``dask-serverless local-lambda`` (with CLI ``options``) in a subprocess and
    wait until it answers; returns the process and its URL. Terminate it when done."""
    from ...storage.embedded import free_port

    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dask_serverless.cli", "local-lambda",
                             "--port", str(port), *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}{_PREFIX}/", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the local Lambda API server on port {port} did not "
                                   f"start (exit code {proc.poll()})") from None
            time.sleep(0.1)
