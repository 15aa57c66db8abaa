"""``serverless.lambda.*`` settings, the function naming scheme and the boto3 client."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ... import config
from ...errors import ForeignListenerError
from ...storage import loopback
from ...storage.loopback import Owner

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LambdaSettings:
    """Where and how to reach the worker functions (see ``config.DEFAULTS``)."""

    function_prefix: str = "dask-serverless"
    endpoint_url: str | None = None
    region: str | None = None
    parallelism: int = 1000
    invoke_concurrency: int = 64
    max_retries: int = 8
    max_event_bytes: int = 256 * 1024
    timeout: int = 900

    @classmethod
    def from_config(cls, **overrides: Any) -> LambdaSettings:
        """Settings from ``serverless.lambda.*``; non-None ``overrides`` win."""
        values = {}
        for field in cls.__dataclass_fields__:
            given = overrides.get(field)
            values[field] = config.get("lambda." + field.replace("_", "-"), given)
        return cls(**values)

    def function_name(self, memory_mb: int) -> str:
        """One function per resource config: ``<prefix>-<memory_mb>``."""
        return f"{self.function_prefix}-{memory_mb}"

    def memory_of(self, function_name: str) -> int | None:
        """The memory size encoded in one of our function names, or None."""
        head, _, tail = function_name.rpartition("-")
        return int(tail) if head == self.function_prefix and tail.isdigit() else None


def make_client(service: str, settings: LambdaSettings, *, pool_size: int = 10,
                endpoint_url: str | None = None) -> Any:
    """A boto3 client with our own retry policy (botocore's retries are turned off).

    With a custom ``endpoint_url``, credentials a local Lambda API server published for it
    (``serverless.lambda.local-credentials``) come first, then the boto3 chain; with
    neither, placeholder ones (the server's refusal then says what it accepts). A loopback
    endpoint another user listens on is refused (``ForeignListenerError``): requests carry
    invocations and the functions' environment.
    """
    import boto3
    from botocore.config import Config

    from .local_auth import published

    url = endpoint_url if endpoint_url is not None else (
        settings.endpoint_url if service == "lambda" else None)
    if url is not None and loopback.owner(url) is Owner.FOREIGN:
        raise ForeignListenerError(
            f"refusing the {service} endpoint {loopback.describe(url)}: another user of "
            "this machine listens there (is your local Lambda API server down?); nothing "
            "was sent to it")
    session = boto3.session.Session(region_name=settings.region)
    kwargs: dict[str, Any] = {}
    creds = published(url) if url is not None else None
    if creds is not None:
        kwargs = creds.client_kwargs()
    elif url is not None and session.get_credentials() is None:
        logger.info("no AWS credentials found for endpoint %s", url)
        kwargs = {"aws_access_key_id": "none", "aws_secret_access_key": "none"}
    region = session.region_name or ("us-east-1" if url is not None else None)
    if region is None:
        raise ValueError("no AWS region configured: set serverless.lambda.region, "
                         "AWS_REGION or the region in ~/.aws/config")
    cfg = Config(max_pool_connections=pool_size, retries={"total_max_attempts": 1},
                 connect_timeout=10, read_timeout=900 if service == "lambda" else 60,
                 tcp_keepalive=True)
    return session.client(service, endpoint_url=url, region_name=region, config=cfg,
                          **kwargs)
