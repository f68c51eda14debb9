"""Fixtures of the test kit's own tests.

The test modules here enable ``pytester`` and the kit themselves: ``pytest_plugins``
in a conftest below the top level is an error in pytest.
"""

from __future__ import annotations

import pytest
import sqlalchemy.dialects.postgresql  # noqa: F401
from kit_support import KitRun

# Imported here, before any in-process pytester run: such a run forgets the modules it
# imported, and importing SQLAlchemy's PostgreSQL dialect a second time warns that its
# functions are registered twice (an error under filterwarnings=error in later tests).
import lunasentri_sqlite  # noqa: F401
import lunasentri_timescale  # noqa: F401


@pytest.fixture
def kit_run(pytester: pytest.Pytester) -> KitRun:
    return KitRun(pytester)
