"""The core scenarios on a production-like Redis: TLS only, client certificates, an ACL user.

The store, the Redis broker and Celery's result backend all live on one
``redis-server`` that has no plain-text port, requires a client certificate
signed by a CA made for this module, has its ``default`` user switched off and
lets the worker in as ``clix``, whose rights are exactly
:data:`config.redis_acl.WORKER_COMMANDS` (the list the README tells operators
to grant). Real ``celery -A worker worker`` processes deliver to the sandbox.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pytest
import redis

from config.connections import store_client
from config.redis_acl import acl_rules
from tasks.state_metrics import RedisStateCollector
from tests.integration.conftest import Fleet, make_fleet
from tests.integration.processes import SandboxProcess, clean_env, cli, cli_json, wait_until
from tests.integration.tls_redis import (
    AclUser,
    ThrowawayCA,
    TlsRedisServer,
    start_or_skip,
    tls_redis_or_skip,
)
from worker.redis_server import RedisServer

pytestmark = pytest.mark.integration

WORKER_USER = "clix"


@dataclass
class TlsFleet(Fleet):
    """A fleet whose own look at Redis goes through the server's admin user over TLS."""

    server: TlsRedisServer | None = None

    def redis(self) -> redis.Redis:
        assert self.server is not None
        return self.server.client()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    """The CA of this module's Redis (made fresh, thrown away with the temp dir)."""
    tls_redis_or_skip()
    return ThrowawayCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_server(
    ca: ThrowawayCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsRedisServer]:
    """TLS-only Redis with AOF on, the worker's ACL user and an admin."""
    server = TlsRedisServer(
        ca,
        ca.issue("server"),
        (AclUser(WORKER_USER, acl_rules()),),
        binary=tls_redis_or_skip(),
        directory=tmp_path_factory.mktemp("tls-redis"),
    )
    start_or_skip(server)
    yield server
    server.stop()


@pytest.fixture
def tls_fleet(
    tls_server: TlsRedisServer, sandbox: SandboxProcess, api_key: str, workdir: Path
) -> Iterator[Callable[..., TlsFleet]]:
    """Fleets with store and broker on the TLS server as ``clix`` (recovery tuned for SIGKILL)."""
    made: list[TlsFleet] = []

    def build(clix: SandboxProcess | None = None) -> TlsFleet:
        base = make_fleet(
            tls_server.url_for(WORKER_USER),
            clix or sandbox,
            api_key,
            workdir,
            CLIX_VISIBILITY_TIMEOUT_S="10",
            CLIX_UNACKED_RESTORE_INTERVAL_S="1",
            **tls_server.tls_env(),
        )
        fleet = TlsFleet(
            **{f.name: getattr(base, f.name) for f in fields(Fleet)}, server=tls_server
        )
        made.append(fleet)
        return fleet

    yield build
    for fleet in made:
        fleet.stop()


def _denied(server: TlsRedisServer) -> list[str]:
    """What the server refused the worker's user (``ACL LOG``), but CLIENT SETINFO.

    redis-py sends CLIENT SETINFO on connecting to Redis 7.2+ and ignores a
    refusal: it is deliberately not in the list.
    """
    entries = server.client(decode_responses=True).acl_log()
    return [
        f"{e['reason']} {e['object']}"
        for e in entries
        if e["username"] == WORKER_USER and e["object"] != "client|setinfo"
    ]


def _done(fleet: Fleet, campaign: str, key: str) -> bool:
    return fleet.store.status(fleet.scope(campaign, key)).state == "done"


def _password(server: TlsRedisServer) -> str:
    return server.users[WORKER_USER].password


def _accepted(sandbox: SandboxProcess, campaign: str) -> Counter[str]:
    return Counter(
        r["body"]["properties"]["key"] for r in sandbox.requests(campaign) if r["status"] == 200
    )


def test_delivers_dedupes_retries_dead_letters_and_schedules_over_tls_as_an_acl_user(
    tls_fleet: Callable[..., TlsFleet],
    tls_server: TlsRedisServer,
    sandbox: SandboxProcess,
    campaign: str,
) -> None:
    fleet = tls_fleet()
    # mingle, gossip and heartbeat on, as the README's plain command runs
    worker = fleet.start_worker(concurrency=2, cluster=True)
    producer = fleet.producer()
    assert producer.control.ping(timeout=5)  # remote control (pidbox) over TLS as clix

    first = producer.send_task(
        "trigger_campaign", kwargs={"campaign_id": campaign, "idempotency_key": "once"}
    )
    assert first.get(timeout=30)["deduplicated"] is False  # result backend over TLS too
    again = producer.send_task(
        "trigger_campaign", kwargs={"campaign_id": campaign, "idempotency_key": "once"}
    )
    assert again.get(timeout=30)["deduplicated"] is True
    assert len(sandbox.requests(campaign)) == 1

    retried, rejected = f"{campaign}-retry", f"{campaign}-rejected"
    sandbox.script(retried, {"status": 503}, {"status": 200})
    sandbox.script(rejected, {"status": 400, "body": {"error": "not API-triggered"}})
    fleet.send(campaign_id=rejected, idempotency_key="bad")
    assert producer.send_task(
        "trigger_campaign", kwargs={"campaign_id": retried, "idempotency_key": "r"}
    ).get(timeout=30)["trigger_id"]
    assert [r["status"] for r in sandbox.requests(retried)] == [503, 200]
    wait_until(lambda: fleet.dlq.entries(), 30, "the DLQ entry")
    [entry] = cli_json(fleet.env, "dlq", "list")  # the CLI reads the DLQ over TLS as clix
    assert (entry["campaign_id"], entry["reason"], entry["status_code"]) == (
        rejected,
        "rejected",
        400,
    )
    assert len(sandbox.requests(rejected)) == 1

    # scheduled in the store, moved to the broker by the worker's mover, then sent
    scheduled = f"{campaign}-later"
    assert cli(fleet.env, "enqueue", scheduled, "s", "--in", "1s").returncode == 0
    wait_until(lambda: _done(fleet, scheduled, "s"), 30, "the scheduled trigger")
    gauges = {
        m.name: m.samples[0].value
        for m in RedisStateCollector.from_settings(fleet.settings()).collect()
    }
    assert (gauges["clix_redis_up"], gauges["clix_dlq_depth"]) == (1, 1)  # metrics as clix

    assert _denied(tls_server) == []
    assert _password(tls_server) not in worker.log()


def test_sigkilled_workers_lose_nothing_over_tls(
    tls_fleet: Callable[..., TlsFleet],
    tls_server: TlsRedisServer,
    own_sandbox: Callable[..., SandboxProcess],
    campaign: str,
    tmp_path: Path,
) -> None:
    # 20 ms per answer: the drain takes a few seconds, so the kill lands in its middle
    sandbox = own_sandbox("--latency-ms", "20")
    fleet = tls_fleet(sandbox)
    keys = [f"k{i}" for i in range(200)]
    batch = tmp_path / "t.jsonl"
    batch.write_text(
        "".join(
            json.dumps({"campaign_id": campaign, "idempotency_key": k, "properties": {"key": k}})
            + "\n"
            for k in keys
        )
    )
    assert cli(fleet.env, "enqueue", "--file", str(batch)).returncode == 0
    doomed = fleet.start_worker(concurrency=2)
    wait_until(lambda: len(_accepted(sandbox, campaign)) >= 20, 60, "the drain to start")
    doomed.kill()
    assert len(_accepted(sandbox, campaign)) < len(keys), "drained before the kill"
    fleet.start_worker(concurrency=2)
    wait_until(
        lambda: set(_accepted(sandbox, campaign)) >= set(keys), 120, "every trigger", every_s=1
    )
    doubled = sum(n - 1 for n in _accepted(sandbox, campaign).values())
    ambiguous = int(fleet.redis().hget(fleet.keys.stats, "ambiguous_duplicates") or 0)
    assert doubled <= ambiguous
    assert fleet.dlq.entries() == []
    assert _denied(tls_server) == []


def _check(env: dict[str, str]) -> tuple[int, dict[str, dict[str, object]], str]:
    done = cli(env, "check", "--json", "--no-worker", "--timeout", "3")
    findings = {f["name"]: f for f in json.loads(done.stdout)["findings"]}
    return done.returncode, findings, done.stdout + done.stderr


def test_check_reports_verified_tls_and_the_acl_user_never_its_password(
    tls_fleet: Callable[..., TlsFleet], tls_server: TlsRedisServer
) -> None:
    fleet = tls_fleet()
    code, findings, output = _check(fleet.env)
    assert code == 0, output
    assert "verified against CLIX_REDIS_TLS_CA_FILE" in str(findings["redis_tls"]["detail"])
    assert "'clix'" in str(findings["redis_user"]["detail"])
    # AOF is on: INFO says so, no CONFIG GET needed (the user may not run it)
    persistence = findings["redis_persistence"]
    assert (persistence["ok"], persistence["verified"], persistence["detail"]) == (
        True,
        True,
        "appendonly yes",
    )
    assert findings["redis_eviction"]["verified"] is True
    assert _password(tls_server) not in output
    assert _denied(tls_server) == []


#: Publish one trigger with the settings of the environment; exit 3 when the broker refuses.
_STRANGER_PUBLISH = """
import sys
from celery import Celery
from kombu.exceptions import OperationalError
from config.celery_app import celery_config
from config.settings import get_settings

producer = Celery("stranger")
producer.conf.update(celery_config(get_settings()))
try:
    producer.send_task(
        "trigger_campaign", kwargs={"campaign_id": "c"}, retry=False, ignore_result=True
    )
except OperationalError as exc:
    print(f"{exc!s} {exc!r}")
    sys.exit(3)
"""


def test_a_server_certificate_from_another_ca_is_refused_without_the_password(
    tls_fleet: Callable[..., TlsFleet], tls_server: TlsRedisServer, tmp_path: Path
) -> None:
    fleet = tls_fleet()
    stranger = ThrowawayCA(tmp_path / "other-ca", name="someone else's CA")
    env = {**fleet.env, "CLIX_REDIS_TLS_CA_FILE": str(stranger.cert)}

    code, findings, output = _check(env)
    assert code == 1
    assert findings["redis"]["ok"] is False
    assert "CERTIFICATE_VERIFY_FAILED" in str(findings["redis"]["detail"])
    assert "not signed by a CA in CLIX_REDIS_TLS_CA_FILE" in str(findings["redis"]["detail"])
    assert findings["broker"]["ok"] is False
    assert _password(tls_server) not in output
    # a producer's store client and its publish fail the same way, in words without secrets
    settings = replace(fleet, env=env).settings()
    with pytest.raises(redis.ConnectionError) as store_refused:
        store_client(settings, retry=False).ping()
    # a producer of its own, as an application process is (in this process, kombu
    # may hand the publish a connection an earlier test opened with the right CA)
    publish = subprocess.run(
        [sys.executable, "-c", _STRANGER_PUBLISH],
        env={**clean_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert publish.returncode == 3, publish.stdout + publish.stderr
    for refused in (f"{store_refused.value!s} {store_refused.value!r}", publish.stdout):
        assert "CERTIFICATE_VERIFY_FAILED" in refused
        assert _password(tls_server) not in refused

    # only when verification is switched off explicitly does the stranger's word count
    code, findings, output = _check({**env, "CLIX_REDIS_TLS_VERIFY": "false"})
    assert code == 0, output
    assert "NOT verified" in str(findings["redis_tls"]["detail"])


def test_check_says_what_it_could_not_verify_when_config_is_denied(tmp_path: Path) -> None:
    # a managed Redis: no CONFIG for the app's user, AOF off, RDB schedule unknown
    with RedisServer(directory=tmp_path / "managed", appendonly=False) as server:
        server.client().execute_command("ACL", "SETUSER", "clix", "on", ">pw", *acl_rules())
        env = clean_env(REDIS_URL=f"redis://clix:pw@127.0.0.1:{server.port}/0")
        code, findings, output = _check(env)
    assert code == 0, output
    assert findings["redis_persistence"]["verified"] is False
    assert "could not be verified" in str(findings["redis_persistence"]["detail"])
    eviction = findings["redis_eviction"]
    assert (eviction["verified"], eviction["detail"]) == (True, "maxmemory-policy noeviction")
