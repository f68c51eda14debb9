"""Running a plugin author's test module in a fresh pytest session, for the kit's own tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).parent

INNER_CONFTEST = """
pytest_plugins = ["lunasentri_core.testing"]
"""

INNER_INI = """
[pytest]
addopts = -p no:cacheprovider
filterwarnings = error
"""


NOTIFIER_BASE = """
import pytest
import kit_doubles
from lunasentri_core.testing import NotifierContract

class Base(NotifierContract):
    __test__ = False

    @pytest.fixture
    def inboxes(self):
        return kit_doubles.Inboxes()

    @pytest.fixture
    def channel(self):
        return {"inbox": "ops"}

    @pytest.fixture
    def received(self, inboxes):
        return lambda: inboxes.messages.get("ops", [])
"""
"""The start of a notifier test module: a ``Base`` delivering into the kit's inboxes
(channel ``{"inbox": "ops"}``); modules add the notifier under test."""


class KitRun:
    """Runs a plugin author's test module in a fresh pytest session (in process)."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        pytester.makeconftest(INNER_CONFTEST)
        pytester.makeini(INNER_INI)
        pytester.syspathinsert(HERE)  # makes kit_doubles importable

    def run(self, source: str, *args: str) -> pytest.RunResult:
        self.pytester.makepyfile(test_plugin=textwrap.dedent(source))
        return self.pytester.runpytest("-rfEs", *args)


def outcomes(result: pytest.RunResult, cls: str | None = None) -> dict[str, set[str]]:
    """Names of the tests that passed, were skipped or failed (of class ``cls`` when given).

    Names are without the module and class; parametrized ones keep their ``[id]``.
    """
    reprec = result.reprec  # type: ignore[attr-defined]
    passed, skipped, failed = reprec.listoutcomes()
    found: dict[str, set[str]] = {}
    for outcome, reports in (("passed", passed), ("skipped", skipped), ("failed", failed)):
        names = set()
        for report in reports:
            *_, owner, name = report.nodeid.split("::")
            if cls is None or owner == cls:
                names.add(name)
        found[outcome] = names
    return found
