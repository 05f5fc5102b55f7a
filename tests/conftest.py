"""Suite-wide test settings.

Multi-process tests (marker `integration`) start real validator processes on a 2-core
machine that also runs the rest of the suite in parallel; scheduling there is not under the
test's control. Each such test gets one rerun: a real defect fails both runs, and the
rerun is reported, so a rerun that hides nothing still shows up in the summary.
Hypothesis runs without per-example deadlines for the same reason (CPU contention, not
slow code, is what a deadline would measure here).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "cityledger", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("cityledger")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("integration") is not None:
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=2))
