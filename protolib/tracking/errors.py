"""The one-line :class:`TrackingError` of a failed sync: what failed, where (credentials
removed from the URI) and what to do."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from protolib.io import one_line
from protolib.tracking.store import REMOTE_SCHEMES


class TrackingError(RuntimeError):
    """The MLflow sync failed; the message is one line that says why and what to do."""


def causes(error: BaseException) -> list[BaseException]:
    """``error`` and everything it was raised from (causes, contexts, urllib3 reasons)."""
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        item = todo.pop(0)
        if item is None or any(item is s for s in seen) or len(seen) > 20:
            continue
        seen.append(item)
        todo.extend([item.__cause__, item.__context__, getattr(item, "reason", None)])
        todo.extend(arg for arg in item.args if isinstance(arg, BaseException))
    return seen


def unreachable(chain: list[BaseException]) -> bool:
    """Whether ``chain`` holds a connection failure or a timeout."""
    import requests

    for item in chain:
        if isinstance(item, ConnectionError | TimeoutError | requests.ConnectionError):
            return True
        if isinstance(item, requests.Timeout):
            return True
        if type(item).__name__ in ("NewConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):
            return True
    return False


def redact(uri: str) -> str:
    """``uri`` without a user name or password."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def tracking_error(uri: str, error: BaseException) -> TrackingError:
    """The one-line :class:`TrackingError` for ``error`` raised by the store at ``uri``."""
    chain = causes(error)
    kind = "server" if urlsplit(uri).scheme in REMOTE_SCHEMES else "store"
    root = chain[-1]
    for item in chain:  # the innermost that says something
        if str(item).strip():
            root = item
    if unreachable(chain):
        what, when = f"is unreachable: {one_line(root, 160)}", "up"
    elif str(error).startswith("API request to"):  # MLflow's wrapper of an HTTP failure
        what, when = f"failed: {one_line(root, 240)}", "fixed"
    else:
        what, when = f"failed: {one_line(error, 240)}", "fixed"
    return TrackingError(
        f"MLflow tracking {kind} at {redact(uri)} {what}; runs and aggregates are untouched; "
        f"re-run the tracking rule once it is {when}"
    )
