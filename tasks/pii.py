"""Keeping personal data out of sight: redacting ``pii`` properties, spotting likely ones.

:func:`redact` hides the values of the properties a plan marks ``pii``
wherever a payload is shown (logs, Flower, DLQ listings); it takes the
property names only, so a DLQ entry that recorded them can be redacted
without its plan. :func:`pii_like_keys` spots properties that look personal
(e-mail, phone or name keys, e-mail or phone values), to warn about
campaigns without a plan and to mark ``plan init``'s guesses ``pii``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any, Final

from tasks.plan_values import snake_case

__all__ = ["PII_KEY_PATTERN", "REDACTED", "pii_like_keys", "redact"]

REDACTED: Final = "[redacted]"

#: Keys that name an e-mail address, a phone number or a person's name, matched
#: against the key in snake_case (``customerEmail`` is read as ``customer_email``).
PII_KEY_PATTERN: Final = re.compile(
    r"(?:^|_)(?:e_?mail|mail|phone|mobile|msisdn|tel|telephone|cellphone|fax)(?:_|$)"
    r"|^(?:(?:customer|client|user|member|recipient|sender|contact|buyer|patient|guest"
    r"|owner|holder|cardholder|staff|employee|driver|courier)_)?"
    r"(?:(?:first|last|full|given|family|middle|maiden|display|legal|nick|sur|user)_?)?name$"
)
_EMAIL_VALUE = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
_PHONE_VALUE = re.compile(r"\+?[0-9(][0-9 ().-]{5,}[0-9]")
_NOT_PHONE = re.compile(r"\d{4}-\d{2}-\d{2}.*|\d{1,3}(?:\.\d{1,3}){3}")


def redact(kwargs: dict[str, Any], pii_keys: Iterable[str]) -> dict[str, Any]:
    """A deep copy of ``kwargs`` with the value of every property in ``pii_keys`` replaced.

    ``pii_keys`` is a plan's :attr:`~tasks.plans.TriggerPlan.pii_keys`, the
    names a DLQ entry recorded, or ``()`` without either (a plain copy).
    """
    shown = copy.deepcopy(kwargs)
    props = shown.get("properties")
    if isinstance(props, dict):
        for name in frozenset(pii_keys) & props.keys():
            props[name] = REDACTED
    return shown


def pii_like_keys(properties: dict[str, Any]) -> list[str]:
    """Keys that look like e-mail, phone or name fields, or hold an e-mail or phone value.

    Keys are matched in snake_case against :data:`PII_KEY_PATTERN` (``email``,
    ``phone_number``, ``customer_name``, ``first_name``, but not
    ``store_name``); string values are matched as an e-mail address, or as a
    phone number (7-15 digits, starting with ``+`` or with separators, and
    neither an ISO date nor an IPv4 address).
    """
    return [key for key, value in properties.items() if _pii_key(key) or _pii_value(value)]


def _pii_key(key: str) -> bool:
    return bool(PII_KEY_PATTERN.search(snake_case(key)))


def _pii_value(value: object) -> bool:
    if not isinstance(value, str):
        return False
    text = value.strip()
    if _EMAIL_VALUE.fullmatch(text):
        return True
    if not _PHONE_VALUE.fullmatch(text) or _NOT_PHONE.fullmatch(text):
        return False
    digits = sum(c.isdigit() for c in text)
    return 7 <= digits <= 15 and (text.startswith("+") or not text.isdigit())
