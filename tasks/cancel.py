"""Cancel a trigger that is scheduled or queued and not yet sent.

``cancel_trigger(campaign_id, key)`` is one atomic step in the store
(:data:`CANCEL_SCRIPT`): when no delivery holds the key (no lease, not done,
not dead-lettered, in every project the fleet sends for) it removes the
scheduled record or the pending record and leaves a *cancelled* marker for the
idempotency TTL. The ledger's claim reads that marker in its own atomic step,
so a cancel racing a delivery has exactly two outcomes: the claim came first
and cancel answers ``in_flight`` (too late: the request may go out), or the
cancel came first and the claim acknowledges the message without a request.
A message of the trigger still queued is acknowledged that way when a worker
takes it.

The ledger is scoped by project and producers need not know theirs: cancel
looks at the projects given, else the configured ``CLIX_PROJECT_ID``, else the
projects the fleet's workers registered (``{p}:projects``) at start-up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

from config.keys import KeySpace, Scope, as_text

__all__ = ["CANCEL_SCRIPT", "CancelOutcome", "Canceller", "cancel_trigger"]

# KEYS: scheduled record, schedule, pending record, pending index, cancelled
# marker, then (lease, done, dead) per project: one slot, the trigger's bucket
# (config.keys).  ARGV: ttl_s.
# Returns {outcome, was}: outcome cancelled (was: scheduled / queued),
# already_cancelled, in_flight, done, dead_lettered or unknown.
CANCEL_SCRIPT = """
for i = 6, #KEYS, 3 do
  if redis.call('EXISTS', KEYS[i + 1]) == 1 then return {'done', ''} end
  if redis.call('EXISTS', KEYS[i + 2]) == 1 then return {'dead_lettered', ''} end
  if redis.call('EXISTS', KEYS[i]) == 1 then return {'in_flight', ''} end
end
if redis.call('EXISTS', KEYS[5]) == 1 then return {'already_cancelled', ''} end
local was
if redis.call('EXISTS', KEYS[1]) == 1 then
  was = 'scheduled'
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], KEYS[1])
elseif redis.call('EXISTS', KEYS[3]) == 1 then
  was = 'queued'
else
  return {'unknown', ''}
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], KEYS[3])
local t = redis.call('TIME')
redis.call('SET', KEYS[5], string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000)),
           'EX', ARGV[1])
return {'cancelled', was}
"""

#: What a cancel says for each outcome (the CLI prints it).
MESSAGES = {
    "cancelled": "cancelled: it will not be sent",
    "already_cancelled": "already cancelled: it will not be sent",
    "in_flight": "too late: it is in flight (the request may be going out now)",
    "done": "too late: it is done (sent)",
    "dead_lettered": "too late: it is dead-lettered (see `clix-worker dlq list`)",
    "unknown": "unknown: nothing is scheduled or queued under this key",
}


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """The answer to a cancel: ``outcome`` (see :data:`MESSAGES`) and what it was before."""

    campaign_id: str
    idempotency_key: str
    outcome: str
    was: str | None = None

    @property
    def cancelled(self) -> bool:
        """Whether the trigger will not be sent (cancelled now or before)."""
        return self.outcome in ("cancelled", "already_cancelled")

    @property
    def message(self) -> str:
        """One line for people."""
        text = MESSAGES[self.outcome]
        return f"{text} (was {self.was})" if self.was else text


class Canceller:
    """Cancels triggers in one store. ``redis`` is the store's, injected."""

    def __init__(self, redis_client: redis.Redis, keys: KeySpace, *, ttl_s: int) -> None:
        self.redis = redis_client
        self.keys = keys
        self.ttl_s = ttl_s
        self._cancel = redis_client.register_script(CANCEL_SCRIPT)

    def fleet_projects(self) -> list[str]:
        """The project ids the fleet's workers registered."""
        return sorted(as_text(p) for p in self.redis.smembers(self.keys.projects))

    def cancel(
        self, campaign_id: str, idempotency_key: str, projects: Iterable[str] = ()
    ) -> CancelOutcome:
        """Cancel unless a delivery of ``projects`` (default: the fleet's) holds the key."""
        candidates = list(projects) or self.fleet_projects()
        bucket = self.keys.bucket_for(campaign_id, idempotency_key)
        keys = [
            self.keys.scheduled(campaign_id, idempotency_key),
            bucket.schedule,
            self.keys.pending(campaign_id, idempotency_key),
            bucket.pending_index,
            self.keys.cancelled(campaign_id, idempotency_key),
        ]
        for project in candidates:
            scope = Scope(project, campaign_id, idempotency_key)
            keys += [self.keys.lease(scope), self.keys.done(scope), self.keys.dead(scope)]
        outcome, was = (as_text(p) for p in self._cancel(keys=keys, args=[self.ttl_s]))
        return CancelOutcome(campaign_id, idempotency_key, outcome, was or None)


def cancel_trigger(
    campaign_id: str, idempotency_key: str, *, project_id: str | None = None
) -> CancelOutcome:
    """Cancel a scheduled or queued trigger that is not yet sent; see the module docstring.

    Needs no Clix credentials. ``outcome.cancelled`` says whether it will not
    be sent; otherwise ``outcome.outcome`` says why (in flight, done, ...).
    """
    from config.celery_app import app, app_settings
    from tasks import context

    settings = app_settings(app)
    conn = context.producer_ledger(settings).redis
    canceller = Canceller(conn, KeySpace.of(settings), ttl_s=settings.clix_idempotency_ttl_s)
    project = project_id or settings.clix_project_id
    return canceller.cancel(campaign_id, idempotency_key, [project] if project else [])
