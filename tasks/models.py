"""Request models: the rules a trigger must pass before it is queued or sent.

The same :meth:`TriggerRequest.parse` runs in the producer (a bad trigger
raises in the caller) and in the worker (producers in other languages skip the
first check). Rules, from the Clix API (DESIGN.md section 1):

* ``campaign_id`` is a URL path segment: 1-255 characters, none of ``/ ? #``,
  whitespace or control characters;
* ``idempotency_key``: 1-255 printable characters;
* ``audience``: optional ``broadcast`` (bool) and ``targets``; each target names
  exactly one of ``project_user_id`` / ``device_id``; ``broadcast: true`` with
  targets is refused as ambiguous (Clix would silently send to everyone);
* ``properties``: a JSON object with string keys;
* the encoded request body stays under Clix's 10 MB limit.

The request body is exactly what the producer gave: fields it left out stay
out (``exclude_unset``), nothing is added.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.errors import InvalidTrigger

__all__ = ["MAX_BODY_BYTES", "Audience", "Target", "TriggerRequest"]

#: Clix refuses requests over 10 MB; stay under the smaller reading of "MB".
MAX_BODY_BYTES = 10_000_000
MAX_ID_CHARS = 255
_PATH_UNSAFE = frozenset("/?#")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Target(_Strict):
    """One recipient: exactly one of a project user id or a device id."""

    project_user_id: str | None = Field(None, min_length=1)
    device_id: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one_id(self) -> Self:
        # an explicit null names nobody: it counts as absent
        given = [n for n in ("project_user_id", "device_id") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "a target names exactly one of project_user_id or device_id"
                + (f", got {' and '.join(given)}" if given else ", got neither")
            )
        return self


class Audience(_Strict):
    """Who receives the campaign; absent means the campaign's default audience."""

    # Not Optional: an explicit null is refused, so no null ever reaches the body.
    broadcast: bool = False
    targets: list[Target] = Field(default_factory=list)

    @model_validator(mode="after")
    def _broadcast_or_targets(self) -> Self:
        if self.broadcast and self.targets:
            raise ValueError(
                "broadcast: true ignores targets, so giving both is ambiguous; "
                "send either broadcast or targets"
            )
        return self


class TriggerRequest(_Strict):
    """One trigger: the keyword arguments of the ``trigger_campaign`` task."""

    campaign_id: str
    idempotency_key: str
    audience: Audience | None = None
    properties: dict[str, Any] | None = None
    #: the request body, encoded once when validated: the bytes measured are the bytes sent
    _body: bytes = PrivateAttr(default=b"")

    @field_validator("campaign_id")
    @classmethod
    def _path_safe(cls, value: str) -> str:
        if not 1 <= len(value) <= MAX_ID_CHARS:
            raise ValueError(f"must be 1-{MAX_ID_CHARS} characters, got {len(value)}")
        bad = sorted(
            {c for c in value if c in _PATH_UNSAFE or c.isspace() or _is_control(c)}, key=ord
        )
        if bad:
            raise ValueError(
                "must be usable as a URL path segment; it contains "
                + ", ".join(repr(c) for c in bad)
            )
        return value

    @field_validator("idempotency_key")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not 1 <= len(value) <= MAX_ID_CHARS:
            raise ValueError(f"must be 1-{MAX_ID_CHARS} characters, got {len(value)}")
        if not value.isprintable():
            raise ValueError("must contain printable characters only")
        return value

    @field_validator("properties")
    @classmethod
    def _json_object(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must be JSON-serialisable ({exc})") from None
        return value

    @model_validator(mode="after")
    def _body_size(self) -> Self:
        body = json.dumps(self.body(), separators=(",", ":"), ensure_ascii=False).encode()
        if len(body) > MAX_BODY_BYTES:
            raise ValueError(
                f"request body is {len(body)} bytes, over Clix's limit of {MAX_BODY_BYTES}"
            )
        self._body = body
        return self

    @classmethod
    def parse(cls, kwargs: object) -> TriggerRequest:
        """Validate task keyword arguments; raise :class:`InvalidTrigger` naming each field."""
        if not isinstance(kwargs, dict):
            raise InvalidTrigger(
                [f"expected keyword arguments (an object), got {type(kwargs).__name__}"]
            )
        try:
            return cls.model_validate(kwargs)
        except ValidationError as exc:
            raise InvalidTrigger(_problems(exc)) from None

    def body(self) -> dict[str, Any]:
        """The request body: only the fields the producer gave."""
        body: dict[str, Any] = {}
        if "audience" in self.model_fields_set and self.audience is not None:
            # exclude_none: a target's absent id is None, never sent as null
            body["audience"] = self.audience.model_dump(exclude_unset=True, exclude_none=True)
        if "properties" in self.model_fields_set and self.properties is not None:
            body["properties"] = self.properties
        return body

    def body_bytes(self) -> bytes:
        """The encoded request body (compact UTF-8 JSON), as validated."""
        return self._body

    def to_kwargs(self) -> dict[str, Any]:
        """Task keyword arguments: what the producer gave, validated."""
        kwargs: dict[str, Any] = {
            "campaign_id": self.campaign_id,
            "idempotency_key": self.idempotency_key,
        }
        kwargs.update(self.body())
        return kwargs


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        where = where.lstrip(".") or "trigger"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append(f"{where}: {message}")
    return problems
