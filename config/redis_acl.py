"""The Redis ACL user of the worker: the commands an operator grants, and nothing more.

One list for the store (ledger, DLQ, limiter, breaker, pending and schedule
records), a Redis broker (kombu's transport) and Celery's result backend, so
one user can serve all three. It is the list the integration test grants
(``tests/integration/test_production_redis_tls.py`` runs every core scenario
under it), so the README's list is the tested one. Grant it with
:func:`acl_setuser_command`, e.g.::

    ACL SETUSER clix on >PASSWORD ~* &* -@all +ping +hello +select ...

==========================  =====================================================
commands                    who needs them
==========================  =====================================================
ping hello select           redis-py connecting (AUTH needs no grant), health checks
evalsha script|load         every Lua script (ledger, DLQ, limiter, breaker,
script|exists time          schedule; kombu's binding refresh and lock): run by
                            SHA, loaded when the server does not know it yet;
                            TIME inside the scripts and for the reconciler's clock
get set setex mget del      strings: ledger states, leases, results, locks
exists expire pexpire ttl
pttl incr
hget hset hsetnx hdel       hashes: ledger meta, DLQ entries, stats, breaker,
hexists hincrby hmget       kombu's ``unacked`` messages
hgetall hlen hscan
lpush rpush brpop rpop      lists: the broker's queues (the reconciler peeks with
llen lindex                 LINDEX; metrics read LLEN)
sadd srem smembers          sets: fleet's project ids, kombu's bindings
zadd zrem zrange            sorted sets: DLQ, pending and schedule indexes,
zrangebyscore zcard         kombu's ``unacked_index``
scan                        ``status`` finding a key's project
multi exec discard          transactions (redis-py pipelines, kombu's restore)
watch unwatch
publish subscribe           results (``AsyncResult.get()``), events and remote
unsubscribe psubscribe      control over the broker's fanout exchanges
punsubscribe
info                        ``clix-worker check`` and the start-up warning read
                            the persistence and eviction settings
==========================  =====================================================

Keys and channels: ``~*`` and ``&*`` (Redis 7 gives a new user no channels).
A Redis shared with other applications can narrow keys to the worker's
(``~clix:*`` for ``CLIX_KEY_PREFIX=clix``, the queue names, ``unacked*``,
``_kombu.*``, ``celery-task-meta-*``), which this list does not test.

Only with ``CLIX_REDIS_COMMIT_REPLICAS`` above 0: ``+wait`` (the commit waits
for replicas). Only on a Redis Cluster store: ``+cluster|slots`` (the client
reads the slot map) and ``+cluster|info`` (``check``). Optional:
``+config|get`` lets ``check`` read the RDB ``save`` schedule (INFO has no such
field); without it ``check`` says what it could not verify.
Not needed: ``CLIENT SETINFO``, which redis-py sends on Redis 7.2+ and whose
refusal it ignores (it only shows in ``ACL LOG``).
"""

from __future__ import annotations

__all__ = ["WORKER_COMMANDS", "acl_rules", "acl_setuser_command"]

#: Every command the worker, its producers, the CLI and Celery run (see the table above).
WORKER_COMMANDS: tuple[str, ...] = (
    # connecting
    "ping", "hello", "select",
    # Lua scripts
    "evalsha", "script|load", "script|exists", "time",
    # strings
    "get", "set", "setex", "mget", "del", "exists", "expire", "pexpire", "ttl", "pttl", "incr",
    # hashes
    "hget", "hset", "hsetnx", "hdel", "hexists", "hincrby", "hmget", "hgetall", "hlen", "hscan",
    # lists (the broker's queues)
    "lpush", "rpush", "brpop", "rpop", "llen", "lindex",
    # sets
    "sadd", "srem", "smembers",
    # sorted sets
    "zadd", "zrem", "zrange", "zrangebyscore", "zcard",
    # keyspace
    "scan",
    # transactions
    "multi", "exec", "discard", "watch", "unwatch",
    # pub/sub
    "publish", "subscribe", "unsubscribe", "psubscribe", "punsubscribe",
    # checks
    "info",
)  # fmt: skip


def acl_rules(commands: tuple[str, ...] = WORKER_COMMANDS) -> tuple[str, ...]:
    """ACL rules for the worker's user: all keys and channels, ``commands`` only."""
    return ("~*", "&*", "-@all", *(f"+{c}" for c in commands))


def acl_setuser_command(user: str = "clix") -> str:
    """The ``ACL SETUSER`` line an operator runs (password left as ``>PASSWORD``)."""
    return " ".join(("ACL SETUSER", user, "on", ">PASSWORD", *acl_rules()))
