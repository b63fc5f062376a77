"""Operating the dead-letter queue from the CLI: list, show, replay, purge, exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, cli, cli_json, wait_until

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
