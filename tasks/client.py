"""The Clix client: one pooled ``httpx.Client`` per worker process.

``POST {base}/api/v1/campaigns/{campaign_id}:trigger`` with the project id,
the secret API key and a JSON body that is exactly what the producer gave.
Resending is :mod:`tasks.retries`' job; this module sends once per attempt and
classifies the answer (:func:`tasks.errors.from_response`).

The API key lives only in the client's default headers: it is not in any
exception text (httpx's messages name the URL, never headers), log line or
``repr``. The transport is a constructor argument, so unit tests pass an
``httpx.MockTransport`` instead of patching.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from config.settings import Settings
from tasks.errors import (
    ClixError,
    NetworkError,
    Quota,
    from_response,
    from_transport_error,
)
from tasks.models import TriggerRequest
from tasks.retries import RetryPolicy

__all__ = ["AttemptHook", "ClixClient", "Sent"]

#: Called before each request with its number in this delivery (1-based).
BeforeAttempt = Callable[[int], None]
#: Called after each request with its number, its error (``None``: accepted), its
#: latency in ms and Clix's X-RateLimit-* quota when the answer carried one.
AttemptHook = Callable[[int, ClixError | None, float, Quota | None], None]

# Characters RFC 3986 allows in a path segment besides unreserved ones; `%`
# is not among them, so an id like "a%2Fb" stays literal instead of decoding
# to a slash on the server.
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"


@dataclass(frozen=True, slots=True)
class Sent:
    """Clix accepted the trigger."""

    trigger_id: str
    attempts: int
    latency_ms: float


class ClixClient:
    """Sends triggers to Clix. Build once per process; thread-safe like httpx.Client."""

    def __init__(
        self,
        *,
        base_url: str,
        project_id: str,
        api_key: SecretStr,
        policy: RetryPolicy,
        timeout_s: float = 10.0,
        pool_size: int = 10,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={
                "X-Clix-Project-ID": project_id,
                "X-Clix-API-Key": api_key.get_secret_value(),
                "Content-Type": "application/json",
                "User-Agent": "clix-trigger-worker",
            },
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> ClixClient:
        """A client for the configured project; raises if credentials are missing."""
        project_id, api_key = settings.require_credentials()
        options: dict[str, object] = {
            "base_url": settings.clix_base_url,
            "project_id": project_id,
            "api_key": api_key,
            "policy": RetryPolicy.from_settings(settings),
            "timeout_s": settings.clix_request_timeout_s,
            "pool_size": settings.clix_http_pool_size,
        }
        options.update(overrides)
        return cls(**options)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"ClixClient(base_url={self.base_url!r})"

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()

    @staticmethod
    def path_for(campaign_id: str) -> str:
        """The trigger endpoint's path for a campaign id (validated beforehand)."""
        return f"/api/v1/campaigns/{quote(campaign_id, safe=_SEGMENT_SAFE)}:trigger"

    def send_once(self, request: TriggerRequest) -> tuple[str, Quota | None]:
        """One POST; return the ``trigger_id`` and quota, or raise a :class:`ClixError`."""
        try:
            response = self._http.post(
                self.path_for(request.campaign_id), content=request.body_bytes()
            )
        except httpx.TransportError as exc:
            raise from_transport_error(exc) from None
        error = from_response(response)
        if error is not None:
            raise error
        quota = Quota.from_headers(response.headers)
        try:
            trigger_id = response.json()["trigger_id"]
        except (ValueError, KeyError, TypeError):
            trigger_id = None
        if not isinstance(trigger_id, str) or not trigger_id:
            # Accepted, but we cannot tell the id: record the acceptance
            # rather than resend a trigger Clix has taken.
            return "unknown", quota
        return trigger_id, quota

    def trigger(
        self,
        request: TriggerRequest,
        *,
        before_attempt: BeforeAttempt | None = None,
        after_attempt: AttemptHook | None = None,
        remaining_s: Callable[[], float] | None = None,
    ) -> Sent:
        """Send with the retry policy; raise the last :class:`ClixError` when it gives up.

        ``remaining_s``: time left before the delivery's deadline; no retry
        starts that could not finish within it.
        """
        attempts = 0
        started = time.monotonic()

        def attempt() -> str:
            nonlocal attempts
            attempts += 1
            if before_attempt is not None:
                before_attempt(attempts)
            t0 = time.monotonic()
            try:
                trigger_id, quota = self.send_once(request)
            except ClixError as exc:
                if after_attempt is not None:
                    after_attempt(attempts, exc, (time.monotonic() - t0) * 1000, None)
                raise
            if after_attempt is not None:
                after_attempt(attempts, None, (time.monotonic() - t0) * 1000, quota)
            return trigger_id

        trigger_id = self.policy.retrying(sleep=self._sleep, remaining_s=remaining_s)(attempt)
        return Sent(trigger_id, attempts, (time.monotonic() - started) * 1000)


def is_ambiguous(exc: ClixError | None) -> bool:
    """True when Clix may have accepted a request we got no answer to."""
    return isinstance(exc, NetworkError) and exc.ambiguous
