"""Validation errors as one message, and which media types count as JSON."""

import pytest

from services.web.body import is_json
from services.web.errors import describe_validation


def test_describe_validation_drops_the_location_kind() -> None:
    errors = [
        {"loc": ("body", "studentIds"), "msg": "List should have at most 10000 items"},
        {"loc": ("query", "limit"), "msg": "Input should be a valid integer"},
        {"loc": ("header", "authorization"), "msg": "Field required"},
        {"loc": ("body", "studentIds", 3), "msg": "String should match pattern"},
        {"loc": ("body",), "msg": "Value error, give exactly one of studentId or studentIds"},
    ]
    assert describe_validation(errors) == (
        "studentIds: List should have at most 10000 items; "
        "limit: Input should be a valid integer; "
        "authorization: Field required; "
        "studentIds.3: String should match pattern; "
        "body: give exactly one of studentId or studentIds"
    )


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/problem+json"],
)
def test_json_media_types(content_type: str) -> None:
    assert is_json(content_type)


@pytest.mark.parametrize("content_type", ["text/plain", "", None, "application/jsonx"])
def test_other_media_types(content_type: str | None) -> None:
    assert not is_json(content_type)
