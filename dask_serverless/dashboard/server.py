"""``dask-serverless dashboard``: serve the Streamlit app over a metrics Redis.

The app runs in this process, so the metrics Redis is resolved once here (the given URL,
else ``session.metrics_url()``: the configured one or the persistent embedded server) and
every page uses it. While it serves, the dashboard's URL is registered in that Redis
(``MetricsKeys.dashboard``, with its access token: ``access``) so a compute asking for a
dashboard reuses it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import dask

from .. import config, session
from ..storage.keys import MetricsKeys
from ..storage.store import connect, redact
from . import access

logger = logging.getLogger(__name__)

APP = Path(__file__).parent / "app.py"


def serve(redis_url: str | None = None, port: int = 8501, host: str = "127.0.0.1") -> int:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    try:
        from streamlit.web import bootstrap
    except ImportError as exc:
        raise SystemExit("the dashboard needs streamlit and plotly: "
                         "pip install 'dask-serverless[dashboard]'") from exc
    if redis_url is not None:
        config.get("metrics.redis-url", redis_url)  # a bad URL is a clear error
        dask.config.set({"serverless.metrics.redis-url": redis_url})
    url = session.metrics_url()
    if url is None:
        raise SystemExit("serverless.metrics.enabled is off: the dashboard has nothing to show")
    token = config.get("dashboard.token") or access.new_token()
    dask.config.set({"serverless.metrics.redis-url": url, "serverless.dashboard.token": token})
    os.environ["DASK_SERVERLESS__METRICS__REDIS_URL"] = url  # for anything the app spawns
    me = json.dumps({"url": f"http://{host}:{port}", "pid": os.getpid(), "token": token})
    r = connect(url)
    r.set(MetricsKeys.dashboard, me)
    logger.info("dashboard on http://%s:%d over metrics at %s", host, port, redact(url))
    # the one place the token is shown: this user's terminal (or the 0600 log of a
    # dashboard a compute started), like Jupyter's
    sys.stderr.write(f"dashboard: {access.page_url(f'http://{host}:{port}', token)}\n")
    sys.stderr.flush()
    flags = {"server_port": port, "server_address": host, "server_headless": True,
             "browser_gatherUsageStats": False, "server_fileWatcherType": "none",
             "global_developmentMode": False, "theme_base": "light",
             "client_toolbarMode": "viewer", "server_enableAgentApi": False}
    if host in ("127.0.0.1", "localhost", "::1"):  # a web page cannot rebind a name to it
        flags["server_allowedHosts"] = ["127.0.0.1", "localhost", "::1"]
    else:
        logger.warning("the dashboard serves %s, beyond loopback: its pages and access token "
                       "travel unencrypted (plain HTTP); put it behind TLS", host)
    try:
        bootstrap.load_config_options(flag_options=flags)
        bootstrap.run(str(APP), False, [], flags)
    finally:
        if r.get(MetricsKeys.dashboard) == me.encode():
            r.delete(MetricsKeys.dashboard)
        session.close()
    return 0
