"""Reference producer: what a producer in another language writes to Redis, step by step.

Uses nothing from this project, only ``redis`` and the standard library, so it
reads as a specification (see README.md next to it). It

1. writes the trigger's pending record with the record script (one EVAL; the
   stamp is the store's clock, Redis TIME), then
2. publishes a Celery (protocol 2) ``trigger_campaign`` message carrying that
   stamp in the ``clix_enqueued_at_ms`` header, as kombu's Redis transport
   stores it: one LPUSH of a JSON envelope onto the queue's list.

A Celery client library in your language replaces step 2 (add the header);
step 1 stays as it is. Run ``python publish.py --help``.
"""

from __future__ import annotations

import argparse
import base64
import json
import uuid
from typing import Any
from urllib.parse import quote

import redis

#: The same script as tasks/pending.py (RECORD_SCRIPT); the tests check they match.
RECORD_SCRIPT = """
local stamp = ARGV[2]
if stamp == '' then
  local t = redis.call('TIME')
  stamp = string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000))
end
local index = KEYS[#KEYS]
for i = 1, #KEYS - 1 do
  local value = '{"kwargs":' .. ARGV[i + 2] .. ',"enqueued_at_ms":' .. stamp .. '}'
  redis.call('SET', KEYS[i], value, 'EX', ARGV[1])
  redis.call('ZADD', index, stamp, KEYS[i])
end
return tonumber(stamp)
"""

HEADER = "clix_enqueued_at_ms"


def pending_key(prefix: str, campaign_id: str, idempotency_key: str) -> str:
    """``{prefix}:pending:{campaign}:{key}``, each id percent-encoded (no safe characters)."""
    return f"{prefix}:pending:{quote(campaign_id, safe='')}:{quote(idempotency_key, safe='')}"


def record_pending(store: redis.Redis, prefix: str, ttl_s: int, kwargs: dict[str, Any]) -> int:
    """Step 1: write the pending record; return its stamp (ms, the store's clock)."""
    key = pending_key(prefix, kwargs["campaign_id"], kwargs["idempotency_key"])
    index = f"{prefix}:pending-index"
    body = json.dumps(kwargs, separators=(",", ":"))
    return int(store.eval(RECORD_SCRIPT, 2, key, index, ttl_s, "", body))


def celery_message(queue: str, kwargs: dict[str, Any], stamp: int) -> dict[str, Any]:
    """Step 2: a ``trigger_campaign`` message as kombu's Redis transport keeps it."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None}])
    return {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": "trigger_campaign",
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "timelimit": [None, None],
            "argsrepr": "()",
            # ids and property names only: Flower shows this
            "kwargsrepr": json.dumps(
                {
                    "campaign_id": kwargs["campaign_id"],
                    "idempotency_key": kwargs["idempotency_key"],
                    "properties": sorted(kwargs.get("properties") or {}),
                }
            ),
            "origin": "foreign-producer",
            HEADER: stamp,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def publish(broker: redis.Redis, queue: str, message: dict[str, Any]) -> None:
    """Step 2 on a Redis broker: LPUSH (workers BRPOP from the other end)."""
    broker.lpush(queue, json.dumps(message))


def main(argv: list[str] | None = None) -> int:
    """Record and publish one trigger."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("campaign_id")
    parser.add_argument("idempotency_key")
    parser.add_argument("--properties", default=None, help="a JSON object")
    parser.add_argument("--store", default="redis://localhost:6379/0", help="REDIS_URL")
    parser.add_argument("--broker", default=None, help="CELERY_BROKER_URL (default: --store)")
    parser.add_argument("--queue", default="clix.triggers", help="CLIX_QUEUE")
    parser.add_argument("--prefix", default="clix", help="CLIX_KEY_PREFIX")
    parser.add_argument("--ttl-s", type=int, default=86_400, help="CLIX_IDEMPOTENCY_TTL_S")
    parser.add_argument(
        "--record-only", action="store_true", help="skip step 2 (a message lost on its way)"
    )
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = {
        "campaign_id": args.campaign_id,
        "idempotency_key": args.idempotency_key,
    }
    if args.properties is not None:
        kwargs["properties"] = json.loads(args.properties)
    store = redis.Redis.from_url(args.store)
    stamp = record_pending(store, args.prefix, args.ttl_s, kwargs)
    if not args.record_only:
        publish(
            redis.Redis.from_url(args.broker or args.store),
            args.queue,
            celery_message(args.queue, kwargs, stamp),
        )
    print(json.dumps({"enqueued_at_ms": stamp, "published": not args.record_only}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
