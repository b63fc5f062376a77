"""The Clix client: one per worker process, one keep-alive connection per concurrent request.

``POST {base}/api/v1/campaigns/{campaign_id}:trigger`` with the project id,
the secret API key and a JSON body that is exactly what the producer gave.
Resending is :mod:`tasks.retries`' job; this module sends once per attempt and
classifies the answer (:func:`tasks.errors.from_response`).

The API key lives only in the client's default headers: it is not in any
exception text (httpx's messages name the URL, never headers), log line or
``repr``. The transport is a constructor argument, so unit tests pass an
``httpx.MockTransport`` instead of patching.

Concurrency: a request checks out an ``httpx.Client`` of its own (one
keep-alive connection each) and gives it back when answered. One client shared
by tens of threads serialises them behind httpcore's pool lock (measured on 2
cores at 50 ms latency, 64 threads: ~280/s shared against ~970/s with a client
each); and under gevent its readability check yields while holding that lock.
Clients are made on demand, so their number follows the pool's concurrency
(threads, greenlets, or 1 in a prefork child) without being told it; up to
``pool_size`` idle ones are kept, more are closed when given back.

Cookies: none are kept. Clix authenticates every request by its headers; a
``Set-Cookie`` (from Clix or a proxy in front of it) would otherwise be stored
in whichever pooled client took that request and sent back by that one alone,
a session nobody asked for, and reading it costs ~10 µs of every answer.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from config.settings import Settings
from tasks.errors import (
    ClixError,
    NetworkError,
    OutOfTime,
    TransientError,
    from_response,
    from_transport_error,
)
from tasks.models import TriggerRequest
from tasks.quota import Quota
from tasks.retries import RetryPolicy, stop_when_budget_spent

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
#: Campaigns whose trigger URL a client keeps parsed (:meth:`ClixClient.url_for`).
URLS_CACHED = 1024


@dataclass(frozen=True, slots=True)
class Sent:
    """Clix accepted the trigger."""

    trigger_id: str
    attempts: int
    latency_ms: float


class _NoCookies(httpx.Cookies):
    """A cookie jar that stays empty: answers' ``Set-Cookie`` headers are not read."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Keep nothing (see the module docstring)."""


class _CookielessClient(httpx.Client):
    """An ``httpx.Client`` that never stores or sends cookies."""

    _no_cookies = _NoCookies()  # empty forever: one instance serves every client

    @property
    def cookies(self) -> httpx.Cookies:
        """Always empty."""
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise TypeError("the Clix client keeps no cookies")


class ClixClient:
    """Sends triggers to Clix. Build once per process; safe for any number of threads."""

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
        urls_cached: int = URLS_CACHED,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.pool_size = pool_size
        self._sleep = sleep
        self._project_id = project_id
        self._api_key = api_key  # a SecretStr until it goes into a request header
        self._timeout = httpx.Timeout(timeout_s)
        self._transport = transport
        # Built once and shared: building a verifying context takes ~20 ms and
        # ~1 MB per client; wrapping sockets with one context is thread-safe.
        self._tls: ssl.SSLContext | None = None
        self._idle: list[httpx.Client] = []  # LIFO: the warmest connection goes out first
        self._lock = threading.Lock()  # guards the list and URLs only, never held during a request
        self._urls: OrderedDict[str, httpx.URL] = OrderedDict()  # by campaign id (url_for)
        self._urls_cached = urls_cached
        self.created = 0  # httpx clients made so far (how far concurrency reached)

    def _new_http(self) -> httpx.Client:
        # One request at a time per client: one connection, kept alive.
        if self._tls is None and self._transport is None:
            self._tls = httpx.create_ssl_context()
        return _CookielessClient(
            base_url=self.base_url,
            headers={
                "X-Clix-Project-ID": self._project_id,
                "X-Clix-API-Key": self._api_key.get_secret_value(),
                "Content-Type": "application/json",
                "User-Agent": "clix-trigger-worker",
            },
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            verify=self._tls if self._tls is not None else True,
            transport=self._transport,
            follow_redirects=False,
        )

    @contextmanager
    def _http(self) -> Iterator[httpx.Client]:
        """An httpx client for this request alone, given back (or closed) afterwards."""
        with self._lock:
            http = self._idle.pop() if self._idle else None
            if http is None:
                self.created += 1
        if http is None:
            http = self._new_http()  # outside the lock: building one takes a few ms
        try:
            yield http
        finally:
            with self._lock:
                keep = len(self._idle) < self.pool_size
                if keep:
                    self._idle.append(http)
            if not keep:
                http.close()

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
        """Close idle pooled connections (those in use close when given back)."""
        with self._lock:
            idle, self._idle, self.pool_size = self._idle, [], 0
        for http in idle:
            http.close()

    @staticmethod
    def path_for(campaign_id: str) -> str:
        """The trigger endpoint's path for a campaign id (validated beforehand)."""
        return f"/api/v1/campaigns/{quote(campaign_id, safe=_SEGMENT_SAFE)}:trigger"

    def url_for(self, campaign_id: str) -> httpx.URL:
        """The trigger endpoint's absolute URL for a campaign, parsed once per campaign.

        httpx parses a relative path twice per request (joining it to the base
        URL, then building the request): about 20 µs of a request's CPU. A
        parsed absolute URL skips both. Bounded: the ``urls_cached`` most
        recently used campaigns are kept (:data:`URLS_CACHED` by default).
        """
        with self._lock:
            url = self._urls.get(campaign_id)
            if url is not None:
                self._urls.move_to_end(campaign_id)
                return url
        # the base URL has no trailing slash and the path starts with one: what
        # httpx's own join of base_url and path gives
        url = httpx.URL(self.base_url + self.path_for(campaign_id))
        with self._lock:
            self._urls[campaign_id] = url
            if len(self._urls) > self._urls_cached:
                self._urls.popitem(last=False)
        return url

    def send_once(self, request: TriggerRequest) -> tuple[str, Quota | None]:
        """One POST; return the ``trigger_id`` and quota, or raise a :class:`ClixError`."""
        url = self.url_for(request.campaign_id)
        try:
            with self._http() as http:
                response = http.post(url, content=request.body_bytes())
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
        slot_wait_s: Callable[[], float] | None = None,
    ) -> Sent:
        """Send with the retry policy; raise the last :class:`ClixError` when it gives up.

        ``remaining_s``: time left before the delivery's deadline; no retry
        starts that could not finish within it. When that, and not the retry
        budget, stopped a transient failure, raises :class:`OutOfTime` instead.
        ``slot_wait_s``: how long ``before_attempt`` waited for rate-limit
        slots so far (not charged to the retry deadline).
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

        retrying = self.policy.retrying(
            sleep=self._sleep, remaining_s=remaining_s, slot_wait_s=slot_wait_s
        )
        try:
            trigger_id = retrying(attempt)
        except TransientError as exc:
            stop = retrying.stop
            if isinstance(stop, stop_when_budget_spent) and stop.out_of_time:
                raise OutOfTime(exc) from exc  # budget left, no time: requeued, not dead
            raise
        return Sent(trigger_id, attempts, (time.monotonic() - started) * 1000)


def is_ambiguous(exc: ClixError | None) -> bool:
    """True when Clix may have accepted a request we got no answer to."""
    return isinstance(exc, NetworkError) and exc.ambiguous
