"""The contract suite every collector passes, from lunasentri_core.testing."""

from __future__ import annotations

import pytest

from lunasentri_core.testing import CollectorContract
from lunasentri_psutil import PsutilCollector, PsutilSettings


class TestPsutilCollector(CollectorContract):
    @pytest.fixture(
        params=[PsutilSettings(), PsutilSettings(per_cpu=True, skip_nics=())],
        ids=["defaults", "per-cpu-all-nics"],
    )
    def collector(self, request: pytest.FixtureRequest) -> PsutilCollector:
        settings: PsutilSettings = request.param
        return PsutilCollector(settings)
