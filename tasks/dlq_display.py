"""What DLQ listings show: an entry with its personal data hidden.

An entry keeps the whole trigger (to replay it unchanged) and, for a message
that never decoded, its ``raw`` body. Both are shown redacted unless the
operator asks for ``--show-pii``:

* ``trigger``: the properties the campaign's plan marks ``pii`` (the names the
  entry recorded when it was dead-lettered, plus those of the plans loaded now);
* ``raw``: a body that parses as JSON keeps its shape, with the value of every
  key that is ``pii`` or looks personal (:func:`tasks.pii.pii_like_keys`: e-mail,
  phone and name keys, e-mail or phone values) replaced at any depth. A body
  that is not JSON (binary, truncated) cannot be inspected safely, so only its
  size is shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tasks.pii import REDACTED, pii_like_keys, redact

__all__ = ["shown"]


def shown(entry: dict[str, Any], pii_keys: Iterable[str] = ()) -> dict[str, Any]:
    """A copy of ``entry`` as listings show it: pii in ``trigger`` and ``raw`` redacted.

    The entry's own ``pii`` list is always applied; ``pii_keys`` adds those of
    the plans loaded now. ``entry`` itself is left unchanged.
    """
    hidden = set(entry.get("pii") or ()) | set(pii_keys)
    out = dict(entry)
    trigger = entry.get("trigger")
    if hidden and isinstance(trigger, dict):
        out["trigger"] = redact(trigger, hidden)
    raw = entry.get("raw")
    if isinstance(raw, str):
        out["raw"] = redacted_raw(raw, hidden)
    return out


def redacted_raw(raw: str, pii_keys: Iterable[str] = ()) -> str:
    """``raw`` with personal values hidden (JSON), or a placeholder naming its size."""
    try:
        data = json.loads(raw)
    except ValueError:
        size = len(raw.encode("utf-8", "surrogatepass"))
        return f"[redacted: {size} bytes that are not JSON; --show-pii shows them]"
    return json.dumps(_scrub(data, frozenset(pii_keys)), ensure_ascii=False)


def _scrub(value: Any, pii_keys: frozenset[str]) -> Any:
    if isinstance(value, dict):
        personal = pii_keys.intersection(value) | set(pii_like_keys(value))
        return {
            key: REDACTED if key in personal else _scrub(item, pii_keys)
            for key, item in value.items()
        }
    if isinstance(value, list):
        # a list of strings (e-mail addresses...) is judged item by item
        return [REDACTED if pii_like_keys({"": item}) else _scrub(item, pii_keys) for item in value]
    return value
