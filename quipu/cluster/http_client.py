"""The few HTTP calls the supervisor and the CLI make: health checks, flush, freeze, types,
and the router's /v1/cluster/* endpoints.

Blocking on purpose: the supervisor is a single-threaded loop over its children (so the
child processes can be forked safely) and the CLI makes one call at a time. A call that
cannot reach the process is one error, `Unreachable`, that the caller reports or retries.
"""

import http.client
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from quipu.core.errors import QuipuError


class Unreachable(QuipuError):
    """Nothing answered at that URL (refused, reset, timed out)."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> object:
        return json.loads(self.body) if self.body else None

    def error_text(self) -> str:
        """The `{"error": ...}` message of a refusal, or the status when there is none."""
        try:
            body = self.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return f"{self.status}: {body['error']}"
        return f"HTTP {self.status}"


def call(
    base_url: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: object = None,
    tenant: str | None = None,
    timeout: float = 10.0,
) -> Reply:
    parts = urlsplit(base_url)
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if tenant is not None:
        headers["X-Quipu-Tenant"] = tenant
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, response.read())
    except (OSError, http.client.HTTPException) as err:  # TimeoutError is an OSError
        raise Unreachable(f"{base_url} did not answer {method} {path} ({type(err).__name__})") from err
    finally:
        conn.close()


def healthy(base_url: str, timeout: float = 2.0) -> bool:
    """GET /v1/healthz answers 200 (ok or degraded)."""
    try:
        return call(base_url, "GET", "/v1/healthz", timeout=timeout).status == 200
    except Unreachable:
        return False
