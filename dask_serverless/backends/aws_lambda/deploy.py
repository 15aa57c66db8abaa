"""``deploy`` / ``destroy``: create, update or remove the worker functions (idempotent).

One function per memory size, ``<prefix>-<memory_mb>``, running ``packaging.HANDLER``.
Without ``role``, an IAM role ``<prefix>-worker`` is created (or reused) with one inline
policy (``worker_policy``): write logs, invoke the ``<prefix>-*`` functions (workers invoke
their successors) and, when subnets are given, manage VPC network interfaces. Against
the local Lambda API server (an ``endpoint_url`` and no IAM endpoint) no IAM is involved
and a placeholder role ARN is used.

The functions get ``serverless.secret`` in their environment. Without a configured one,
deploy generates it and stores it in a 0600 file of the Dask config directory
(``secret_file``), which ``dask.config`` loads in every later process of this user: the
clients then seal what the workers accept. The secret is never printed. The functions'
description carries a keyed digest of their environment, so a re-deploy knows whether it
changed even where the API redacts environment values (the local Lambda API server).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.config
import yaml

from ...plan import ResourceConfig
from ...storage import serialize
from ...storage.private import write_private
from . import packaging
from .local_service import REDACTED
from .settings import LambdaSettings, make_client

logger = logging.getLogger(__name__)

LOCAL_ROLE = "arn:aws:iam::000000000000:role/{prefix}-worker"
_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
    "Action": "sts:AssumeRole"}]}
_POLICY_NAME = "dask-serverless-worker"
_SECRET_ENV = "DASK_SERVERLESS__SECRET"
_ROLE_WAIT_S = 60.0
SECRET_FILE = "dask-serverless-secret.yaml"


class DeployError(RuntimeError):
    """A deploy or destroy step failed; the message names the function or role."""


@dataclass
class DeployOptions:
    memory: list[int]
    settings: LambdaSettings = field(default_factory=LambdaSettings.from_config)
    requirements: str | None = None
    redis_url: str | None = None
    role: str | None = None
    runtime: str = f"python{packaging.runtime_python()}"
    build: str = "auto"  # auto | lambda | local (auto: local when endpoint_url is set)
    image_uri: str | None = None
    iam_endpoint_url: str | None = None
    subnets: list[str] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)


def role_name(prefix: str) -> str:
    return f"{prefix}-worker"


def worker_policy(prefix: str, vpc: bool) -> dict[str, Any]:
    """What a worker may do: write its logs, invoke the other workers, and (in a VPC, e.g.
    next to ElastiCache) manage its network interfaces."""
    statements = [
        {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream",
                                       "logs:PutLogEvents"], "Resource": "*"},
        {"Effect": "Allow", "Action": "lambda:InvokeFunction",
         "Resource": f"arn:aws:lambda:*:*:function:{prefix}-*"},
    ]
    if vpc:
        statements.append({"Effect": "Allow", "Resource": "*", "Action": [
            "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
            "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
            "ec2:UnassignPrivateIpAddresses"]})
    return {"Version": "2012-10-17", "Statement": statements}


def _uses_iam(settings: LambdaSettings, iam_endpoint_url: str | None) -> bool:
    return settings.endpoint_url is None or iam_endpoint_url is not None


def ensure_role(iam: Any, prefix: str, vpc: bool, say: Callable[[str], None]) -> str:
    """The ARN of role ``<prefix>-worker``, created with its policies when missing."""
    name = role_name(prefix)
    try:
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
        say(f"role {name}: exists ({arn})")
    except iam.exceptions.NoSuchEntityException:
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(_TRUST),
                              Description="dask-serverless workers")["Role"]["Arn"]
        say(f"role {name}: created ({arn})")
    iam.put_role_policy(RoleName=name, PolicyName=_POLICY_NAME,
                        PolicyDocument=json.dumps(worker_policy(prefix, vpc)))
    return arn


def deploy(opts: DeployOptions, *, lambda_client: Any = None, iam_client: Any = None,
           say: Callable[[str], None] = logger.info) -> list[dict[str, Any]]:
    """Create or update one function per memory size; returns what was done for each."""
    s = opts.settings
    for mb in opts.memory:
        ResourceConfig(mb)  # validates the memory size with a clear message
    lam = lambda_client or make_client("lambda", s)
    if opts.role:
        role = opts.role
    elif _uses_iam(s, opts.iam_endpoint_url):
        iam = iam_client or make_client("iam", s, endpoint_url=opts.iam_endpoint_url)
        role = ensure_role(iam, s.function_prefix, bool(opts.subnets), say)
    else:
        role = LOCAL_ROLE.format(prefix=s.function_prefix)
        say(f"role: {role} (placeholder: the local Lambda API server checks no roles)")
    package = None
    if opts.image_uri is None:
        platform = opts.build if opts.build != "auto" else (
            "local" if s.endpoint_url else "lambda")
        package = packaging.build_zip(opts.requirements, platform=platform,
                                      python_version=opts.runtime.removeprefix("python"))
        say(f"package: {package.path} ({package.size / 2**20:.1f} MB zipped, "
            f"{package.unzipped_size / 2**20:.1f} MB unzipped, {package.files} files, "
            f"{'cached' if package.cached else 'built'} for {platform})")
    secret = _secret(say)
    env = {"DASK_SERVERLESS__LAMBDA__FUNCTION_PREFIX": s.function_prefix,
           _SECRET_ENV: secret}
    if s.endpoint_url:
        env["DASK_SERVERLESS__LAMBDA__ENDPOINT_URL"] = s.endpoint_url
    if opts.redis_url:
        env["DASK_SERVERLESS__REDIS_URL"] = opts.redis_url
    digest = env_digest(env, secret)
    results = []
    for mb in opts.memory:
        desired: dict[str, Any] = {"Role": role, "MemorySize": mb, "Timeout": s.timeout,
                                   "Environment": {"Variables": env},
                                   "Description": f"dask-serverless worker, {mb} MB, "
                                                  f"environment {digest}"}
        if package is not None:
            desired.update(Runtime=opts.runtime, Handler=packaging.HANDLER)
        if opts.subnets:
            desired["VpcConfig"] = {"SubnetIds": opts.subnets,
                                    "SecurityGroupIds": opts.security_groups}
        name = s.function_name(mb)
        action = _deploy_one(lam, name, desired, package, opts.image_uri)
        _own_async_retries(lam, name)
        say(f"function {name}: {action}")
        results.append({"function": name, "action": action, "memory_mb": mb})
    return results


def secret_file() -> Path:
    """Where ``deploy`` stores a secret it generated (read back through ``dask.config``)."""
    return Path(dask.config.PATH) / SECRET_FILE


def _secret(say: Callable[[str], None]) -> str:
    """``serverless.secret``: workers must share it with clients to accept their payloads.
    A configured one is used as is; else this process's (or a new) random one is stored
    in ``secret_file()`` for this user's later processes."""
    value = dask.config.get("serverless.secret", None)
    if value and not serialize.is_generated(str(value)):
        return str(value)
    value = str(value or "ds-" + secrets.token_hex(32))
    path = secret_file()
    write_private(path, "# written by `dask-serverless deploy`: the payload secret its "
                        "workers accept\n" + yaml.safe_dump({"serverless": {"secret": value}}))
    dask.config.set({"serverless.secret": value})
    serialize.reset_key()
    say(f"generated serverless.secret and stored it in {path} (mode 0600): this user's "
        f"clients read it from there; elsewhere set {_SECRET_ENV} to the same value")
    return value


def env_digest(env: dict[str, str], secret: str) -> str:
    """A digest of the functions' environment keyed by the secret (it reveals nothing about
    either), so a re-deploy sees a change even where environment values are redacted."""
    rest = {k: v for k, v in env.items() if k != _SECRET_ENV}
    data = json.dumps(rest, sort_keys=True).encode()
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()[:16]


def _deploy_one(lam: Any, name: str, desired: dict[str, Any],
                package: packaging.Package | None, image_uri: str | None) -> str:
    try:
        current = lam.get_function(FunctionName=name)
    except lam.exceptions.ResourceNotFoundException:
        current = None
    code: dict[str, Any] = ({"ImageUri": image_uri} if package is None
                            else {"ZipFile": package.path.read_bytes()})
    if current is None:
        kind = {"PackageType": "Image"} if package is None else {}
        _with_role_retry(name, lambda: lam.create_function(
            FunctionName=name, Code=code, Publish=False, **kind, **desired))
        _wait(lam, "function_active_v2", name)
        return "created"
    done = []
    conf = current["Configuration"]
    same_code = (conf.get("CodeSha256") == package.sha256 if package is not None
                 else current.get("Code", {}).get("ImageUri") == image_uri)
    if not same_code:
        lam.update_function_code(FunctionName=name, **code)
        _wait(lam, "function_updated_v2", name)
        done.append("code")
    changed = {k: v for k, v in desired.items() if _differs(conf.get(k), v)}
    if changed:
        _with_role_retry(name, lambda: lam.update_function_configuration(
            FunctionName=name, **desired))
        _wait(lam, "function_updated_v2", name)
        done.append("configuration (" + ", ".join(sorted(changed)) + ")")
    return "updated " + " and ".join(done) if done else "unchanged"


def event_age_s() -> int:
    """How long Lambda keeps an asynchronous event waiting (its allowed range is 60 s to
    6 h): no longer than a run may take (``serverless.deadline``)."""
    return int(min(21600, max(60, dask.config.get("serverless.deadline"))))


def _own_async_retries(lam: Any, name: str) -> None:
    """The client re-sends an invocation whose worker died (leases, ``serverless.retries``):
    Lambda must not retry failed asynchronous invocations too (its default is twice), and
    an event that waited past the deadline is dropped."""
    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0,
                                         MaximumEventAgeInSeconds=event_age_s())


def _differs(current: Any, wanted: Any) -> bool:
    if current == REDACTED:  # not shown; the description's digest covers it
        return False
    if isinstance(wanted, dict) and isinstance(current, dict):
        return any(_differs(current.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list) and isinstance(current, list):
        return sorted(map(str, current)) != sorted(map(str, wanted))
    return current != wanted


def _wait(lam: Any, waiter: str, name: str) -> None:
    lam.get_waiter(waiter).wait(FunctionName=name,
                                WaiterConfig={"Delay": 1, "MaxAttempts": 300})


def _with_role_retry(name: str, call: Callable[[], Any]) -> Any:
    """A role created seconds ago may not be assumable yet: retry that error for a while."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + _ROLE_WAIT_S
    while True:
        try:
            return call()
        except ClientError as exc:
            msg = exc.response.get("Error", {}).get("Message", "")
            if "cannot be assumed" not in msg or time.monotonic() > deadline:
                raise DeployError(f"function {name}: {exc}") from exc
            time.sleep(2)


def destroy(settings: LambdaSettings | None = None, *, keep_role: bool = False,
            iam_endpoint_url: str | None = None, lambda_client: Any = None,
            iam_client: Any = None, say: Callable[[str], None] = logger.info) -> list[str]:
    """Delete every ``<prefix>-<memory_mb>`` function (and the role deploy created)."""
    s = settings or LambdaSettings.from_config()
    lam = lambda_client or make_client("lambda", s)
    names = [f["FunctionName"]
             for page in lam.get_paginator("list_functions").paginate()
             for f in page["Functions"] if s.memory_of(f["FunctionName"]) is not None]
    for name in names:
        try:
            lam.delete_function_event_invoke_config(FunctionName=name)
        except lam.exceptions.ResourceNotFoundException:
            pass  # never deployed by this version, or already removed
        lam.delete_function(FunctionName=name)
        say(f"function {name}: deleted")
    if not names:
        say(f"no functions named {s.function_prefix}-<memory_mb>")
    if not keep_role and _uses_iam(s, iam_endpoint_url):
        iam = iam_client or make_client("iam", s, endpoint_url=iam_endpoint_url)
        _delete_role(iam, role_name(s.function_prefix), say)
    return names


def _delete_role(iam: Any, name: str, say: Callable[[str], None]) -> None:
    try:
        attached = iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
    except iam.exceptions.NoSuchEntityException:
        return
    for p in attached:
        iam.detach_role_policy(RoleName=name, PolicyArn=p["PolicyArn"])
    for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
    iam.delete_role(RoleName=name)
    say(f"role {name}: deleted")
