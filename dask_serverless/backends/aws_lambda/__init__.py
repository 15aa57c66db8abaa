"""AWS Lambda backend: boto3 invoker, deploy/destroy and packaging, local Lambda API server.

Workers run ``dask_serverless.backends.aws_lambda.handler.lambda_handler``; the client and the
workers invoke ``<prefix>-<memory_mb>`` functions with ``InvocationType="Event"``.
"""

from .backend import LambdaBackend
from .settings import LambdaSettings

__all__ = ["LambdaBackend", "LambdaSettings"]
