"""Who may see the dashboard: whoever opens it with its token.

A dashboard listens on loopback, which every local user can reach, and shows recorded runs
(task keys, timings, errors, task log lines). So each dashboard has a random access token
(``serverless.dashboard.token``, None: a new one per dashboard, like Jupyter's): a page
opened without it shows a refusal and nothing else. The token travels in the URL
(``?token=...``), is remembered for the browser session (pages switched to keep it), and
is registered with the dashboard in the metrics Redis (password protected), so a compute
that reuses a dashboard opens it with its token.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlencode

PARAM = "token"
_SESSION_KEY = "dask-serverless-access"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def page_url(base: str, token: str | None, path: str = "", **params: str) -> str:
    """``base/path?token=...&params`` (no token: without it)."""
    query = {**({PARAM: token} if token else {}), **params}
    return f"{base.rstrip('/')}/{path.lstrip('/')}" + (f"?{urlencode(query)}" if query else "")


def allowed(token: str | None) -> bool:
    """In the app: whether this browser session opened the dashboard with ``token`` (None:
    the dashboard has none, all may see it); says why not on the page when it did not."""
    import streamlit as st

    if token is None:
        return True
    given = st.query_params.get(PARAM) or ""
    if st.session_state.get(_SESSION_KEY) or hmac.compare_digest(given.encode(),
                                                                   token.encode()):
        st.session_state[_SESSION_KEY] = True
        if given != token:
            st.query_params[PARAM] = token  # a reload of this page keeps working
        return True
    st.error("This dashboard shows recorded runs only to whoever opens it with its access "
             "token: open the URL `dask-serverless dashboard` printed (or a compute with "
             "`serverless_dashboard=True` logged), which ends in `?token=...`.")
    return False
