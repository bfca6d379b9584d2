"""The publish request's schema."""

from typing import Any

import pytest
from pydantic import ValidationError

from services.publisher.schemas import GradePublish


def request(**fields: Any) -> GradePublish:
    return GradePublish.model_validate({"studentId": "student-1", "assignmentId": "hw-1", **fields})


def test_recipients_are_deduplicated_in_order() -> None:
    body = {"studentIds": ["c", "a", "c", "b", "a"], "assignmentId": "hw-1", "grade": 10}
    assert GradePublish.model_validate(body).recipients() == ["c", "a", "b"]


def test_student_id_alone_is_one_recipient() -> None:
    assert request(grade=10).recipients() == ["student-1"]


@pytest.mark.parametrize(
    "body",
    [
        {"student_id": "student-1", "assignmentId": "hw-1", "grade": 10},
        {"studentId": "student-1", "assignment_id": "hw-1", "grade": 10},
        {"studentId": "student-1", "assignmentId": "hw-1", "grade": 10, "teacher_comment": "x"},
    ],
)
def test_snake_case_names_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GradePublish.model_validate(body)


@pytest.mark.parametrize("grade", ["A-", 95, 95.5])
def test_grade_keeps_its_type(grade: str | int | float) -> None:
    kept = request(grade=grade).grade
    assert kept == grade
    assert type(kept) is type(grade)


@pytest.mark.parametrize("grade", [True, 2**53, float(2**53)])
def test_grade_is_refused(grade: object) -> None:
    with pytest.raises(ValidationError, match="grade"):
        request(grade=grade)


def test_grade_nan_is_refused() -> None:
    raw = b'{"studentId": "student-1", "assignmentId": "hw-1", "grade": NaN}'
    with pytest.raises(ValidationError, match="finite number"):
        GradePublish.model_validate_json(raw)


def test_teacher_comment_may_be_null() -> None:
    assert request(grade="B", teacherComment=None).teacher_comment is None
