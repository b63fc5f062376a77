"""Operating the dead-letter queue from the CLI: list, show, replay, purge, filters, exit codes."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from config.keys import Scope
from tasks.dlq import DeadLetterQueue
from tests.integration.conftest import PROJECT_ID, Fleet
from tests.integration.processes import SandboxProcess, cli, cli_json, wait_until
from worker.redis_server import free_port

pytestmark = pytest.mark.integration


def test_dlq_list_show_replay_and_purge(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, campaign: str
) -> None:
    fleet = own_fleet()
    fleet.start_worker()
    sandbox.script(campaign, *[{"status": 422, "body": {"error": "nope"}}] * 3)
    for key in ("a", "b", "c"):
        fleet.send(campaign_id=campaign, idempotency_key=key, properties={"k": key})
        wait_until(
            lambda key=key: fleet.store.status(fleet.scope(campaign, key)).dead_entry_id,
            30,
            f"{key} in the DLQ",
        )

    listed = cli_json(fleet.env, "dlq", "list")
    assert [e["idempotency_key"] for e in listed] == ["a", "b", "c"]  # oldest first
    for entry in listed:
        assert set(entry) >= {
            "id",
            "campaign_id",
            "idempotency_key",
            "reason",
            "status_code",
            "error",
            "attempts",
            "first_seen",
            "failed_at",
            "trigger",
        }
        assert entry["reason"] == "rejected"
        assert entry["status_code"] == 422
    first, second, third = (e["id"] for e in listed)
    assert cli_json(fleet.env, "dlq", "show", second) == listed[1]
    assert cli(fleet.env, "dlq", "show", "no-such-id").returncode == 1

    # purge asks first; no answer means no
    unconfirmed = cli(fleet.env, "dlq", "purge", first, stdin="")
    assert unconfirmed.returncode == 1
    assert fleet.dlq.get(first) is not None
    purged = cli(fleet.env, "dlq", "purge", first, "--yes", "--json")
    assert purged.returncode == 0
    assert json.loads(purged.stdout) == {"purged": [first], "missing": []}
    assert [e["id"] for e in fleet.dlq.entries()] == [second, third]

    missing = cli(fleet.env, "dlq", "replay", "no-such-id")
    assert missing.returncode == 1
    usage = cli(fleet.env, "dlq", "replay")
    assert usage.returncode == 2
    assert cli(fleet.env, "dlq", "list", "--bogus").returncode == 2

    replayed = cli(fleet.env, "dlq", "replay", "--all", "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert [r["id"] for r in json.loads(replayed.stdout)] == [second, third]
    for key in ("b", "c"):
        wait_until(
            lambda key=key: fleet.store.status(fleet.scope(campaign, key)).state == "done",
            30,
            f"replayed {key} delivered",
        )
    assert fleet.dlq.entries() == []
    sent = [r for r in sandbox.requests(campaign) if r["status"] == 200]
    assert sorted(r["body"]["properties"]["k"] for r in sent) == ["b", "c"]  # once each


def test_enqueue_from_a_jsonl_file_is_all_or_nothing(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str, tmp_path: object
) -> None:
    from pathlib import Path

    good = Path(str(tmp_path)) / "good.jsonl"
    good.write_text(
        "\n".join(
            json.dumps(
                {"campaign_id": campaign, "idempotency_key": f"k{i}", "properties": {"i": i}}
            )
            for i in range(5)
        )
        + "\n"
    )
    bad = Path(str(tmp_path)) / "bad.jsonl"
    bad.write_text(good.read_text() + '{"campaign_id": "x"}\nnot json\n')

    refused = cli(fleet.env, "enqueue", "--file", str(bad))
    assert refused.returncode == 1
    assert "bad.jsonl:6" in refused.stderr
    assert "idempotency_key" in refused.stderr
    assert "bad.jsonl:7" in refused.stderr
    assert (
        cli(fleet.env, "enqueue", "--file", str(Path(str(tmp_path)) / "absent.jsonl")).returncode
        == 2
    )

    done = cli(fleet.env, "enqueue", "--file", str(good), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["enqueued"] == 5
    wait_until(lambda: len(sandbox.requests(campaign)) == 5, 30, "five deliveries")
    assert sorted(r["body"]["properties"]["i"] for r in sandbox.requests(campaign)) == list(
        range(5)
    )
    unknown = cli(fleet.env, "status", campaign, "never-sent", "--json")
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout)["state"] == "unknown"


# --- seeding entries directly (no worker needed) ---------------------------------------


def seed(
    fleet: Fleet,
    campaign: str,
    key: str,
    *,
    reason: str = "retries_exhausted",
    ago_s: float = 60,
    **more: Any,
) -> str:
    """Dead-letter a trigger as a worker would (entry + dead mark), ``ago_s`` seconds ago."""
    at = time.time() - ago_s
    queue = DeadLetterQueue(fleet.redis(), fleet.keys, ttl_s=3_600, clock=lambda: at)
    trigger = {"campaign_id": campaign, "idempotency_key": key, "properties": {"k": key}}
    entry = queue.new_entry(
        reason=reason,
        error="seeded",
        trigger=trigger,
        status_code=503 if reason == "retries_exhausted" else 400,
        attempts=3,
        project_id=PROJECT_ID,
        **more,
    )
    return queue.add(entry, scope=Scope(PROJECT_ID, campaign, key))


def queued_keys(fleet: Fleet) -> list[str]:
    """Idempotency keys of the trigger messages waiting in the (Redis) broker queue."""
    keys = []
    for raw in fleet.redis().lrange(fleet.queue, 0, -1):
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        keys.append(body[1]["idempotency_key"])
    return keys


def dlq_snapshot(fleet: Fleet) -> tuple[Any, ...]:
    conn = fleet.redis()
    return (
        conn.hgetall(fleet.keys.bucket(0).dlq_entries),
        conn.zrange(fleet.keys.bucket(0).dlq_index, 0, -1),
        conn.llen(fleet.queue),
    )


def test_dlq_filters_choose_what_list_replay_purge_and_stats_touch(
    own_fleet: Callable[..., Fleet], campaign: str
) -> None:
    fleet = own_fleet()
    other = campaign + "-other"
    old = seed(fleet, campaign, "old", ago_s=3 * 3600)  # retries_exhausted, 3 h ago
    recent = seed(fleet, campaign, "recent", ago_s=600)  # retries_exhausted, 10 min ago
    rejected = seed(fleet, campaign, "rejected", reason="rejected", ago_s=300)
    elsewhere = seed(fleet, other, "elsewhere", ago_s=120)  # retries_exhausted, other campaign
    args = ("--reason", "retries_exhausted", "--since", "1h")

    listed = cli_json(fleet.env, "dlq", "list", *args)
    assert [e["id"] for e in listed] == [recent, elsewhere]
    narrowed = cli_json(fleet.env, "dlq", "list", *args, "--campaign", campaign)
    assert [e["id"] for e in narrowed] == [recent]
    assert [e["id"] for e in cli_json(fleet.env, "dlq", "list", "--until", "2h")] == [old]
    assert [e["id"] for e in cli_json(fleet.env, "dlq", "list", "--limit", "2")] == [old, recent]

    before = dlq_snapshot(fleet)
    dry = cli(fleet.env, "dlq", "replay", *args, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {
        "dry_run": True,
        "count": 2,
        "ids": [recent, elsewhere],
        "missing": [],
        "refused": [],
    }
    human_dry = cli(fleet.env, "dlq", "purge", "--all", "--dry-run")
    assert human_dry.returncode == 0
    assert "would purge 4 entries" in human_dry.stdout
    assert dlq_snapshot(fleet) == before  # --dry-run changes nothing

    stats = cli_json(fleet.env, "dlq", "stats")
    assert stats["total"] == 4
    assert stats["by_reason"] == {"rejected": 1, "retries_exhausted": 3}
    assert stats["by_campaign"] == [
        {"campaign_id": campaign, "count": 3},
        {"campaign_id": other, "count": 1},
    ]
    assert "retries_exhausted  3" in cli(fleet.env, "dlq", "stats").stdout

    replayed = cli(fleet.env, "dlq", "replay", *args, "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert [(r["id"], r["outcome"]) for r in json.loads(replayed.stdout)] == [
        (recent, "replayed"),
        (elsewhere, "replayed"),
    ]
    assert sorted(queued_keys(fleet)) == ["elsewhere", "recent"]  # exactly the matching ones
    assert fleet.dlq.ids() == [old, rejected]
    assert fleet.store.status(fleet.scope(campaign, "old")).dead_entry_id == old

    nothing = cli(fleet.env, "dlq", "replay", *args)
    assert nothing.returncode == 0
    assert "nothing matched" in nothing.stdout

    purged = cli(fleet.env, "dlq", "purge", "--reason", "rejected", "--yes", "--json")
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout) == {"purged": [rejected], "missing": []}
    assert fleet.dlq.ids() == [old]


def test_dlq_bad_usage_exits_2_and_says_why(own_fleet: Callable[..., Fleet]) -> None:
    fleet = own_fleet()
    entry = seed(fleet, "c", "k")
    for args, words in [
        (("list", "--since", "soon"), "ISO-8601"),
        (("list", "--since", "1h", "--until", "2h"), "later than --until"),
        (("replay", entry, "--reason", "rejected"), "not both"),
        (("purge", "--yes"), "a filter"),
        (("list", "--reason", "bogus"), "bogus"),
    ]:
        done = cli(fleet.env, "dlq", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr, (args, done.stderr)
    assert fleet.dlq.ids() == [entry]
    helps = cli(fleet.env, "dlq", "replay", "--help").stdout
    for option in ("--reason", "--campaign", "--since", "--until", "--dry-run", "--all"):
        assert option in helps
    assert "--json" in cli(fleet.env, "dlq", "stats", "--help").stdout


def test_replay_whose_publish_fails_keeps_the_entry_and_its_mark_without_a_traceback(
    own_fleet: Callable[..., Fleet], campaign: str
) -> None:
    fleet = own_fleet()
    entry = seed(fleet, campaign, "k1")
    down = {**fleet.env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    failed = cli(down, "dlq", "replay", entry)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr + failed.stdout
    assert "could not publish" in failed.stdout
    assert fleet.dlq.ids() == [entry]
    assert fleet.store.status(fleet.scope(campaign, "k1")).dead_entry_id == entry
    # once the broker is back, the same command replays it
    assert cli(fleet.env, "dlq", "replay", entry).returncode == 0
    assert queued_keys(fleet) == ["k1"]


def test_dlq_show_and_list_hide_personal_data_in_raw_bodies(
    own_fleet: Callable[..., Fleet],
) -> None:
    fleet = own_fleet()
    body = json.dumps([[], {"properties": {"email": "ada@example.com", "n": 1}}, {}])
    entry_id = fleet.dlq.add(
        fleet.dlq.new_entry(reason="invalid_payload", error="unknown task", trigger=None, raw=body)
    )
    for args in (("show", entry_id), ("list",)):
        shown = cli(fleet.env, "dlq", *args, "--json")
        assert "ada@example.com" not in shown.stdout
        assert "[redacted]" in shown.stdout
    assert "ada@example.com" in cli(fleet.env, "dlq", "show", entry_id, "--show-pii").stdout
    dry = cli(fleet.env, "dlq", "replay", entry_id, "--dry-run", "--json")
    assert dry.returncode == 1  # as the replay itself: an undecodable message is refused
    assert json.loads(dry.stdout)["refused"] == [entry_id]
    assert fleet.dlq.ids() == [entry_id]


def test_bulk_replay_interrupted_then_run_again_queues_every_trigger_once(
    own_fleet: Callable[..., Fleet], campaign: str
) -> None:
    fleet = own_fleet()
    total = 1_500
    queue = fleet.dlq
    pipe_ids = []
    at = time.time() - 60
    seeded = DeadLetterQueue(fleet.redis(), fleet.keys, ttl_s=3_600, clock=lambda: at)
    for n in range(total):
        trigger = {"campaign_id": campaign, "idempotency_key": f"k{n}"}
        entry = seeded.new_entry(
            reason="retries_exhausted", error="e", trigger=trigger, project_id=PROJECT_ID
        )
        pipe_ids.append(seeded.add(entry, scope=Scope(PROJECT_ID, campaign, f"k{n}")))

    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "dlq", "replay", "--all", "--json"],
        env=fleet.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: queue.depth() < total - 50, 60, "the replay to be under way", 0.01)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert "interrupted after" in err
    assert "Traceback" not in err
    replayed = [r["id"] for r in json.loads(out)]
    left = queue.depth()
    assert 0 < left < total, "the run finished before it could be interrupted"
    assert len(replayed) + left == total
    assert len(queued_keys(fleet)) == len(replayed)

    again = cli(fleet.env, "dlq", "replay", "--all", "--json")
    assert again.returncode == 0, again.stderr
    assert queue.depth() == 0
    keys = queued_keys(fleet)
    assert len(keys) == total
    assert sorted(keys) == sorted(f"k{n}" for n in range(total))  # none twice, none lost
