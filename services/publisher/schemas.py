"""The publish API's request and answer."""

from typing import Annotated

from pydantic import AllowInfNan, ConfigDict, Field, Strict, StringConstraints, model_validator

from services.core.events import CamelModel

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")
]
# No control characters (Postgres cannot even store NUL); text may keep tabs and line breaks.
NO_CONTROLS, TEXT = r"^[^\x00-\x1f\x7f]+$", r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
GradeText = Annotated[
    str, StringConstraints(min_length=1, max_length=32, pattern=NO_CONTROLS, strict=True)
]
Comment = Annotated[str, StringConstraints(max_length=2000, pattern=TEXT)]
Title = Annotated[str, StringConstraints(max_length=200, pattern=TEXT)]
# Numbers a browser's JSON.parse reads back as sent: finite, and within 2**53 (JSON's
# integers beyond it would come back as other floats).
SAFE_INTEGER = 2**53 - 1
SafeRange = Field(ge=-SAFE_INTEGER, le=SAFE_INTEGER)
GradeInteger = Annotated[int, Strict(), SafeRange]
GradeFloat = Annotated[float, Strict(), AllowInfNan(False), SafeRange]
MAX_RECIPIENTS = 10_000


class GradePublish(CamelModel):
    """A grade for one student (`studentId`) or the same grade for many (`studentIds`)."""

    model_config = ConfigDict(extra="forbid", validate_by_name=False)

    student_id: Identifier | None = None
    student_ids: list[Identifier] | None = Field(None, min_length=1, max_length=MAX_RECIPIENTS)
    assignment_id: Identifier
    grade: GradeText | GradeInteger | GradeFloat = Field(union_mode="left_to_right")
    teacher_comment: Comment | None = None
    course_id: Identifier | None = None
    assignment_title: Title | None = None

    @model_validator(mode="after")
    def exactly_one_recipient_field(self) -> "GradePublish":
        if (self.student_id is None) == (self.student_ids is None):
            raise ValueError("give exactly one of studentId or studentIds")
        return self

    def recipients(self) -> list[str]:
        """Each student once, in the order given."""
        if self.student_id is not None:
            return [self.student_id]
        return list(dict.fromkeys(self.student_ids or ()))
