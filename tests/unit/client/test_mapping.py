"""How a map is sliced to show its progress: quick maps go at once, long ones in slices."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from snakepit_nb._errors import CallTimeoutError
from snakepit_nb.client import mapping
from snakepit_nb.client.mapping import ProgressiveMap


@pytest.fixture
def shown() -> Iterator[list[Any]]:
    views: list[Any] = []
    mapping.set_progress_display(lambda tally: views.append(tally) or tally)
    yield views
    mapping.set_progress_display(None)


def sender(per_item: float, sizes: list[int]) -> Any:
    """A stand-in for the pool: ``per_item`` seconds of work per item (2 workers)."""

    def send(part: Sequence[Any], left: float | None) -> list[tuple[bool, Any]]:
        sizes.append(len(part))
        time.sleep(per_item * len(part) / 2)  # the work the items take, not synchronisation
        return [(not (isinstance(x, int) and x % 7 == 3), x) for x in part]

    return send


def test_a_quick_map_goes_in_two_requests_and_shows_nothing(shown: list[Any]) -> None:
    sizes: list[int] = []
    plan = ProgressiveMap(list(range(10_000)), workers=2, timeout=None, label="map 'f'")
    results = plan.run(sender(1e-6, sizes))
    assert [v for _, v in results] == list(range(10_000))
    assert sizes == [200, 9_800]
    assert plan.tally is None
    assert shown == []


def test_a_long_map_is_sliced_and_shows_its_progress_after_two_seconds(
    shown: list[Any],
) -> None:
    sizes: list[int] = []
    items = list(range(60))
    plan = ProgressiveMap(items, workers=2, timeout=None, label="map 'slow'")
    started = time.monotonic()
    results = plan.run(sender(0.1, sizes))  # about 3 s of work on 2 workers
    assert [v for _, v in results] == items  # in input order
    assert len(sizes) > 3  # slices, about half a second each
    assert all(size >= 4 for size in sizes[:-1])  # never fewer than 2 per worker (but the rest)
    (tally,) = shown
    assert tally is plan.tally
    assert tally.done == tally.total == 60
    assert tally.failed == sum(1 for x in items if x % 7 == 3)
    assert tally.finished()
    assert time.monotonic() - started >= mapping.PROGRESS_AFTER


def test_slices_share_the_maps_deadline() -> None:
    plan = ProgressiveMap(list(range(40)), workers=2, timeout=0.5, label="map 'slow'")
    with pytest.raises(CallTimeoutError, match=r"map 'slow' did not finish within 0\.5 s"):
        plan.run(sender(0.1, []))
