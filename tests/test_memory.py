"""The collector's settings for long-running processes."""

import gc
from collections.abc import Iterator

import pytest

from services.memory import YOUNG_GENERATION, settle_after_startup


@pytest.fixture
def collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector")
def test_what_exists_at_startup_is_left_out_of_collections() -> None:
    before = gc.get_freeze_count()
    settle_after_startup()
    assert gc.get_freeze_count() > before
    assert gc.get_objects(generation=2) == []  # nothing left for a full collection to scan
    assert gc.get_threshold()[0] == YOUNG_GENERATION
