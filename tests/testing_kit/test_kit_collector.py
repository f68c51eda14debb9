"""CollectorContract: passes for good collectors, names what is wrong with broken ones."""

from __future__ import annotations

import pytest
from kit_doubles import AsyncCountingCollector, CountingCollector, CountingSettings
from kit_support import KitRun, outcomes

from lunasentri_core.testing import CollectorContract

pytest_plugins = ["pytester", "lunasentri_core.testing"]

ALL_TESTS = {
    "test_has_a_name",
    "test_implements_the_collector_protocol",
    "test_settings_class_has_defaults",
    "test_collect_returns_readings",
    "test_collect_repeatedly",
    "test_readings_round_trip_through_the_codec",
    "test_collect_concurrently",
    "test_collect_does_not_block_the_event_loop",
    "test_collect_gives_up_after_its_timeout",
    "test_registers_through_a_hook",
}
NOT_APPLICABLE = {
    "test_collect_does_not_block_the_event_loop",
    "test_collect_gives_up_after_its_timeout",
}
"""Skipped for a plain ``collect`` whose settings have no timeout, as CountingCollector's."""


class TestCountingCollector(CollectorContract):
    @pytest.fixture
    def collector(self) -> CountingCollector:
        return CountingCollector(CountingSettings(count=4))


class TestAsyncCountingCollector(CollectorContract):
    @pytest.fixture
    def collector(self) -> AsyncCountingCollector:
        return AsyncCountingCollector()


def test_the_suite_runs_every_test_for_a_good_collector(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        import pytest
        from kit_doubles import CountingCollector
        from lunasentri_core.testing import CollectorContract

        class TestGood(CollectorContract):
            @pytest.fixture
            def collector(self):
                return CountingCollector()
        """
    )
    assert outcomes(result) == {
        "passed": ALL_TESTS - NOT_APPLICABLE,
        "skipped": NOT_APPLICABLE,
        "failed": set(),
    }


def test_the_contract_classes_are_not_collected_by_themselves(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        from lunasentri_core.testing import (
            AuthenticatorContract, CollectorContract, EntryPointContract,
            MetricStoreContract, NotifierContract, StateStoreContract, StorageContract,
        )
        """
    )
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_an_intermediate_base_can_opt_out_of_collection(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        import pytest
        from kit_doubles import CountingCollector
        from lunasentri_core.testing import CollectorContract

        class SharedBase(CollectorContract):
            __test__ = False

        class TestConcrete(SharedBase):
            @pytest.fixture
            def collector(self):
                return CountingCollector()
        """
    )
    result.assert_outcomes(passed=len(ALL_TESTS - NOT_APPLICABLE), skipped=len(NOT_APPLICABLE))


def test_a_missing_fixture_says_what_to_define(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        from lunasentri_core.testing import CollectorContract

        class TestForgotTheFixture(CollectorContract):
            pass
        """
    )
    assert outcomes(result)["passed"] == set()
    result.stdout.fnmatch_lines(["*must define a 'collector' fixture*"])


NOT_COLLECTING = NOT_APPLICABLE | {
    "test_has_a_name",
    "test_implements_the_collector_protocol",
    "test_settings_class_has_defaults",
    "test_registers_through_a_hook",
}

BROKEN = {
    "NamelessCollector": (
        {"test_has_a_name", "test_registers_through_a_hook"},
        "*has an empty 'name'*",
    ),
    "SettingsWithoutDefaultsCollector": (
        {"test_settings_class_has_defaults", "test_registers_through_a_hook"},
        "*every field of StrictSettings needs a default*",
    ),
    "DictCollector": (
        ALL_TESTS - NOT_COLLECTING,
        "*collect()[[]0[]] is a dict, not a Reading*",
    ),
    "GeneratorCollector": (
        ALL_TESTS - NOT_COLLECTING,
        "*must return a sequence (list or tuple) of Reading, not generator*",
    ),
    "DuplicateSeriesCollector": (
        ALL_TESTS - NOT_COLLECTING,
        "*returned these series more than once*demo.value{'n': '0'}*",
    ),
    "OneShotCollector": (
        {"test_collect_repeatedly", "test_collect_concurrently"},
        "*a second collection fails*",
    ),
    "NotReentrantCollector": (
        {"test_collect_concurrently"},
        "*failed when called from two threads*already running*",
    ),
}
"""Broken collectors: the tests each must fail, and a line of the report explaining why."""


def test_the_suite_catches_broken_collectors(kit_run: KitRun) -> None:
    classes = "\n".join(
        f"""
class Test{name}(CollectorContract):
    @pytest.fixture
    def collector(self):
        return kit_doubles.{name}()
"""
        for name in BROKEN
    )
    result = kit_run.run(
        "import pytest\nimport kit_doubles\n"
        "from lunasentri_core.testing import CollectorContract\n" + classes
    )
    for name, (failing, message) in BROKEN.items():
        found = outcomes(result, f"Test{name}")
        assert found["failed"] == failing, name
        assert found["passed"] == ALL_TESTS - failing - NOT_APPLICABLE, name
        result.stdout.fnmatch_lines([message])


def test_expect_readings_allows_an_empty_collection(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        import pytest
        from kit_doubles import CountingCollector, CountingSettings
        from lunasentri_core.testing import CollectorContract

        class TestMustMeasure(CollectorContract):
            @pytest.fixture
            def collector(self):
                return EmptyCollector()

        class TestMayBeEmpty(TestMustMeasure):
            expect_readings = False

        class EmptyCollector(CountingCollector):
            def collect(self, target):
                return []
        """
    )
    found = outcomes(result)
    assert found["failed"] == {"test_collect_returns_readings"}
    result.stdout.fnmatch_lines(["*TestMustMeasure::test_collect_returns_readings*"])
    assert found["passed"] == ALL_TESTS - NOT_APPLICABLE
