"""The reliability suite (`pytest -m reliability`): fault injection against the real servers,
the bad-input corpus, URI safety, back-pressure.

Each scenario reports what it sent and what the tables hold (`scoreboard.record`); the session
ends with one table of them, so a run shows at a glance that every scenario lost and
duplicated nothing.
"""

from __future__ import annotations

import pytest
from support.harness import SCOREBOARD, Score


# Every test under tests/reliability/ carries the marker, whatever its module forgets.
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def scoreboard(request: pytest.FixtureRequest):
    """`scoreboard.record(score)`: adds this test's scenario to the end-of-session table."""

    class _Board:
        def record(self, score: Score) -> Score:
            score.test = request.node.name
            SCOREBOARD.append(score)
            return score

    return _Board()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not SCOREBOARD:
        return
    write = terminalreporter.write_line
    terminalreporter.section("reliability scenarios")
    header = f"{'scenario':<46} {'sent':>6} {'rows':>6} {'dup':>5} {'lost':>5}  note"
    write(header)
    write("-" * len(header))
    for score in SCOREBOARD:
        write(
            f"{score.scenario[:46]:<46} {score.sent:>6} {score.rows:>6} "
            f"{score.duplicates:>5} {score.losses:>5}  {score.note}"
        )
    bad = [s for s in SCOREBOARD if s.duplicates or s.losses]
    write(f"{len(SCOREBOARD)} scenarios, {len(bad)} with duplicates or losses")
