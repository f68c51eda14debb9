"""StorageContract: satisfiable (an in-memory store passes it) and strict (flaws are caught)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kit_doubles import MemoryStorage
from kit_support import KitRun, outcomes

from lunasentri_core.storage import Capability
from lunasentri_core.testing import StorageContract

pytest_plugins = ["pytester", "lunasentri_core.testing"]


class TestMemoryStorage(StorageContract):
    expected_capabilities = frozenset({Capability.ROLLUPS, Capability.RETENTION})

    @pytest.fixture
    def storage(self) -> Iterator[MemoryStorage]:
        backend = MemoryStorage(self.retention)
        backend.migrate()
        yield backend
        backend.close()


class TestMemoryStorageWithoutOptions(StorageContract):
    expected_capabilities = frozenset()

    @pytest.fixture
    def storage(self) -> MemoryStorage:
        return MemoryStorage(self.retention, capabilities=frozenset())


INNER = """
import pytest
from kit_doubles import MemoryStorage
from lunasentri_core.storage import Capability
from lunasentri_core.testing import StorageContract

class TestStore(StorageContract):
    expected_capabilities = {expected}

    @pytest.fixture
    def storage(self):
        return MemoryStorage(self.retention, capabilities={capabilities}, flaws={flaws})
"""

ALL = "frozenset({Capability.ROLLUPS, Capability.RETENTION})"


def run_store(
    kit_run: KitRun, *, flaws: tuple[str, ...] = (), capabilities: str = ALL, expected: str = "None"
) -> dict[str, set[str]]:
    source = INNER.format(flaws=flaws, capabilities=capabilities, expected=expected)
    return outcomes(kit_run.run(source))


def test_missing_capabilities_are_skipped_by_name(kit_run: KitRun) -> None:
    result = kit_run.run(INNER.format(flaws=(), capabilities="frozenset()", expected="None"))
    found = outcomes(result)
    assert found["failed"] == set()
    assert found["skipped"] == {
        "test_rollups_answer_long_ranges[1h]",
        "test_rollups_answer_long_ranges[15m]",
        "test_retention_expires_raw_points",
        "test_rollups_outlive_expired_resolutions",
        "test_series_limit_refuses_a_batch_whole",
    }
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] *: backend lacks capability 'series-limit'",
            "SKIPPED [[]3[]] *: backend lacks capability 'rollups'",
            "SKIPPED [[]1[]] *: backend lacks capability 'retention'",
        ]
    )


def test_a_lost_capability_fails_when_capabilities_are_pinned(kit_run: KitRun) -> None:
    found = run_store(kit_run, capabilities="frozenset({Capability.RETENTION})", expected=ALL)
    assert found["failed"] == {"test_declares_the_expected_capabilities"}


@pytest.mark.parametrize(
    ("flaw", "failing"),
    [
        (
            "last-wins",
            {"test_first_value_wins", "test_duplicates_within_one_batch_are_stored_once"},
        ),
        ("partial-writes", {"test_failed_write_stores_nothing"}),
        (
            "closed-range",
            {"test_history_range_is_half_open", "test_history_of_a_range_without_points_is_empty"},
        ),
        (
            "unscoped",
            {
                "test_machines_are_scoped_to_their_owner",
                "test_a_machine_page_holds_only_the_owners_machines",
                "test_machine_pages_filter_by_ids_within_the_owners_machines",
            },
        ),
        (
            "inclusive-after",
            {
                "test_machine_pages_come_in_name_order",
                "test_machine_pages_see_each_machine_once_while_machines_come_and_go",
                "test_a_machine_page_holds_only_the_owners_machines",
                "test_machine_page_filters_combine_with_the_position",
                "test_machine_pages_filter_by_ids_within_the_owners_machines",
            },
        ),
        ("touch-backwards", {"test_touch_machines_never_moves_last_seen_backwards"}),
        (
            "reusable-reset-token",
            {
                "test_a_reset_token_is_used_once",
                "test_concurrent_uses_of_a_reset_token_have_one_winner",
            },
        ),
        (
            "given-config-version",
            {
                "test_agent_config_versions",
                "test_concurrent_agent_config_updates_get_distinct_versions",
            },
        ),
        (
            "reapplied-status",
            {
                "test_a_status_change_is_applied_once",
                "test_concurrent_status_changes_have_one_winner",
            },
        ),
        (
            "stale-alert",
            {
                "test_a_stale_alert_transition_is_not_applied",
                "test_concurrent_first_transitions_have_one_winner",
            },
        ),
        (
            "unsilenced",
            {"test_fan_out_silences_matching_events", "test_outbox_events_go_once_handled"},
        ),
        ("purge-unsent", {"test_outbox_events_go_once_handled"}),
        ("unnoticed-edit", {"test_config_epoch_moves_with_rules_machines_and_deleted_users"}),
        (
            "no-leases",
            {
                "test_a_claimed_delivery_is_leased",
                "test_concurrent_claims_take_each_delivery_once",
            },
        ),
        (
            "reopened-silence",
            {
                "test_a_due_silence_is_closed_once",
                "test_concurrent_closes_of_a_silence_have_one_winner",
            },
        ),
        (
            "hide-resolution",
            {
                "test_rollups_answer_long_ranges[1h]",
                "test_rollups_answer_long_ranges[15m]",
                "test_rollups_outlive_expired_resolutions",
            },
        ),
        (
            "agentless-unscoped",
            {
                "test_credential_profiles_are_scoped_to_their_owner",
                "test_discovery_profiles_are_scoped_to_their_owner",
                "test_discovery_runs_are_scoped_to_their_owner",
                "test_devices_are_scoped_and_unique_by_address",
                "test_monitors_are_scoped_to_their_owner",
                # Another owner's credential profile is used as if it were missing.
                "test_add_monitor_checks_what_it_uses",
                "test_update_monitor_replaces_settings_and_keeps_the_poll_record",
            },
        ),
        (
            "deletes-in-use",
            {
                "test_delete_credential_profile_in_use",
                "test_delete_device_in_use",
                "test_a_machine_monitors_write_to_cannot_be_deleted",
            },
        ),
        (
            "duplicate-devices",
            {
                "test_upsert_devices_never_duplicates_an_address",
                "test_concurrent_upserts_of_one_address_make_one_device",
            },
        ),
        (
            "monitor-leases-ignored",
            {
                "test_claim_due_monitors",
                "test_concurrent_claims_never_take_a_monitor_twice",
                "test_release_monitor_leases",
            },
        ),
        (
            "epoch-steps",
            {
                *(
                    f"test_history_matches_the_reference[{a}]"
                    for a in ("avg", "min", "max", "last")
                ),
                "test_history_range_is_half_open",
                "test_history_steps_start_at_query_start",
                "test_maintain_does_not_change_answers",
            },
        ),
    ],
)
def test_the_suite_catches_a_flawed_store(kit_run: KitRun, flaw: str, failing: set[str]) -> None:
    found = run_store(kit_run, flaws=(flaw,))
    assert found["failed"] == failing
