"""Who a student is: a tenant (school) and an id that means something only inside it."""

from typing import NamedTuple

DEFAULT_TENANT = "default"  # a single-school deployment never names one


class Student(NamedTuple):
    """A student is known by tenant (school) and id: ids mean something only in a tenant."""

    tenant_id: str
    student_id: str

    def label(self) -> str:
        """How operators see it: the bare id in a single-school deployment."""
        return (
            self.student_id
            if self.tenant_id == DEFAULT_TENANT
            else f"{self.tenant_id}/{self.student_id}"
        )
