"""The local Lambda API server against a caller who is not its user (another local process,
a web page in a local browser) and the Lambda events against a forger: what is refused,
and that the real clients keep working."""

from __future__ import annotations

import base64
import email.message
import http.client
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import zipfile
from datetime import UTC, datetime, timedelta

import boto3
import dask
import pytest
import squatter
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError

from dask_serverless.backends.aws_lambda import (
    deploy,
    events,
    handler,
    local_auth,
    local_server,
    local_service,
)
from dask_serverless.backends.aws_lambda.local_auth import AuthError, Credentials
from dask_serverless.backends.aws_lambda.local_server import LocalLambdaServer
from dask_serverless.backends.aws_lambda.settings import LambdaSettings, make_client
from dask_serverless.errors import ForeignListenerError
from dask_serverless.protocol.wire import Invocation
from dask_serverless.storage import serialize
from dask_serverless.storage.embedded import free_port
from dask_serverless.storage.serialize import Purpose

PROBE = '''
import os, boto3

def handler(event, context):
    out = {"env": sorted(os.environ), "key": os.environ.get("AWS_ACCESS_KEY_ID")}
    client = boto3.client("lambda", endpoint_url=event["url"], region_name="us-east-1")
    try:
        client.list_functions()
        out["list"] = "allowed"
    except Exception as exc:
        out["list"] = getattr(exc, "response", {}).get("Error", {}).get("Code", repr(exc))
    return out
'''


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server():
    srv = LocalLambdaServer(max_containers=2, keep_alive=30,
                            credentials=Credentials.generate()).start()
    yield srv
    srv.stop()


def _client(srv, creds: Credentials | None = None):
    creds = creds or srv.credentials
    return boto3.client("lambda", endpoint_url=srv.url, region_name="us-east-1",
                        **creds.client_kwargs())


def _create(client, name: str, env: dict[str, str] | None = None,
            code: bytes | None = None) -> dict:
    return client.create_function(
        FunctionName=name, Runtime="python3.11", Role="arn:aws:iam::000000000000:role/x",
        Handler="probe.handler", Code={"ZipFile": code or _zip({"probe.py": PROBE})},
        Environment={"Variables": env or {}}, Timeout=60)


def _signed(srv, method: str, path: str, body: bytes, headers: dict[str, str],
            creds: Credentials | None = None, when: datetime | None = None) -> AWSRequest:
    """A request signed by botocore's SigV4 (as boto3 signs) with the server's key."""
    creds = creds or srv.credentials
    request = AWSRequest(method=method, url=srv.url + path, data=body, headers=headers)
    auth = SigV4Auth(BotoCredentials(creds.access_key_id, creds.secret_access_key),
                     "lambda", "us-east-1")
    if when is None:
        auth.add_auth(request)
    else:  # sign as of another time
        request.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
        request.headers["X-Amz-Date"] = request.context["timestamp"]
        canonical = auth.canonical_request(request)
        signature = auth.signature(auth.string_to_sign(request, canonical), request)
        auth._inject_signature_to_request(request, signature)
    return request


def _send(srv, request: AWSRequest, body: bytes | None = None,
          extra: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    """Send ``request`` raw (``body`` replaces its body): status, headers, JSON answer."""
    port = int(srv.url.rpartition(":")[2])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = request.body if body is None else body
    headers = {k: v for k, v in request.headers.items()}
    headers.update(extra or {})
    headers["Content-Length"] = str(len(data or b""))
    conn.request(request.method, request.url.split(srv.url, 1)[1], body=data, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), (json.loads(raw) if raw else {})


def test_unsigned_requests_are_refused_and_run_nothing(server):
    _create(_client(server), "sec-unsigned")
    before = server.service.stats("sec-unsigned")["invocations"]
    for method, path, body in [
            ("POST", "/2015-03-31/functions/sec-unsigned/invocations", b'{"url": "x"}'),
            ("POST", "/2015-03-31/functions", json.dumps({
                "FunctionName": "sec-evil", "Role": "r", "Handler": "probe.handler",
                "Runtime": "python3.11", "Code": {"ZipFile": base64.b64encode(
                    _zip({"probe.py": PROBE})).decode()}}).encode()),
            ("GET", "/2015-03-31/functions/sec-unsigned/configuration", None)]:
        req = urllib.request.Request(server.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        assert info.value.code == 403
        assert info.value.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert server.service.stats("sec-unsigned")["invocations"] == before
    names = [f["FunctionName"] for f in _client(server).list_functions()["Functions"]]
    assert "sec-evil" not in names


def test_boto3_with_the_right_credentials_works_and_wrong_ones_are_refused(server):
    _create(_client(server), "sec-keys")
    assert _client(server).get_function(FunctionName="sec-keys")["Configuration"][
        "FunctionName"] == "sec-keys"
    wrong_secret = Credentials(server.credentials.access_key_id, "not-the-secret")
    with pytest.raises(ClientError) as info:
        _client(server, wrong_secret).get_function(FunctionName="sec-keys")
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
    with pytest.raises(ClientError) as info:
        _client(server, Credentials.generate()).get_function(FunctionName="sec-keys")
    assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_a_replayed_signature_with_another_body_or_date_is_refused(server):
    _create(_client(server), "sec-replay")
    path = "/2015-03-31/functions/sec-replay/invocations"
    request = _signed(server, "POST", path, b'{"url": "a"}', {})
    status, _, _ = _send(server, request)
    assert status == 200
    status, _, answer = _send(server, request, body=b'{"url": "b"}')
    assert status == 403 and "does not match" in answer["message"]
    old = _signed(server, "POST", path, b'{"url": "a"}', {},
                  when=datetime.now(UTC) - timedelta(minutes=20))
    status, _, answer = _send(server, old)
    assert status == 403 and "Signature expired" in answer["message"]


def test_foreign_host_form_posts_and_oversized_bodies_are_refused(server):
    path = "/2015-03-31/functions"
    body = json.dumps({"FunctionName": "sec-form"}).encode()
    status, _, answer = _send(server, _signed(server, "POST", path, body, {}),
                              extra={"Host": f"attacker.example:{server.url[-5:]}"})
    assert status == 403 and "Host header" in answer["message"]
    form = _signed(server, "POST", path, body, {"Content-Type": "text/plain"})
    status, headers, answer = _send(server, form)
    assert status == 415 and headers["x-amzn-ErrorType"] == "UnsupportedMediaTypeException"
    # the length is refused before a byte of the body is read (and the connection closed)
    port = int(server.url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST {path}/x/invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Content-Length: {10 * 2**30}\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(4096):  # until the server closes the connection
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"Connection: close" in reply


def test_zip_over_the_unzipped_limit_is_refused(server, monkeypatch):
    monkeypatch.setattr(local_service, "MAX_UNZIPPED_BYTES", 10_000)
    with pytest.raises(ClientError) as info:
        _create(_client(server), "sec-bomb", code=_zip({"probe.py": PROBE,
                                                        "pad.bin": "0" * 20_000}))
    assert "unzipped size" in info.value.response["Error"]["Message"]
    names = [f["FunctionName"] for f in _client(server).list_functions()["Functions"]]
    assert "sec-bomb" not in names


def test_no_secret_in_get_function_configuration_or_list(server):
    client = _client(server)
    created = _create(client, "sec-env", {"DASK_SERVERLESS__SECRET": "s3cr3t-value",
                                          "OTHER": "visible?"})
    answers = [created, client.get_function_configuration(FunctionName="sec-env"),
               client.get_function(FunctionName="sec-env")["Configuration"],
               *client.list_functions()["Functions"]]
    for conf in answers:
        assert "s3cr3t-value" not in json.dumps(conf, default=str)
    conf = client.get_function_configuration(FunctionName="sec-env")
    assert conf["Environment"]["Variables"] == {"DASK_SERVERLESS__SECRET": local_service.REDACTED,
                                                "OTHER": local_service.REDACTED}


def test_functions_get_an_allow_listed_environment_and_an_invoke_only_key(server, monkeypatch):
    monkeypatch.setenv("DS_TEST_SERVER_ONLY", "leaked")
    client = _client(server)
    _create(client, "sec-probe", {"MINE": "1"})
    answer = client.invoke(FunctionName="sec-probe",
                           Payload=json.dumps({"url": server.url}).encode())
    assert "FunctionError" not in answer
    out = json.loads(answer["Payload"].read())
    assert "DS_TEST_SERVER_ONLY" not in out["env"] and "MINE" in out["env"]
    assert "DASK_SERVERLESS__SECRET" not in out["env"]
    assert out["key"] not in (None, server.credentials.access_key_id)
    assert out["list"] == "AccessDeniedException"  # its key may invoke, nothing else


def test_generated_credentials_are_published_for_the_same_user_only(tmp_path, monkeypatch):
    monkeypatch.setattr(dask.config, "PATH", str(tmp_path / "dask"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                 "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    srv = LocalLambdaServer(port=free_port(), publish_file=True).start()
    try:
        assert srv.credentials_source == "generated"
        path = srv.credentials_file
        assert path is not None and (path.stat().st_mode & 0o777) == 0o600
        assert srv.credentials.secret_access_key in path.read_text()
        assert local_auth.published(srv.url) == srv.credentials
    finally:
        srv.stop()
    assert not path.exists() and local_auth.published(srv.url) is None


def test_keyring_refuses_an_invoke_key_outside_its_scope():
    admin = Credentials.generate()
    ring = local_auth.Keyring(admin, "us-east-1")
    fn_key = ring.mint("invoke")

    def signed(creds):
        request = AWSRequest(method="GET", url="http://127.0.0.1:1/2015-03-31/functions/")
        SigV4Auth(BotoCredentials(creds.access_key_id, creds.secret_access_key), "lambda",
                  "us-east-1").add_auth(request)
        headers = email.message.Message()  # what http.server hands the server
        for name, value in [*request.headers.items(), ("Host", "127.0.0.1:1")]:
            headers[name] = value
        return headers

    path = "/2015-03-31/functions/"
    assert ring.verify("list", "GET", path, signed(admin), b"") == admin.access_key_id
    with pytest.raises(AuthError, match="may not call list"):
        ring.verify("list", "GET", path, signed(fn_key), b"")
    ring.revoke(fn_key)
    with pytest.raises(AuthError, match="unknown access key"):
        ring.verify("invoke", "GET", path, signed(fn_key), b"")


# -- events ---------------------------------------------------------------------------------
class _Listener:
    """A TCP port that records whether anyone connected to it."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connected = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        try:
            conn, _ = self.sock.accept()
            self.connected.set()
            conn.close()
        except OSError:
            pass

    def close(self):
        self.sock.close()


def test_event_heads_carry_no_credentials(redis_server):
    inv = Invocation("run1", "w0", 1024, redis_server, [1], b"x" * 5000)
    inline, spilled = events.encode(inv, max_bytes=100_000, ttl=60)
    head = {"ds", "run_id", "worker_id"}  # ids only: what the seal is bound to
    assert not spilled and set(json.loads(inline)) == {*head, "invocation"}
    pointer, spilled = events.encode(inv, max_bytes=1000, ttl=60)
    assert spilled and set(json.loads(pointer)) == {*head, "spilled"}
    for event in (inline, pointer):  # the URL is only inside the sealed part
        assert b"redis_url" not in event and redis_server.encode() not in event


def test_nothing_in_a_forged_event_is_used_before_its_seal_checks_out():
    listener = _Listener()
    try:
        url = f"redis://:pw@127.0.0.1:{listener.port}/0"
        with dask.config.set({"serverless.secret": "an-attacker-guessing-" + "x" * 40}):
            serialize.reset_key()
            try:
                forged = serialize.seal(json.dumps({"redis_url": url, "key": "k"}).encode(),
                                        Purpose.INVOCATION, "run", "spill-pointer:w0")
                inline = Invocation("run", "w0", 1024, url, [0]).dumps()
            finally:
                serialize.reset_key()
        head = {"ds": 1, "run_id": "run", "worker_id": "w0"}
        for event in ({**head, "spilled": base64.b64encode(forged).decode()},
                      {**head, "invocation": base64.b64encode(inline).decode()}):
            with pytest.raises(serialize.TamperedPayloadError):
                handler.lambda_handler(event, None)
        assert not listener.connected.wait(0.5)  # the worker never dialled the forged URL
    finally:
        listener.close()


def test_event_errors_never_quote_the_event():
    secret_url = "redis://:hunter2-password@10.1.2.3:6379/0"
    for event in ({"ds": 2, "redis_url": secret_url}, {"ds": 1, "redis_url": secret_url},
                  {"ds": 1, "invocation": secret_url}, ["ds", secret_url]):
        with pytest.raises(events.EventError) as info:
            handler.lambda_handler(event, None)
        assert "hunter2" not in str(info.value)


def test_handshake_accepts_our_seal_and_refuses_another():
    event = json.loads(events.check_event())
    assert events.answer_check(event) == {"check": "ok"}
    with dask.config.set({"serverless.secret": "another-secret-" + "y" * 40}):
        serialize.reset_key()
        try:
            with pytest.raises(serialize.TamperedPayloadError):
                events.answer_check(event)
        finally:
            serialize.reset_key()


@pytest.mark.skipif(not squatter.available(),
                    reason="needs root and setpriv to act as another user")
def test_a_loopback_endpoint_another_user_listens_on_is_refused():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    local_auth.publish_in_process(url, Credentials.generate())  # ours, before it died
    try:
        with squatter.Squatter(port) as other:
            settings = LambdaSettings(endpoint_url=url)
            with pytest.raises(ForeignListenerError, match="another user"):
                make_client("lambda", settings).invoke(FunctionName="f", Payload=b"{}")
            with pytest.raises(ForeignListenerError):
                deploy.deploy(deploy.DeployOptions([1024], settings), say=lambda _: None)
            time.sleep(0.2)
            assert other.received() == b""
    finally:
        local_auth.publish_in_process(url, None)


def test_every_route_refuses_unsigned_requests_and_invoke_keys_outside_invoke(server):
    """Each operation the server routes (new ones included) is refused unsigned, and a
    function's own key may call nothing but Invoke."""
    _create(_client(server), "sec-routes")
    function_key = server.service._functions["sec-routes"].credentials
    for method, pattern, operation in local_server._ROUTES:
        path = pattern.pattern.rstrip("$").replace("/?", "").replace("([^/]+)", "sec-routes")
        body = b"{}" if method in ("POST", "PUT") else None
        req = urllib.request.Request(server.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        assert info.value.code == 403, operation
        signed = _signed(server, method, path, body or b"",
                         {"Content-Type": "application/json"}, creds=function_key)
        status, headers, _ = _send(server, signed)
        if operation == "invoke":
            assert status == 200
        else:
            assert (status, headers["x-amzn-ErrorType"]) == (403, "AccessDeniedException"), \
                operation
