"""SSE frames: one data line whatever a grade contains."""

import json
from datetime import UTC, datetime

from services.core.events import NotificationPublic
from services.stream.frames import encode_event, encode_reset, encode_retry

PUBLISHED_AT = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)


def notification(**fields: object) -> NotificationPublic:
    values: dict[str, object] = {
        "id": "7",
        "student_id": "student-1",
        "assignment_id": "hw-1",
        "grade": "A-",
        "teacher_comment": "well done",
        "course_id": "math",
        "assignment_title": "Homework 1",
        "published_at": PUBLISHED_AT,
        **fields,
    }
    return NotificationPublic.model_validate(values)


def test_event_frame_format() -> None:
    frame = encode_event(notification()).decode()
    id_line, event_line, data = frame.split("\n", 2)
    assert (id_line, event_line) == ("id: 7", "event: grade")
    assert data.startswith("data: {") and data.endswith("}\n\n")
    assert json.loads(data.removeprefix("data: ")) == {
        "id": "7",
        "studentId": "student-1",
        "assignmentId": "hw-1",
        "grade": "A-",
        "teacherComment": "well done",
        "courseId": "math",
        "assignmentTitle": "Homework 1",
        "publishedAt": "2025-03-01T12:30:00Z",
    }


def test_line_breaks_in_a_comment_cannot_split_the_frame() -> None:
    comment = "one\ntwo\rthree\r\nfour\n\ndata: forged\n\nid: 999"
    frame = encode_event(notification(teacher_comment=comment))
    assert frame.endswith(b"\n\n")
    lines = frame.decode().removesuffix("\n\n").split("\n")
    assert len(lines) == 3
    assert b"\r" not in frame
    assert lines[:2] == ["id: 7", "event: grade"]
    assert json.loads(lines[2].removeprefix("data: "))["teacherComment"] == comment


def test_missing_optional_fields_are_null() -> None:
    frame = encode_event(notification(teacher_comment=None, course_id=None, assignment_title=None))
    data = json.loads(frame.decode().split("\n")[2].removeprefix("data: "))
    assert data["teacherComment"] is None
    assert data["courseId"] is None
    assert data["assignmentTitle"] is None


def test_retry_frame() -> None:
    assert encode_retry(3000) == b"retry: 3000\n\n"


def test_a_reset_frame_has_no_id_and_says_why_and_since_when() -> None:
    floor = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    frame = encode_reset("expired", floor).decode()
    assert frame == (
        'event: reset\ndata: {"reason":"expired","purgedBefore":"2026-01-02T03:04:05+00:00"}\n\n'
    )
    assert "id:" not in encode_reset("unknown-id", None).decode()
