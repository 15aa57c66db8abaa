"""The conformance suite again, on the ``lambda`` backend through the local Lambda API
server (functions deployed by ``deploy``; workers invoke successors through boto3)."""

import pytest
from test_conformance import *  # noqa: F403  (re-collects every conformance test here)

pytestmark = pytest.mark.usefixtures("any_redis", "lambda_backend")
