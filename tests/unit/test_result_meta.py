"""The commit writes the result meta Celery's Redis backend would write, key for key."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from celery import states
from celery.app.task import Context

from config.celery_app import app
from tasks.trigger import success_meta


class _Child:
    def as_tuple(self) -> tuple[tuple[str, None], None]:
        return (("child-1", None), None)


def _celerys_own(request: Context, result: Any) -> dict[str, Any]:
    meta: dict[str, Any] = app.backend._get_result_meta(
        result=result, state=states.SUCCESS, traceback=None, request=request
    )
    meta["task_id"] = request.id  # what the backend's _store_result adds
    return meta


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"group": "group-1", "parent_id": "parent-1"},
        {"children": [_Child()]},
    ],
    ids=["plain", "in-a-group-with-a-parent", "with-children"],
)
def test_success_meta_is_what_celery_would_store(fields: dict[str, Any]) -> None:
    request = Context(id="task-1", **fields)
    result = {"trigger_id": "tr-1", "deduplicated": False}
    ours, celerys = success_meta(app.backend, request, result), _celerys_own(request, result)
    assert list(ours) == list(celerys)  # same keys in the same order: the same encoding
    ours_done, celerys_done = ours.pop("date_done"), celerys.pop("date_done")
    assert ours == celerys
    ours_at, celerys_at = datetime.fromisoformat(ours_done), datetime.fromisoformat(celerys_done)
    assert ours_at.utcoffset() == celerys_at.utcoffset()
    assert abs((ours_at - celerys_at).total_seconds()) < 5
