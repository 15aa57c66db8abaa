"""Who may call the local Lambda API server: AWS Signature Version 4, as AWS checks it.

The server holds a ``Keyring``: the credentials it was started with (scope ``admin``: the
whole API) and keys it mints per function (scope ``invoke``: what a worker needs to invoke
its successors, like the role credentials Lambda hands a function). Every request must be
signed with one of them; ``Keyring.verify`` recomputes the signature with botocore's own
canonicalisation (so whatever boto3 signs verifies) and refuses a request that is unsigned,
signed with an unknown key or another secret, outside the scope's operations, dated more
than ``MAX_SKEW_S`` from now, or whose body does not match its signed hash.

Credentials never travel on a command line. The server takes them from its environment
(the boto3 chain: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, the
shared credentials file) or, when there are none, generates a pair and publishes it for
clients of the same user: in its own process through ``dask.config``
(``serverless.lambda.local-credentials``, keyed by endpoint) and for other processes in a
0600 YAML file in the Dask config directory, which ``dask.config`` loads at import.
``settings.make_client`` looks there first for an endpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dask.config
import yaml

from ...storage.private import write_private

logger = logging.getLogger(__name__)

MAX_SKEW_S = 300  # AWS refuses requests dated more than 5 minutes away from its clock
CONFIG_KEY = "serverless.lambda.local-credentials"
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/"
                   r"aws4_request,\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})$")
_SCOPES = {"admin": None, "invoke": {"invoke"}}  # scope -> operations allowed (None: all)


class AuthError(Exception):
    """A request the server refuses: HTTP status, Lambda error code, message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    @classmethod
    def generate(cls, prefix: str = "LOCAL") -> Credentials:
        return cls(prefix + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))

    def client_kwargs(self) -> dict[str, str]:
        """boto3 client arguments."""
        kwargs = {"aws_access_key_id": self.access_key_id,
                  "aws_secret_access_key": self.secret_access_key}
        if self.session_token:
            kwargs["aws_session_token"] = self.session_token
        return kwargs

    def env(self) -> dict[str, str]:
        """Environment variables that give a process these credentials (boto3 chain)."""
        env = {"AWS_ACCESS_KEY_ID": self.access_key_id,
               "AWS_SECRET_ACCESS_KEY": self.secret_access_key}
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env

    def __repr__(self) -> str:  # never the secret (logs, tracebacks)
        return f"Credentials({self.access_key_id!r}, secret_access_key='***')"


def environment_credentials(profile: str | None = None) -> Credentials | None:
    """The credentials of the boto3 chain (environment, profile, shared files), if any."""
    import botocore.session

    try:
        found = botocore.session.Session(profile=profile).get_credentials()
    except Exception as exc:  # e.g. an unknown profile
        raise ValueError(f"cannot read AWS credentials (profile {profile!r}): {exc}") from exc
    if found is None:
        return None
    frozen = found.get_frozen_credentials()
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


class Keyring:
    """The keys a server accepts (thread-safe)."""

    def __init__(self, admin: Credentials, region: str):
        self.admin = admin
        self.region = region
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[Credentials, str]] = {admin.access_key_id: (admin, "admin")}

    def mint(self, scope: str = "invoke") -> Credentials:
        """A new key of ``scope`` (``revoke`` it when its holder is gone)."""
        creds = Credentials.generate("LFN")
        with self._lock:
            self._keys[creds.access_key_id] = (creds, scope)
        return creds

    def revoke(self, creds: Credentials | None) -> None:
        if creds is not None:
            with self._lock:
                self._keys.pop(creds.access_key_id, None)

    def verify(self, operation: str, method: str, raw_path: str, headers: Any, body: bytes,
               now: datetime | None = None) -> str:
        """Check the request's SigV4 signature; returns the caller's access key id."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        match = _AUTH.match((headers.get("Authorization") or "").strip())
        if match is None:
            raise AuthError(403, "MissingAuthenticationTokenException",
                            "the request is not signed with AWS Signature Version 4 (the local "
                            "Lambda API server accepts only signed requests, as AWS does)")
        key_id, day, region, service, signed, signature = match.groups()
        with self._lock:
            known = self._keys.get(key_id)
        if known is None:
            raise AuthError(403, "UnrecognizedClientException",
                            f"unknown access key {key_id!r}: sign with the credentials the "
                            "local Lambda API server was started with (its AWS environment, "
                            f"or the ones it publishes under {CONFIG_KEY})")
        creds, scope = known
        allowed = _SCOPES[scope]
        if allowed is not None and operation not in allowed:
            raise AuthError(403, "AccessDeniedException",
                            f"access key {key_id} (a function's) may not call {operation}")
        stamp = headers.get("X-Amz-Date") or ""
        _check_date(stamp, day, now or datetime.now(UTC))
        if service != "lambda":
            raise AuthError(403, "InvalidSignatureException",
                            f"signed for service {service!r}, not 'lambda'")
        names = signed.split(";")
        if "host" not in names or "x-amz-date" not in names:
            raise AuthError(403, "InvalidSignatureException",
                            "the signature must cover the Host and X-Amz-Date headers")
        if creds.session_token and not hmac.compare_digest(
                headers.get("X-Amz-Security-Token") or "", creds.session_token):
            raise AuthError(403, "UnrecognizedClientException", "wrong or missing session token")
        sent_hash = headers.get("X-Amz-Content-SHA256")
        if sent_hash is not None and sent_hash != hashlib.sha256(body).hexdigest():
            raise AuthError(403, "InvalidSignatureException",
                            "X-Amz-Content-SHA256 does not match the body")
        request = AWSRequest(method=method, url=f"http://{headers.get('Host')}{raw_path}",
                             data=body)
        for name in names:
            values = headers.get_all(name) if hasattr(headers, "get_all") else None
            values = values or [headers.get(name)]
            if values[0] is None:
                raise AuthError(403, "InvalidSignatureException",
                                f"signed header {name!r} is missing")
            for value in values:
                request.headers.add_header(name, value)
        request.context["timestamp"] = stamp
        auth = SigV4Auth(_botocore_creds(creds), "lambda", region)
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)),
                                  request)
        if not hmac.compare_digest(expected, signature):
            raise AuthError(403, "InvalidSignatureException",
                            "the request signature does not match: signed with another secret "
                            "key, or altered on the way")
        return key_id


def _botocore_creds(creds: Credentials) -> Any:
    from botocore.credentials import Credentials as BotoCredentials

    return BotoCredentials(creds.access_key_id, creds.secret_access_key, creds.session_token)


def _check_date(stamp: str, day: str, now: datetime) -> None:
    try:
        when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise AuthError(403, "InvalidSignatureException",
                        "missing or malformed X-Amz-Date header") from None
    if stamp[:8] != day:
        raise AuthError(403, "InvalidSignatureException",
                        "the credential scope's date is not the request's date")
    skew = abs((now - when).total_seconds())
    if skew > MAX_SKEW_S:
        raise AuthError(403, "InvalidSignatureException",
                        f"Signature expired: the request is dated {stamp}, {skew:.0f} s away "
                        f"from the server's clock (at most {MAX_SKEW_S} s)")


# -- publishing generated credentials to clients of the same user ------------------------------
def endpoint_key(url: str) -> str:
    """``host:port`` of an endpoint URL, the key credentials are published under."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    host = "127.0.0.1" if host == "localhost" else host
    return f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def published(url: str) -> Credentials | None:
    """Credentials a local Lambda API server published for ``url`` (None: none)."""
    table = dask.config.get(CONFIG_KEY, None) or {}
    entry = table.get(endpoint_key(url)) if isinstance(table, dict) else None
    if not isinstance(entry, dict):
        return None
    key, secret = entry.get("access-key-id"), entry.get("secret-access-key")
    if not (isinstance(key, str) and isinstance(secret, str)):
        return None
    return Credentials(key, secret)


def publish_in_process(url: str, creds: Credentials | None) -> None:
    """Make ``creds`` (None: forget them) the credentials of ``url`` in this process."""
    table = dict(dask.config.get(CONFIG_KEY, None) or {})
    if creds is None:
        table.pop(endpoint_key(url), None)
    else:
        table[endpoint_key(url)] = {"access-key-id": creds.access_key_id,
                                    "secret-access-key": creds.secret_access_key}
    dask.config.set({CONFIG_KEY: table})


def credentials_file(url: str) -> Path:
    """The 0600 file in the Dask config directory that publishes ``url``'s credentials."""
    name = endpoint_key(url).replace(":", "-").replace("[", "").replace("]", "")
    return Path(dask.config.PATH) / f"dask-serverless-local-lambda-{name}.yaml"


def publish_file(url: str, creds: Credentials) -> Path:
    path = credentials_file(url)
    doc = {"serverless": {"lambda": {"local-credentials": {endpoint_key(url): {
        "access-key-id": creds.access_key_id, "secret-access-key": creds.secret_access_key}}}}}
    write_private(path, "# written by `dask-serverless local-lambda`: credentials its clients "
                        "sign with\n" + yaml.safe_dump(doc))
    return path


def unpublish_file(url: str, creds: Credentials | None) -> None:
    """Remove ``url``'s credentials file (only if it holds ``creds``: another server may
    have replaced it; None: whatever it holds, it is stale)."""
    path = credentials_file(url)
    try:
        text = path.read_text()
    except OSError:
        return
    if creds is None or creds.secret_access_key in text:
        with contextlib.suppress(OSError):
            path.unlink()
