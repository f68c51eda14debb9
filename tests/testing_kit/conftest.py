"""Fixtures of the test kit's own tests.

The test modules here enable ``pytester`` and the kit themselves: ``pytest_plugins``
in a conftest below the top level is an error in pytest.
"""

from __future__ import annotations

import pytest
from kit_support import KitRun


@pytest.fixture
def kit_run(pytester: pytest.Pytester) -> KitRun:
    return KitRun(pytester)
