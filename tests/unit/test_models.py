"""Every rule of tasks/models.py, with the text that names the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tasks.errors import InvalidTrigger
from tasks.models import MAX_BODY_BYTES, TriggerRequest


def trigger(**fields: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"campaign_id": "camp-1", "idempotency_key": "order-1"}
    kwargs.update(fields)
    return kwargs


def problems_of(kwargs: object) -> list[str]:
    with pytest.raises(InvalidTrigger) as caught:
        TriggerRequest.parse(kwargs)
    return caught.value.problems


def only_problem(kwargs: object) -> str:
    problems = problems_of(kwargs)
    assert len(problems) == 1, problems
    return problems[0]


# --- campaign_id ----------------------------------------------------------------------


@pytest.mark.parametrize("char", ["/", "?", "#"])
def test_campaign_id_with_path_unsafe_char_is_refused_naming_the_char(char: str) -> None:
    problem = only_problem(trigger(campaign_id=f"camp{char}1"))
    assert problem.startswith("campaign_id: must be usable as a URL path segment")
    assert repr(char) in problem


@pytest.mark.parametrize("char", [" ", "\t", "\n", "\u00a0", "\u3000"])
def test_campaign_id_with_whitespace_is_refused(char: str) -> None:
    problem = only_problem(trigger(campaign_id=f"camp{char}1"))
    assert problem.startswith("campaign_id: must be usable as a URL path segment")
    assert repr(char) in problem


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\u200b", "\u2028", "\u2029"])
def test_campaign_id_with_control_or_format_char_is_refused(char: str) -> None:
    problem = only_problem(trigger(campaign_id=f"camp{char}1"))
    assert problem.startswith("campaign_id: must be usable as a URL path segment")


def test_campaign_id_lists_every_bad_char_once_in_code_point_order() -> None:
    problem = only_problem(trigger(campaign_id="a/b?c/d#e f"))
    assert problem.endswith("it contains ' ', '#', '/', '?'")


def test_campaign_id_empty_is_refused_with_its_length() -> None:
    assert only_problem(trigger(campaign_id="")) == "campaign_id: must be 1-255 characters, got 0"


def test_campaign_id_of_256_chars_is_refused_and_255_accepted() -> None:
    assert (
        only_problem(trigger(campaign_id="c" * 256))
        == "campaign_id: must be 1-255 characters, got 256"
    )
    assert TriggerRequest.parse(trigger(campaign_id="c" * 255)).campaign_id == "c" * 255


@pytest.mark.parametrize("campaign_id", ["50%off", "a:b", "camp_1-x.y~z", "caf\u00e9", "a+b=c"])
def test_campaign_id_with_other_url_chars_is_accepted(campaign_id: str) -> None:
    assert TriggerRequest.parse(trigger(campaign_id=campaign_id)).campaign_id == campaign_id


def test_campaign_id_must_be_a_string_not_a_number() -> None:
    assert only_problem(trigger(campaign_id=42)).startswith("campaign_id: ")


# --- idempotency_key ------------------------------------------------------------------


def test_idempotency_key_empty_is_refused() -> None:
    assert (
        only_problem(trigger(idempotency_key=""))
        == "idempotency_key: must be 1-255 characters, got 0"
    )


def test_idempotency_key_of_256_chars_is_refused_and_255_accepted() -> None:
    assert (
        only_problem(trigger(idempotency_key="k" * 256))
        == "idempotency_key: must be 1-255 characters, got 256"
    )
    assert TriggerRequest.parse(trigger(idempotency_key="k" * 255)).idempotency_key == "k" * 255


@pytest.mark.parametrize("char", ["\n", "\t", "\x00", "\x7f", "\u200b"])
def test_idempotency_key_with_non_printable_char_is_refused(char: str) -> None:
    assert (
        only_problem(trigger(idempotency_key=f"order{char}1"))
        == "idempotency_key: must contain printable characters only"
    )


def test_idempotency_key_may_hold_spaces_slashes_and_unicode() -> None:
    key = "order 1/2?#:caf\u00e9"
    assert TriggerRequest.parse(trigger(idempotency_key=key)).idempotency_key == key


def test_missing_required_fields_are_each_named() -> None:
    problems = problems_of({})
    assert sorted(p.split(":")[0] for p in problems) == ["campaign_id", "idempotency_key"]
    assert all("Field required" in p for p in problems)


# --- audience -------------------------------------------------------------------------


def test_target_with_both_ids_is_refused_naming_its_index() -> None:
    problem = only_problem(
        trigger(
            audience={"targets": [{"device_id": "d1"}, {"project_user_id": "u", "device_id": "d"}]}
        )
    )
    assert problem == (
        "audience.targets[1]: a target names exactly one of project_user_id or device_id, "
        "got project_user_id and device_id"
    )


def test_target_with_neither_id_is_refused() -> None:
    assert only_problem(trigger(audience={"targets": [{}]})) == (
        "audience.targets[0]: a target names exactly one of project_user_id or device_id, "
        "got neither"
    )


def test_target_with_empty_id_is_refused() -> None:
    assert only_problem(trigger(audience={"targets": [{"device_id": ""}]})).startswith(
        "audience.targets[0].device_id: "
    )


def test_target_with_unknown_field_is_refused() -> None:
    assert (
        only_problem(trigger(audience={"targets": [{"device_id": "d", "email": "x@y"}]}))
        == "audience.targets[0].email: unknown field"
    )


def test_target_whose_only_id_is_null_is_refused() -> None:
    problems_of(trigger(audience={"targets": [{"project_user_id": None}]}))


@pytest.mark.parametrize("audience", [{"broadcast": None}, {"targets": None}])
def test_explicit_null_inside_audience_never_reaches_the_body(audience: dict[str, Any]) -> None:
    try:
        request = TriggerRequest.parse(trigger(audience=audience))
    except InvalidTrigger:
        return  # refusing it is as good as dropping it
    assert b"null" not in request.body_bytes()


def test_broadcast_true_with_targets_is_refused_as_ambiguous() -> None:
    problem = only_problem(
        trigger(audience={"broadcast": True, "targets": [{"project_user_id": "u1"}]})
    )
    assert problem.startswith("audience: broadcast: true ignores targets")


def test_broadcast_false_with_targets_is_accepted_and_sent_as_given() -> None:
    audience = {"broadcast": False, "targets": [{"project_user_id": "u1"}, {"device_id": "d9"}]}
    request = TriggerRequest.parse(trigger(audience=audience))
    assert request.body() == {"audience": audience}


def test_broadcast_true_alone_is_accepted() -> None:
    request = TriggerRequest.parse(trigger(audience={"broadcast": True}))
    assert request.body() == {"audience": {"broadcast": True}}


@pytest.mark.parametrize("value", ["yes", "true", 1, 0])
def test_broadcast_must_be_a_real_boolean(value: object) -> None:
    assert only_problem(trigger(audience={"broadcast": value})) == (
        "audience.broadcast: Input should be a valid boolean"
    )


def test_audience_with_unknown_field_is_refused() -> None:
    assert only_problem(trigger(audience={"segment": "vip"})) == "audience.segment: unknown field"


def test_targets_must_be_a_list() -> None:
    assert only_problem(trigger(audience={"targets": {"device_id": "d"}})).startswith(
        "audience.targets: "
    )


# --- top level ------------------------------------------------------------------------


def test_unknown_top_level_field_is_refused_by_name() -> None:
    assert only_problem(trigger(priority="high")) == "priority: unknown field"


def test_non_dict_kwargs_are_refused() -> None:
    assert problems_of(["camp-1", "order-1"]) == [
        "expected keyword arguments (an object), got list"
    ]


def test_invalid_trigger_is_a_value_error_whose_text_lists_the_problems() -> None:
    with pytest.raises(ValueError, match=r"^invalid trigger: campaign_id: ") as caught:
        TriggerRequest.parse(trigger(campaign_id="a/b"))
    assert isinstance(caught.value, InvalidTrigger)


def test_several_problems_are_reported_together() -> None:
    problems = problems_of(
        {
            "campaign_id": "a/b",
            "idempotency_key": "",
            "audience": {"broadcast": "yes", "targets": [{}]},
            "properties": {"x": float("nan")},
            "colour": "red",
        }
    )
    fields = [p.split(": ", 1)[0] for p in problems]
    assert sorted(fields) == sorted(
        [
            "campaign_id",
            "idempotency_key",
            "audience.broadcast",
            "audience.targets[0]",
            "properties",
            "colour",
        ]
    )


# --- properties -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_properties_with_non_finite_float_are_refused(value: float) -> None:
    problem = only_problem(trigger(properties={"score": value}))
    assert problem.startswith("properties: must be JSON-serialisable (")


def test_properties_with_a_set_are_refused() -> None:
    problem = only_problem(trigger(properties={"tags": {"a", "b"}}))
    assert problem.startswith("properties: must be JSON-serialisable (")
    assert "set" in problem


def test_properties_must_be_an_object() -> None:
    assert only_problem(trigger(properties=["order_id", "ORD-1"])).startswith("properties: ")


def test_properties_keys_must_be_strings() -> None:
    problem = only_problem(trigger(properties={1: "one"}))
    assert problem.startswith("properties")
    assert problem.endswith("Input should be a valid string")


def test_nested_properties_are_sent_unchanged() -> None:
    properties = {"order_id": "ORD-1", "item_count": 3, "paid": True, "lines": [{"sku": "A"}]}
    request = TriggerRequest.parse(trigger(properties=properties))
    assert request.body() == {"properties": properties}


# --- body size ------------------------------------------------------------------------

_BODY_OVERHEAD = len(b'{"properties":{"b":""}}')


def test_body_of_exactly_the_limit_is_accepted() -> None:
    request = TriggerRequest.parse(
        trigger(properties={"b": "x" * (MAX_BODY_BYTES - _BODY_OVERHEAD)})
    )
    assert len(request.body_bytes()) == MAX_BODY_BYTES


def test_body_one_byte_over_10_mb_is_refused_with_its_size() -> None:
    size = MAX_BODY_BYTES + 1
    problem = only_problem(trigger(properties={"b": "x" * (size - _BODY_OVERHEAD)}))
    assert (
        problem == f"trigger: request body is {size} bytes, over Clix's limit of {MAX_BODY_BYTES}"
    )


def test_body_size_counts_utf8_bytes_not_characters() -> None:
    # 3 bytes per character in UTF-8: well under the limit in characters, over it in bytes
    chars = MAX_BODY_BYTES // 3 + 10
    problem = only_problem(trigger(properties={"b": "\u20ac" * chars}))
    assert "over Clix's limit" in problem


# --- the body is exactly what was given -----------------------------------------------


def test_body_without_audience_or_properties_is_empty() -> None:
    request = TriggerRequest.parse(trigger())
    assert request.body() == {}
    assert request.body_bytes() == b"{}"


def test_absent_audience_adds_no_key_and_no_defaults() -> None:
    request = TriggerRequest.parse(trigger(properties={"order_id": "ORD-1"}))
    assert request.body() == {"properties": {"order_id": "ORD-1"}}


def test_absent_properties_adds_no_key() -> None:
    request = TriggerRequest.parse(trigger(audience={"targets": [{"device_id": "d9"}]}))
    body = json.loads(request.body_bytes())
    assert body == {"audience": {"targets": [{"device_id": "d9"}]}}


def test_unset_fields_of_audience_and_targets_stay_out() -> None:
    request = TriggerRequest.parse(trigger(audience={"targets": [{"project_user_id": "u1"}]}))
    body = json.loads(request.body_bytes())
    assert "broadcast" not in body["audience"]
    assert body["audience"]["targets"] == [{"project_user_id": "u1"}]


def test_explicit_none_audience_and_properties_are_left_out() -> None:
    request = TriggerRequest.parse(trigger(audience=None, properties=None))
    assert request.body() == {}
    assert request.to_kwargs() == {"campaign_id": "camp-1", "idempotency_key": "order-1"}


def test_empty_properties_object_is_kept_as_given() -> None:
    assert TriggerRequest.parse(trigger(properties={})).body() == {"properties": {}}


def test_body_bytes_are_compact_utf8_json() -> None:
    request = TriggerRequest.parse(trigger(properties={"name": "caf\u00e9"}))
    assert request.body_bytes() == '{"properties":{"name":"caf\u00e9"}}'.encode()


def test_to_kwargs_round_trips_through_parse() -> None:
    given = trigger(
        audience={"broadcast": False, "targets": [{"device_id": "d9"}]},
        properties={"order_id": "ORD-1", "item_count": 3},
    )
    request = TriggerRequest.parse(given)
    assert request.to_kwargs() == given
    assert TriggerRequest.parse(request.to_kwargs()) == request
