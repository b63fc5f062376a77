"""Fixtures of the fast unit tests: fakeredis, explicit settings, a scripted Clix.

Nothing here touches the network or a real Redis: Clix is an
``httpx.MockTransport`` handed to :class:`tasks.client.ClixClient`, Redis is a
``fakeredis`` server private to each test, and every sleep is recorded instead
of slept. Project code is wired through its constructor arguments only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import httpx
import pytest
from pydantic import SecretStr

from config.keys import KeySpace, Scope
from config.settings import Settings
from tasks.client import ClixClient
from tasks.context import WorkerContext
from tasks.delivery import Delivery
from tasks.dlq import DeadLetterQueue
from tasks.idempotency import IdempotencyStore
from tasks.ratelimit import RateLimiter
from tasks.retries import RetryPolicy

PROJECT_ID = "proj-unit"
API_KEY = "sk-unit-Zq9-0123456789-never-leak-me"
BASE_URL = "https://clix.test"

#: A step of a scripted Clix: an HTTP status (200 answers a fresh trigger id),
#: a ready response, an exception to raise, or a function of the request.
Step = int | httpx.Response | BaseException | Callable[[httpx.Request], httpx.Response]


class SleepRecorder:
    """A ``sleep`` that records what it was asked to wait and returns at once.

    With a ``clock`` (a :class:`StandingClock`), each sleep moves it on by the
    time slept, so deadlines measured on it pass as if the waits were real.
    """

    def __init__(
        self,
        on_sleep: Callable[[int, float], None] | None = None,
        clock: StandingClock | None = None,
    ) -> None:
        self.calls: list[float] = []
        self._on_sleep = on_sleep
        self._clock = clock

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self._clock is not None:
            self._clock.advance(seconds)
        if len(self.calls) > 1000:
            raise AssertionError("sleep called more than 1000 times: a loop does not end")
        if self._on_sleep is not None:
            self._on_sleep(len(self.calls), seconds)


class StandingClock:
    """A clock (seconds, like ``time.time``) that stands still until a test advances it.

    The pipeline's rate limiter reads it instead of Redis ``TIME``, so the waits
    it hands out are exact whatever the machine's load.
    """

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ClixHarness:
    """A client talking to a scripted Clix, with what it sent and how long it waited."""

    client: ClixClient
    requests: list[httpx.Request] = field(default_factory=list)
    sleeps: SleepRecorder = field(default_factory=SleepRecorder)


def _respond(step: Step, request: httpx.Request, number: int) -> httpx.Response:
    if isinstance(step, BaseException):
        raise step
    if isinstance(step, httpx.Response):
        return step
    if isinstance(step, int):
        if 200 <= step < 300:
            return httpx.Response(step, json={"trigger_id": f"trg-{number}"})
        return httpx.Response(step, json={"error": f"scripted status {step}"})
    return step(request)


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    """A fakeredis server of this test alone (``connected = False`` emulates an outage)."""
    return fakeredis.FakeServer()


@pytest.fixture
def fake_redis(fake_server: fakeredis.FakeServer) -> Iterator[fakeredis.FakeRedis]:
    conn = fakeredis.FakeRedis(server=fake_server)
    conn.flushall()
    yield conn
    fake_server.connected = True
    conn.flushall()
    conn.close()


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """Build settings from explicit values only (no ``.env``); keywords override."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "clix_project_id": PROJECT_ID,
            "clix_api_key": API_KEY,
            "clix_base_url": BASE_URL,
            "redis_url": "redis://localhost:6379/15",
            "clix_max_attempts": 3,
            "clix_backoff_initial_s": 0.01,
            "clix_backoff_max_s": 0.04,
            "clix_retry_deadline_s": 5.0,
            "clix_retry_after_max_s": 2.0,
            "clix_request_timeout_s": 1.0,
            "clix_redelivery_limit": 3,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def api_key() -> str:
    """The secret every leak check looks for."""
    return API_KEY


@pytest.fixture
def keys(settings: Settings) -> KeySpace:
    return KeySpace(settings.clix_key_prefix)


@pytest.fixture
def scope() -> Scope:
    return Scope(PROJECT_ID, "camp-1", "key-1")


@pytest.fixture
def store(fake_redis: fakeredis.FakeRedis, keys: KeySpace) -> IdempotencyStore:
    return IdempotencyStore(fake_redis, keys, lease_ms=30_000, ttl_s=3_600)


@pytest.fixture
def dlq(fake_redis: fakeredis.FakeRedis, keys: KeySpace) -> DeadLetterQueue:
    return DeadLetterQueue(fake_redis, keys, ttl_s=3_600)


@pytest.fixture
def mock_clix(settings: Settings) -> Iterator[Callable[..., ClixHarness]]:
    """Factory: ``mock_clix(503, 503, 200, then=None, policy=None, on_sleep=None, clock=None)``.

    Each request takes the next step; after the last one ``then`` (if given)
    answers every further request, otherwise a further request fails the test.
    """
    made: list[ClixClient] = []

    def factory(
        *steps: Step,
        then: Step | None = None,
        policy: RetryPolicy | None = None,
        on_sleep: Callable[[int, float], None] | None = None,
        api_key: str = API_KEY,
        clock: StandingClock | None = None,
    ) -> ClixHarness:
        script = list(steps)
        requests: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            request.read()
            requests.append(request)
            if script:
                step = script.pop(0)
            elif then is not None:
                step = then
            else:
                raise AssertionError(f"unexpected request #{len(requests)} to {request.url}")
            return _respond(step, request, len(requests))

        sleeps = SleepRecorder(on_sleep, clock=clock)
        client = ClixClient(
            base_url=settings.clix_base_url,
            project_id=PROJECT_ID,
            api_key=SecretStr(api_key),
            policy=policy if policy is not None else RetryPolicy.from_settings(settings),
            timeout_s=settings.clix_request_timeout_s,
            transport=httpx.MockTransport(handler),
            sleep=sleeps,
        )
        made.append(client)
        return ClixHarness(client, requests, sleeps)

    yield factory
    for client in made:
        client.close()


@dataclass
class Pipeline:
    """A worker context on fakeredis and a scripted Clix, and a way to run deliveries.

    ``sleeps`` records the delivery's own waits (copy waits, commit retries,
    requeue pause) and moves ``monotonic`` (the delivery's deadline clock) on,
    ``clix.sleeps`` the retry backoff and ``limiter_sleeps`` the rate limiter's
    waits for a request slot; none of them really sleeps.
    """

    ctx: WorkerContext
    clix: ClixHarness
    limiter_sleeps: SleepRecorder = field(default_factory=SleepRecorder)
    #: the limiter's clock: it stands still, so limiter waits are exact under any load
    clock: StandingClock = field(default_factory=StandingClock)
    #: the delivery's monotonic clock (deadline, lease); the delivery's sleeps move it
    monotonic: StandingClock = field(default_factory=lambda: StandingClock(0.0))
    on_sleep: Callable[[int, float], None] | None = None
    sleeps: SleepRecorder = field(init=False)

    def __post_init__(self) -> None:
        self.sleeps = SleepRecorder(self.on_sleep, clock=self.monotonic)

    def delivery(
        self,
        kwargs: dict[str, Any],
        *,
        task_id: str = "task-1",
        args: tuple[Any, ...] = (),
        sleep: SleepRecorder | None = None,
    ) -> Delivery:
        return Delivery(
            self.ctx,
            task_id,
            args,
            kwargs,
            sleep=sleep or self.sleeps,
            wall_clock=self.clock,
            clock=self.monotonic,
        )

    def run(self, kwargs: dict[str, Any], **options: Any) -> dict[str, Any]:
        return self.delivery(kwargs, **options).run()


@pytest.fixture
def pipeline(
    make_settings: Callable[..., Settings],
    fake_redis: fakeredis.FakeRedis,
    mock_clix: Callable[..., ClixHarness],
) -> Callable[..., Pipeline]:
    """Factory: ``pipeline(*steps, then=None, on_sleep=None, on_limiter_sleep=None,
    on_delivery_sleep=None, monotonic=None, **settings)``.

    The context is wired by :meth:`WorkerContext.build` (limiter and breaker
    included); only the limiter's ``sleep`` is swapped for a recorder and its
    clock for one that stands still, so a 429 hold is asserted on exactly
    instead of slept through.
    """

    def build(
        *steps: Step,
        then: Step | None = None,
        on_sleep: Callable[[int, float], None] | None = None,
        on_limiter_sleep: Callable[[int, float], None] | None = None,
        on_delivery_sleep: Callable[[int, float], None] | None = None,
        monotonic: StandingClock | None = None,
        **overrides: Any,
    ) -> Pipeline:
        settings = make_settings(**overrides)
        # every wait of the delivery (its own, the backoff, the limiter's) moves
        # its deadline clock on, as real waits would
        monotonic = monotonic if monotonic is not None else StandingClock(0.0)
        harness = mock_clix(
            *steps,
            then=then,
            policy=RetryPolicy.from_settings(settings),
            on_sleep=on_sleep,
            clock=monotonic,
        )
        ctx = WorkerContext.build(settings, redis_conn=fake_redis, clix=harness.client)
        built = ctx.limiter
        limiter_sleeps = SleepRecorder(on_limiter_sleep, clock=monotonic)
        clock = StandingClock()
        ctx.limiter = RateLimiter(
            fake_redis,
            built.key,
            rate_per_s=built.rate_per_s,
            burst=built.burst,
            max_wait_s=built.max_wait_s,
            give_up_s=built.give_up_s,
            sleep=limiter_sleeps,
            clock=clock,
        )
        return Pipeline(
            ctx,
            harness,
            limiter_sleeps=limiter_sleeps,
            clock=clock,
            monotonic=monotonic,
            on_sleep=on_delivery_sleep,
        )

    return build


@pytest.fixture
def sleep_recorder() -> Callable[..., SleepRecorder]:
    """Factory of recording sleeps, optionally calling ``on_sleep(call_number, seconds)``."""
    return SleepRecorder
