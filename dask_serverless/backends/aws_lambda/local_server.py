"""A Lambda API server on loopback: the subset of the Lambda REST API (2015-03-31) that
boto3 uses here, backed by ``LocalLambdaService`` (handlers run in local containers).

    server = LocalLambdaServer(port=0).start()
    boto3.client("lambda", endpoint_url=server.url, ...)

Invoke (Event, RequestResponse, DryRun; ``X-Amz-Function-Error`` on handler errors),
CreateFunction, UpdateFunctionCode, UpdateFunctionConfiguration, GetFunction,
GetFunctionConfiguration, ListFunctions, DeleteFunction. Errors are answered the way
Lambda does (``x-amzn-ErrorType`` header, JSON body), so botocore raises the usual
``ClientError`` codes.

Only what AWS would accept is served: requests signed (SigV4, see ``local_auth``) with the
credentials the server was started with, or with a function's own key (Invoke only);
``Host`` naming this loopback server (a page in a browser cannot reach it through a DNS
name); JSON bodies typed ``application/json`` (no form or ``text/plain`` posts); bodies
bounded per operation before they are read. Function environments are redacted in
answers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import local_auth
from .local_auth import AuthError, Credentials, Keyring
from .local_service import MAX_SYNC_BYTES, ApiError, LocalLambdaService
from .packaging import MAX_ZIP_BYTES

logger = logging.getLogger(__name__)

_PREFIX = "/2015-03-31/functions"
_ASYNC_PREFIX = "/2019-09-25/functions"  # asynchronous invocation configuration
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_ZIP_REQUEST_BYTES = MAX_ZIP_BYTES * 4 // 3 + 2**20  # a base64 zip in a JSON body
_MAX_BODY = {"create": _ZIP_REQUEST_BYTES, "update_code": _ZIP_REQUEST_BYTES,
             "invoke": MAX_SYNC_BYTES}  # bytes; any other operation: _MAX_OTHER_BODY
_MAX_OTHER_BODY = 2**20
_JSON_BODY = {"create", "update_code", "update_configuration", "put_event_invoke_config"}
_ROUTES = [  # (method, path pattern, handler name)
    ("POST", re.compile(rf"{_PREFIX}/?$"), "create"),
    ("GET", re.compile(rf"{_PREFIX}/?$"), "list"),
    ("GET", re.compile(rf"{_PREFIX}/([^/]+)/?$"), "get"),
    ("GET", re.compile(rf"{_PREFIX}/([^/]+)/configuration/?$"), "get_configuration"),
    ("DELETE", re.compile(rf"{_PREFIX}/([^/]+)/?$"), "delete"),
    ("PUT", re.compile(rf"{_PREFIX}/([^/]+)/code/?$"), "update_code"),
    ("PUT", re.compile(rf"{_PREFIX}/([^/]+)/configuration/?$"), "update_configuration"),
    ("POST", re.compile(rf"{_PREFIX}/([^/]+)/invocations/?$"), "invoke"),
    ("PUT", re.compile(rf"{_ASYNC_PREFIX}/([^/]+)/event-invoke-config/?$"),
     "put_event_invoke_config"),
    ("GET", re.compile(rf"{_ASYNC_PREFIX}/([^/]+)/event-invoke-config/?$"),
     "get_event_invoke_config"),
    ("DELETE", re.compile(rf"{_ASYNC_PREFIX}/([^/]+)/event-invoke-config/?$"),
     "delete_event_invoke_config"),
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
        body = None
        try:
            self._check_host()
            name, args = _route(method, url.path)
            body = self._read_body(name)
            self._check_content_type(name, body)
            self.server.keyring.verify(name, method, self.path, self.headers, body)
            getattr(self, "_" + name)(*args, body=body, query=parse_qs(url.query))
        except (ApiError, AuthError) as exc:
            if body is None:  # an unread body must not be parsed as the next request
                self.close_connection = True
            self._json(exc.status, {"Type": "User", "message": exc.message},
                       {"x-amzn-ErrorType": exc.code})
        except Exception as exc:
            logger.exception("local Lambda API: %s %s failed", method, url.path)
            self._json(500, {"Type": "Service", "message": f"{type(exc).__name__}: {exc}"},
                       {"x-amzn-ErrorType": "ServiceException"})

    def _check_host(self) -> None:
        """Refuse a ``Host`` other than this server's loopback address (DNS rebinding)."""
        host = self.headers.get("Host") or ""
        port = self.server.server_address[1]
        allowed = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}
        if host.lower() not in allowed:
            raise ApiError(403, "AccessDeniedException",
                           f"Host header {host[:100]!r} does not name this server "
                           f"(127.0.0.1:{port})")

    def _read_body(self, operation: str) -> bytes:
        """The request body, refused unread when larger than the operation allows."""
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "InvalidRequestContentException",
                           "chunked bodies are not accepted: send Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        limit = _MAX_BODY.get(operation, _MAX_OTHER_BODY)
        if length < 0 or length > limit:
            raise ApiError(413, "RequestEntityTooLargeException",
                           f"{operation}: a {length} byte request body is over the "
                           f"{limit} byte limit")
        return self.rfile.read(length) if length else b""

    def _check_content_type(self, operation: str, body: bytes) -> None:
        """JSON bodies must say so (forms and text/plain posts are what browsers send
        cross-site without asking); an Invoke payload may also come untyped."""
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if not body or kind == "application/json" or (operation == "invoke" and not kind):
            return
        raise ApiError(415, "UnsupportedMediaTypeException",
                       f"{operation}: Content-Type {kind or '(none)'!r} is not application/json")

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

    def _put_event_invoke_config(self, name: str, *, body: bytes, query: dict) -> None:
        self._json(200, self.server.service.put_event_invoke_config(name, _body(body)))

    def _get_event_invoke_config(self, name: str, *, body: bytes, query: dict) -> None:
        self._json(200, self.server.service.get_event_invoke_config(name))

    def _delete_event_invoke_config(self, name: str, *, body: bytes, query: dict) -> None:
        self.server.service.delete_event_invoke_config(name)
        self._send(204, b"", {})

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
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)


def _route(method: str, path: str) -> tuple[str, list[str]]:
    for verb, pattern, name in _ROUTES:
        m = pattern.match(path)
        if verb == method and m:
            return name, [unquote(g) for g in m.groups()]
    raise ApiError(404, "UnknownOperationException",
                   f"{method} {path[:200]} is not part of the local Lambda API")


def _body(raw: bytes) -> dict[str, Any]:
    try:
        return json.loads(raw or b"{}")
    except ValueError as exc:
        raise ApiError(400, "InvalidRequestContentException", f"bad JSON body: {exc}") from exc


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    service: LocalLambdaService
    keyring: Keyring


class LocalLambdaServer:
    """HTTP server + ``LocalLambdaService``; ``start()`` serves in a thread.

    ``credentials``: what clients sign with; None: the boto3 chain of this process (its
    environment), else a generated pair. Credentials not from the environment are
    published for clients in this process (``local_auth``) and, generated ones with
    ``publish_file``, in a 0600 file of the Dask config directory for this user's other
    processes. ``credentials_source`` says where they came from.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 credentials: Credentials | None = None, publish_file: bool = False,
                 **service_options: Any):
        if host not in LOOPBACK:
            raise ValueError(f"the local Lambda API server binds to loopback only, not {host!r}")
        self.credentials_source = "given"
        if credentials is None:
            credentials = local_auth.environment_credentials()
            self.credentials_source = "environment"
        if credentials is None:
            credentials = Credentials.generate()
            self.credentials_source = "generated"
        self.credentials = credentials
        self.keyring = Keyring(credentials, service_options.get("region", "us-east-1"))
        self.service = LocalLambdaService(keyring=self.keyring, **service_options)
        self.httpd = _HTTPServer((host, port), _RequestHandler)
        self.httpd.service = self.service
        self.httpd.keyring = self.keyring
        self._thread: threading.Thread | None = None
        self.credentials_file = None
        if publish_file:  # whatever an earlier server on this port left is stale
            local_auth.unpublish_file(self.url, None)
        if self.credentials_source != "environment":
            local_auth.publish_in_process(self.url, credentials)
        if publish_file and self.credentials_source == "generated":
            self.credentials_file = local_auth.publish_file(self.url, credentials)

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
        if self.credentials_source != "environment":
            local_auth.publish_in_process(self.url, None)
        if self.credentials_file is not None:
            local_auth.unpublish_file(self.url, self.credentials)

    def __enter__(self) -> LocalLambdaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_process(*options: str, port: int | None = None,
                  timeout: float = 30.0) -> tuple[subprocess.Popen, str]:
    """Run ``dask-serverless local-lambda`` (with CLI ``options``) in a subprocess and
    wait until it answers; returns the process and its URL. Terminate it when done.

    The server gets generated credentials through its environment (never argv), and they
    are published in this process, so clients made here sign with them."""
    from ...storage.embedded import free_port

    port = port or free_port()
    creds = Credentials.generate()
    env = {**os.environ, **creds.env()}
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    proc = subprocess.Popen([sys.executable, "-m", "dask_serverless.cli", "local-lambda",
                             "--port", str(port), *options], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while not answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the local Lambda API server on port {port} did not "
                               f"start (exit code {proc.poll()})")
        time.sleep(0.1)
    local_auth.publish_in_process(url, creds)
    return proc, url


def answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status: it refuses unsigned calls)."""
    try:
        with urllib.request.urlopen(f"{url}{_PREFIX}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
