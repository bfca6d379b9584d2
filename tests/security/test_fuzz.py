"""Generated hostile input: the APIs fuzzed from their own OpenAPI documents, and the SSE
frame encoder checked for every string a grade may carry."""

import orjson
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from services.core.events import NotificationPublic
from services.stream.frames import encode_event
from tests.support import PUBLISHER_KEYS, ServiceProcess, token_for

EXAMPLES = 40  # per operation: enough to find a 500, few enough for CI
# An endless stream never ends a request: its refusals are tested over real HTTP instead.
ENDLESS = "/notifications/stream/{student_id}"


def fuzz(service: ServiceProcess, headers: dict[str, str]) -> list[str]:
    """Sends generated requests to every operation of a service's OpenAPI document; fails
    on any 5xx. Returns the operations fuzzed."""
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    fuzzed = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == ENDLESS:
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def never_a_server_error(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=service.url, headers=headers, checks=[not_a_server_error]
            )

        never_a_server_error()
        fuzzed.append(f"{operation.method.upper()} {operation.path}")
    return fuzzed


def test_the_publish_api_never_fails_on_generated_input(publisher: ServiceProcess) -> None:
    fuzzed = fuzz(publisher, {"Authorization": f"Bearer {PUBLISHER_KEYS[0]}"})
    assert "POST /grades/publish" in fuzzed


def test_the_stream_api_never_fails_on_generated_input(node_a: ServiceProcess) -> None:
    fuzzed = fuzz(node_a, {"Authorization": f"Bearer {token_for('student-1')}"})
    assert "GET /notifications/missed/{student_id}" in fuzzed


SAFE = 2**53 - 1  # the grades the publish API accepts


@given(
    comment=st.one_of(st.none(), st.text()),
    title=st.one_of(st.none(), st.text()),
    grade=st.one_of(
        st.text(max_size=32),
        st.integers(-SAFE, SAFE),
        st.floats(-SAFE, SAFE, allow_nan=False, allow_infinity=False),
    ),
)
@settings(max_examples=300)
def test_no_grade_content_can_split_or_forge_a_frame(
    comment: str | None, title: str | None, grade: str | int | float
) -> None:
    notification = NotificationPublic(
        id="7",
        student_id="s1",
        assignment_id="a1",
        grade=grade,
        teacher_comment=comment,
        course_id=None,
        assignment_title=title,
        published_at="2026-01-01T00:00:00Z",
    )
    frame = encode_event(notification).decode()
    # SSE ends lines at CR, LF or CRLF: the frame is exactly its three lines and a blank one.
    lines = frame.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    assert lines[:2] == ["id: 7", "event: grade"] and lines[3:] == ["", ""]
    assert lines[2].startswith("data: ")
    data = orjson.loads(lines[2].removeprefix("data: "))
    assert (data["teacherComment"], data["assignmentTitle"], data["grade"]) == (
        comment,
        title,
        grade,
    )
