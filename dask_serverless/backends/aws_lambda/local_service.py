"""The state behind the local Lambda API server: functions, their code, and the local
containers that run them.

Each function gets its own ``LocalPool`` (real cold and warm starts, memory capped at the
function's ``MemorySize``). Its containers see the unpacked code first on ``PYTHONPATH``
(Lambda's ``/var/task``), then this process's ``sys.path`` (standing in for the runtime's
bundled libraries, e.g. boto3), and the function's environment variables. Updating code or
configuration starts fresh execution environments, like Lambda; old ones finish their
work first. A handler running longer than the function's ``Timeout`` is killed.

Like Lambda, a function's environment is its ``Environment`` variables plus the runtime's
own (an allow-list of this process's: ``PATH``, locale, time zone, temp dir), never the
server's whole environment; a Dask config directory of its own (empty: config comes from
the ``Environment``, as on AWS); and a key of its own that may only invoke functions (the
role credentials Lambda hands a function). Answers never carry environment values (they
hold e.g. ``serverless.secret``): each is replaced by ``REDACTED``. Uploaded zips are
bounded zipped and unzipped (Lambda's limits).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ... import config
from ..local.pool import HandlerCall, LocalPool
from .local_auth import Credentials, Keyring
from .packaging import MAX_UNZIPPED_BYTES, MAX_ZIP_BYTES

logger = logging.getLogger(__name__)

ACCOUNT = "000000000000"
MAX_EVENT_BYTES = 256 * 1024  # asynchronous invoke payload limit
MAX_SYNC_BYTES = 6 * 2**20  # synchronous invoke payload limit
_CONFIG_FIELDS = ("Role", "Handler", "Runtime", "MemorySize", "Timeout", "Environment",
                  "Description", "VpcConfig")
REDACTED = "(redacted)"  # what answers carry in place of an environment value
MAX_ZIP_ENTRIES = 100_000
# what a function inherits from this process's environment (the runtime's own variables)
RUNTIME_ENV = ("PATH", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
               "SYSTEMROOT")


class ApiError(Exception):
    """An error answer of the Lambda API: HTTP status, error type, message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class _Function:
    config: dict[str, Any]
    code_dir: str
    pool: LocalPool | None = None
    credentials: Credentials | None = None  # its own key: may invoke functions
    invocations: int = 0
    cold_starts: int = 0
    warm_starts: int = 0
    errors: int = 0
    event_invoke_config: dict[str, Any] | None = None  # asynchronous invocation settings


class LocalLambdaService:
    """Functions by name; ``invoke`` runs them in local containers. Thread-safe."""

    def __init__(self, region: str = "us-east-1", max_containers: int | None = None,
                 keep_alive: float | None = None, inherit_path: bool = True,
                 invoke_latency: float = 0.0, keyring: Keyring | None = None):
        self.region = region
        self.keyring = keyring  # None: functions get no key (they cannot invoke others)
        self.max_containers = max_containers or 2 * (os.cpu_count() or 2)
        self.keep_alive = config.get("local.keep-alive", keep_alive)
        self.inherit_path = inherit_path
        self.invoke_latency = invoke_latency  # seconds added to each Invoke (AWS-like RTT)
        self._dir = tempfile.mkdtemp(prefix="dask-serverless-local-lambda-")
        self._functions: dict[str, _Function] = {}
        self._lock = threading.Lock()
        self._inject: list[tuple[int, str]] = []  # (status, code) answers for next invokes
        self.throttled = 0

    # -- fault injection -----------------------------------------------------------------
    def fail_next_invokes(self, count: int, status: int = 429) -> None:
        """Answer the next ``count`` Invoke requests with ``status`` (429: throttled)."""
        code = "TooManyRequestsException" if status == 429 else "ServiceException"
        with self._lock:
            self._inject.extend([(status, code)] * count)

    # -- control plane -------------------------------------------------------------------
    def create_function(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("FunctionName") or ""
        _check_name(name)
        for required in ("Role", "Handler", "Runtime"):
            if not body.get(required):
                raise ApiError(400, "InvalidParameterValueException",
                               f"{required} is required to create function {name}")
        zipped = self._zip_of(body.get("Code") or {}, name)
        with self._lock:
            if name in self._functions:
                raise ApiError(409, "ResourceConflictException", f"Function already exist: {name}")
            config = {"FunctionName": name, "Runtime": body["Runtime"],
                      "FunctionArn": self.arn(name), "Role": body["Role"],
                      "Handler": body["Handler"], "Description": body.get("Description", ""),
                      "MemorySize": 128, "Timeout": 3, "Environment": {"Variables": {}},
                      "PackageType": "Zip", "Version": "$LATEST", "State": "Active",
                      "LastUpdateStatus": "Successful", "Architectures": ["x86_64"]}
            _apply_config(config, body)
            fn = _Function(config, "")
            self._set_code(fn, zipped)
            if self.keyring is not None:
                fn.credentials = self.keyring.mint("invoke")
            self._functions[name] = fn
        logger.info("created function %s (%s MB)", name, config["MemorySize"])
        return redacted(config)

    def get_function(self, name: str) -> dict[str, Any]:
        fn = self._get(name)
        return {"Configuration": redacted(fn.config),
                "Code": {"RepositoryType": "Local", "Location": fn.code_dir}}

    def get_configuration(self, name: str) -> dict[str, Any]:
        return redacted(self._get(name).config)

    def list_functions(self, marker: str | None, max_items: int | None) -> dict[str, Any]:
        with self._lock:
            names = sorted(self._functions)
            start = names.index(marker) + 1 if marker in names else 0
            page = names[start:start + (max_items or 50)]
            out: dict[str, Any] = {"Functions": [redacted(self._functions[n].config)
                                                 for n in page]}
            if start + len(page) < len(names):
                out["NextMarker"] = page[-1]
        return out

    def update_code(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        zipped = self._zip_of(body, name)
        with self._lock:
            fn = self._get_locked(name)
            old = self._set_code(fn, zipped)
        _retire(old)
        return redacted(fn.config)

    def update_configuration(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            fn = self._get_locked(name)
            _apply_config(fn.config, body)
            fn.config["LastModified"] = _now()
            old, fn.pool = fn.pool, None
        _retire(old)
        return redacted(fn.config)

    def delete_function(self, name: str) -> None:
        with self._lock:
            fn = self._get_locked(name)
            del self._functions[_short_name(name)]
        if self.keyring is not None:
            self.keyring.revoke(fn.credentials)
        _retire(fn.pool)

    def put_event_invoke_config(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """``PutFunctionEventInvokeConfig``: stored and answered as Lambda does (this
        server retries no failed asynchronous invocation either way)."""
        retries = body.get("MaximumRetryAttempts", 2)
        age = body.get("MaximumEventAgeInSeconds", 21600)
        if not isinstance(retries, int) or not 0 <= retries <= 2:
            raise ApiError(400, "InvalidParameterValueException",
                           f"MaximumRetryAttempts {retries!r} must be 0, 1 or 2")
        if not isinstance(age, int) or not 60 <= age <= 21600:
            raise ApiError(400, "InvalidParameterValueException",
                           f"MaximumEventAgeInSeconds {age!r} must be 60 to 21600")
        with self._lock:
            fn = self._get_locked(name)
            fn.event_invoke_config = {
                "FunctionArn": fn.config["FunctionArn"], "MaximumRetryAttempts": retries,
                "MaximumEventAgeInSeconds": age, "LastModified": time.time(),
                "DestinationConfig": body.get("DestinationConfig") or {}}
            return dict(fn.event_invoke_config)

    def get_event_invoke_config(self, name: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._with_event_invoke_config_locked(name).event_invoke_config)

    def delete_event_invoke_config(self, name: str) -> None:
        with self._lock:
            self._with_event_invoke_config_locked(name).event_invoke_config = None

    def _with_event_invoke_config_locked(self, name: str) -> _Function:
        """Function ``name``, which has an async invoke config (AWS's 404 otherwise)."""
        fn = self._get_locked(name)
        if fn.event_invoke_config is None:
            raise ApiError(404, "ResourceNotFoundException",
                           f"The function {fn.config['FunctionArn']} doesn't have an "
                           "EventInvokeConfig")
        return fn

    def stats(self, name: str) -> dict[str, int]:
        fn = self._get(name)
        return {"invocations": fn.invocations, "cold_starts": fn.cold_starts,
                "warm_starts": fn.warm_starts, "errors": fn.errors}

    # -- data plane ----------------------------------------------------------------------
    def invoke(self, name: str, payload: bytes, invocation_type: str) -> tuple[int, bytes, bool]:
        """Returns (HTTP status, response payload, function error?)."""
        if self.invoke_latency:
            time.sleep(self.invoke_latency)
        with self._lock:
            if self._inject:
                status, code = self._inject.pop(0)
                self.throttled += 1
                raise ApiError(status, code, f"Rate exceeded (injected) for function {name}")
            fn = self._get_locked(name)
            fn.invocations += 1
            config = dict(fn.config)
            pool = self._pool_locked(fn)
        limit = MAX_EVENT_BYTES if invocation_type == "Event" else MAX_SYNC_BYTES
        if len(payload) > limit:
            raise ApiError(413, "RequestEntityTooLargeException",
                           f"{len(payload)} byte payload exceeds the {limit} byte limit of "
                           f"{invocation_type} invocations of {name}")
        if invocation_type == "DryRun":
            return 204, b"", False
        if invocation_type not in ("Event", "RequestResponse"):
            raise ApiError(400, "InvalidParameterValueException",
                           f"unknown invocation type {invocation_type!r}")
        try:
            json.loads(payload or b"{}")
        except ValueError as exc:
            raise ApiError(400, "InvalidRequestContentException",
                           f"could not parse request body into json: {exc}") from exc
        done = threading.Event()
        answer: list[Any] = []

        def on_result(ok: bool, result: bytes, cold: bool) -> None:
            with self._lock:
                if cold:
                    fn.cold_starts += 1
                else:
                    fn.warm_starts += 1
                if not ok:
                    fn.errors += 1
            if not ok and invocation_type == "Event":
                logger.warning("function %s failed an Event invocation: %s", name,
                               result[:2000].decode(errors="replace"))
            answer[:] = [ok, result]
            done.set()

        context = {"function_name": name, "memory_mb": config["MemorySize"],
                   "request_id": str(uuid.uuid4()), "arn": config["FunctionArn"],
                   "timeout_s": config["Timeout"]}
        pool.call(HandlerCall(config["MemorySize"], config["Handler"], payload or b"{}",
                              on_result, context))
        if invocation_type == "Event":
            return 202, b"", False
        if not done.wait(config["Timeout"] + 60):
            raise ApiError(500, "ServiceException", f"function {name} did not answer")
        return 200, answer[1], not answer[0]

    # -- helpers -------------------------------------------------------------------------
    def arn(self, name: str) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{name}"

    def _get(self, name: str) -> _Function:
        with self._lock:
            return self._get_locked(name)

    def _get_locked(self, name: str) -> _Function:
        fn = self._functions.get(_short_name(name))
        if fn is None:
            raise ApiError(404, "ResourceNotFoundException",
                           f"Function not found: {self.arn(_short_name(name))}")
        return fn

    @staticmethod
    def _zip_of(code: dict[str, Any], name: str) -> bytes:
        if code.get("ImageUri"):
            raise ApiError(400, "InvalidParameterValueException",
                           f"function {name}: the local Lambda API server runs zip packages "
                           "only, not container images")
        if not isinstance(code.get("ZipFile"), str) or not code["ZipFile"]:
            raise ApiError(400, "InvalidParameterValueException",
                           f"function {name}: Code.ZipFile is required")
        try:
            zipped = base64.b64decode(code["ZipFile"], validate=True)
        except ValueError as exc:
            raise ApiError(400, "InvalidParameterValueException",
                           f"function {name}: Code.ZipFile is not base64") from exc
        if len(zipped) > MAX_ZIP_BYTES:
            raise ApiError(413, "RequestEntityTooLargeException",
                           f"function {name}: the zip is {len(zipped)} bytes, over Lambda's "
                           f"{MAX_ZIP_BYTES} byte limit for direct uploads")
        return zipped

    def _set_code(self, fn: _Function, zipped: bytes) -> LocalPool | None:
        digest = hashlib.sha256(zipped).digest()
        code_dir = os.path.join(self._dir, "code", digest.hex()[:32])
        if not os.path.isdir(code_dir):
            tmp = tempfile.mkdtemp(dir=self._dir)
            try:
                _extract(zipped, tmp, fn.config["FunctionName"])
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            os.makedirs(os.path.dirname(code_dir), exist_ok=True)
            os.rename(tmp, code_dir)
        fn.code_dir = code_dir
        fn.config.update(CodeSha256=base64.b64encode(digest).decode(), CodeSize=len(zipped),
                         LastModified=_now())
        old, fn.pool = fn.pool, None
        return old

    def _pool_locked(self, fn: _Function) -> LocalPool:
        if fn.pool is None:
            fn.pool = LocalPool(self.max_containers, self.keep_alive, env=self._env_of(fn),
                                invocation_timeout=float(fn.config["Timeout"]),
                                inherit_env=False)
        return fn.pool

    def _env_of(self, fn: _Function) -> dict[str, str]:
        """A function's whole environment: the runtime's variables, its own key and
        Dask config directory, then its ``Environment``."""
        config = fn.config
        path = [fn.code_dir] + ([p for p in sys.path if p] if self.inherit_path else [])
        config_dir = os.path.join(self._dir, "dask-config")  # empty: config comes from env
        os.makedirs(config_dir, mode=0o700, exist_ok=True)
        env = runtime_env(os.environ)
        env.update({"PYTHONPATH": os.pathsep.join(path), "LAMBDA_TASK_ROOT": fn.code_dir,
                    "DASK_CONFIG": config_dir,
                    "AWS_LAMBDA_FUNCTION_NAME": config["FunctionName"],
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config["MemorySize"]),
                    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_REGION": self.region,
                    "AWS_DEFAULT_REGION": self.region})
        if fn.credentials is not None:
            env.update(fn.credentials.env())
        env.update({str(k): str(v) for k, v in
                    config.get("Environment", {}).get("Variables", {}).items()})
        return env

    def close(self) -> None:
        with self._lock:
            pools = [f.pool for f in self._functions.values()]
            self._functions.clear()
        for pool in pools:
            if pool is not None:
                pool.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _retire(pool: LocalPool | None, timeout: float = 900.0) -> None:
    """Close ``pool`` once its busy containers and queue are done (in the background)."""
    if pool is None:
        return

    def drain() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = pool.stats()
            if stats["busy"] == 0 and stats["pending"] == 0:
                break
            time.sleep(0.1)
        pool.close()

    threading.Thread(target=drain, daemon=True, name="dask-serverless-retire").start()


def runtime_env(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """The variables of ``environ`` a function inherits (``RUNTIME_ENV``)."""
    return {k: v for k, v in environ.items()
            if any(fnmatch.fnmatchcase(k, pattern) for pattern in RUNTIME_ENV)}


def redacted(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a function's configuration with its environment values redacted."""
    out = dict(config)
    variables = (config.get("Environment") or {}).get("Variables") or {}
    out["Environment"] = {"Variables": {k: REDACTED for k in variables}}
    return out


def _extract(zipped: bytes, target: str, name: str) -> None:
    """Unpack an uploaded zip within Lambda's unzipped size limit."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(zipped))
        infos = archive.infolist()
        size = sum(i.file_size for i in infos)  # reads stop at these sizes (zipfile)
        if size > MAX_UNZIPPED_BYTES or len(infos) > MAX_ZIP_ENTRIES:
            raise ApiError(400, "InvalidParameterValueException",
                           f"function {name}: unzipped size {size} bytes in {len(infos)} "
                           f"files is over Lambda's {MAX_UNZIPPED_BYTES} byte limit")
        archive.extractall(target)  # names with '..' or a leading '/' stay inside
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise ApiError(400, "InvalidParameterValueException",
                       f"function {name}: could not unzip the uploaded file: {exc}") from exc


def _apply_config(config: dict[str, Any], body: dict[str, Any]) -> None:
    for key in _CONFIG_FIELDS:
        if key in body:
            config[key] = body[key]
    if not 128 <= int(config["MemorySize"]) <= 10240:
        raise ApiError(400, "InvalidParameterValueException",
                       f"MemorySize {config['MemorySize']} must be between 128 and 10240")
    if not 1 <= int(config["Timeout"]) <= 900:
        raise ApiError(400, "InvalidParameterValueException",
                       f"Timeout {config['Timeout']} must be between 1 and 900 seconds")
    config.setdefault("Environment", {}).setdefault("Variables", {})


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_" for c in name):
        raise ApiError(400, "InvalidParameterValueException",
                       f"function name {name!r} must be 1-64 letters, digits, '-' or '_'")


def _short_name(name: str) -> str:
    return name.rpartition(":function:")[2].split(":")[0] if ":function:" in name else name


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
