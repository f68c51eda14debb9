"""The housekeeping part of the :class:`StateStore` contract: ``purge``.

It pins down, for the default :class:`~lunasentri_core.storage.PurgePolicy`
and one in small batches: a record older than its limit is deleted and one
exactly at its limit is kept; sessions and reset tokens go a grace after they
expired, were revoked or used; login failures a grace after they left the
lockout window; agent registrations that ended (delivered, expired, or pending
past their expiry) after ``claims`` while a claimed one waiting for its agent
stays; outbox events only once handled (no delivery still pending, no open
silence still to re-notify them, not new), with their deliveries; status
changes and alert events after ``history``, except the unacknowledged firing
event of a series still firing since. The report counts exactly what was
deleted, also when several callers purge at once, and a second purge finds
nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest

from lunasentri_core.errors import NotFoundError
from lunasentri_core.model import (
    AgentClaim,
    AlertEvent,
    AlertRule,
    AlertState,
    ClaimStatus,
    DeliveryState,
    MachineStatus,
    OutboxEvent,
    ResetToken,
    SeriesKey,
    Session,
    User,
    new_id,
)
from lunasentri_core.storage.protocols import (
    AlertTransition,
    PurgePolicy,
    PurgeReport,
    StateStore,
    StatusTransition,
)
from lunasentri_core.testing.builders import (
    BASE_TIME,
    hash_secret,
    make_alert_event,
    make_alert_rule,
    make_alert_status,
    make_channel,
    make_machine,
    make_outbox_event,
    make_silence,
    make_status_change,
    make_user,
)
from lunasentri_core.testing.contract import Contract
from lunasentri_core.testing.races import CALLERS, race

NOW = BASE_TIME + timedelta(days=200, microseconds=17)
POLICY = PurgePolicy()
MICROSECOND = timedelta(microseconds=1)
LATER = NOW + timedelta(days=1)
"""A time that has not come yet: an expiry still ahead."""


def _user(state: StateStore) -> User:
    return state.add_user(make_user(), "hash-of-a-password")


def _session(user: User, expires_at: datetime = LATER, **overrides: Any) -> Session:
    return Session(
        id=new_id(),
        user_id=user.id,
        token_hash=hash_secret(new_id()),
        created_at=BASE_TIME,
        expires_at=expires_at,
        **overrides,
    )


def _reset_token(user: User, expires_at: datetime = LATER, **overrides: Any) -> ResetToken:
    return ResetToken(
        id=new_id(),
        user_id=user.id,
        token_hash=hash_secret(new_id()),
        created_at=BASE_TIME,
        expires_at=expires_at,
        **overrides,
    )


def _claim(status: ClaimStatus, expires_at: datetime) -> AgentClaim:
    agent_id = new_id()
    return AgentClaim(
        agent_id=agent_id,
        claim_token_hash=hash_secret(new_id()),
        hostname=f"agent-{agent_id[:8]}.example.test",
        version="0.1.0",
        created_at=BASE_TIME,
        expires_at=expires_at,
        status=status,
    )


def _event(owner: User, at: datetime) -> OutboxEvent:
    return make_outbox_event(owner.id, occurred_at=at)


def _finish(state: StateStore, event: OutboxEvent, outcome: DeliveryState) -> None:
    """Give ``event``'s one delivery its final ``outcome``."""
    [delivery] = state.list_deliveries(event_id=event.id)
    state.finish_delivery(attrs.evolve(delivery, state=outcome, attempts=1))


def _outbox_left(state: StateStore) -> set[str]:
    return {event.id for event in state.list_outbox_events(limit=1000)}


def _firing_since(
    state: StateStore, rule: AlertRule, series: SeriesKey, since: datetime, alert: AlertState
) -> None:
    status = make_alert_status(
        rule, series.machine_id, series=series, state=alert, since=since, updated_at=since
    )
    assert state.record_alert_transitions([AlertTransition(None, status)]) != []


def _alert_event(
    store: StateStore, rule: AlertRule, series: SeriesKey, at: datetime, **overrides: Any
) -> AlertEvent:
    """``rule``'s event of ``series`` at ``at`` (firing, unless ``state`` says otherwise)."""
    event = make_alert_event(rule, series.machine_id, series=series, at=at, **overrides)
    return store.add_alert_event(event)


class PurgeStateContract(Contract):
    """``purge`` tests, run as part of :class:`StateStoreContract` (its ``state`` fixture)."""

    __test__ = False

    def test_purging_nothing_reports_nothing(self, state: StateStore) -> None:
        assert state.purge(NOW, POLICY) == PurgeReport()
        assert PurgeReport().total == 0

    def test_sessions_and_reset_tokens_go_a_grace_after_they_ended(self, state: StateStore) -> None:
        user = _user(state)
        limit = NOW - POLICY.grace
        gone_sessions = [
            _session(user, expires_at=limit - MICROSECOND),
            _session(user, revoked_at=limit - MICROSECOND),
        ]
        kept_sessions = [
            _session(user, expires_at=limit),
            _session(user, revoked_at=limit),
            _session(user),
        ]
        gone_tokens = [
            _reset_token(user, expires_at=limit - MICROSECOND),
            _reset_token(user, used_at=limit - MICROSECOND),
        ]
        kept_tokens = [
            _reset_token(user, expires_at=limit),
            _reset_token(user, used_at=limit),
            _reset_token(user),
        ]
        for session in (*gone_sessions, *kept_sessions):
            state.add_session(session)
        for token in (*gone_tokens, *kept_tokens):
            state.add_reset_token(token)

        assert state.purge(NOW, POLICY) == PurgeReport(sessions=2, reset_tokens=2)

        for session in gone_sessions:
            assert state.find_session(session.token_hash) is None
        for session in kept_sessions:
            assert state.find_session(session.token_hash) == session
        for token in gone_tokens:
            assert state.find_reset_token(token.token_hash) is None
        for token in kept_tokens:
            assert state.find_reset_token(token.token_hash) == token
        assert state.purge(NOW, POLICY) == PurgeReport()

    def test_login_failures_go_a_grace_after_leaving_the_lockout_window(
        self, state: StateStore
    ) -> None:
        name = f"someone-{new_id()[:8]}"
        limit = NOW - POLICY.login_window - POLICY.grace
        kept = [limit, NOW - POLICY.login_window, NOW]
        for at in (limit - timedelta(days=3), limit - MICROSECOND, *kept):
            state.add_login_failure(name, at, "203.0.113.5")

        assert state.purge(NOW, POLICY) == PurgeReport(login_failures=2)

        assert state.login_failure_times(name, BASE_TIME) == kept
        assert state.count_login_failures(name, BASE_TIME) == 3

    def test_ended_registrations_go_after_the_claims_period(self, state: StateStore) -> None:
        limit = NOW - POLICY.claims
        gone = [
            _claim(ClaimStatus.DELIVERED, limit - MICROSECOND),
            _claim(ClaimStatus.EXPIRED, limit - MICROSECOND),
            _claim(ClaimStatus.PENDING, limit - MICROSECOND),  # expired, not marked yet
        ]
        kept = [
            _claim(ClaimStatus.DELIVERED, limit),
            _claim(ClaimStatus.EXPIRED, limit),
            _claim(ClaimStatus.PENDING, LATER),
            # Claimed by an administrator: the agent has yet to fetch its key.
            attrs.evolve(
                _claim(ClaimStatus.CLAIMED, limit - timedelta(days=30)), sealed_key=b"sealed"
            ),
        ]
        for claim in (*gone, *kept):
            state.add_claim(claim)

        assert state.purge(NOW, POLICY) == PurgeReport(claims=3)

        for claim in gone:
            with pytest.raises(NotFoundError):
                state.get_claim(claim.agent_id)
        for claim in kept:
            assert state.get_claim(claim.agent_id) == claim

    def test_outbox_events_go_once_handled(self, state: StateStore) -> None:
        limit = NOW - POLICY.outbox
        old = limit - MICROSECOND
        sender, silent, quiet, nobody = (_user(state) for _ in range(4))
        state.add_channel(make_channel(sender.id))
        # ``silent``'s silence is still open; ``quiet``'s is closed after the fan-out.
        state.add_silence(make_silence(silent.id, starts_at=BASE_TIME, ends_at=LATER))
        closed = state.add_silence(make_silence(quiet.id, starts_at=BASE_TIME, ends_at=LATER))
        delivered, dead, pending, recent = (_event(sender, at) for at in (old, old, old, limit))
        muted, unmuted = _event(silent, old), _event(quiet, old)
        unsent = _event(nobody, old)  # dispatched to no channel
        state.add_outbox_events([delivered, dead, pending, recent, muted, unmuted, unsent])
        assert state.fan_out(NOW) == 7
        state.end_silence(closed.id, NOW)
        assert state.close_silence(closed.id, NOW, [])
        _finish(state, delivered, DeliveryState.DELIVERED)
        _finish(state, dead, DeliveryState.DEAD)
        _finish(state, recent, DeliveryState.DELIVERED)
        fresh = _event(nobody, old)  # not handed to channels yet
        state.add_outbox_events([fresh])

        report = state.purge(NOW, POLICY)

        assert report == PurgeReport(outbox_events=4, deliveries=2)
        assert _outbox_left(state) == {pending.id, recent.id, muted.id, fresh.id}
        for event in (delivered, dead):
            assert state.list_deliveries(event_id=event.id) == []
        [waiting] = state.list_deliveries(event_id=pending.id)
        assert waiting.state is DeliveryState.PENDING
        assert len(state.list_deliveries(event_id=recent.id)) == 1

        # Once its last delivery has finished, the event goes too.
        _finish(state, pending, DeliveryState.DEAD)
        assert state.purge(NOW, POLICY) == PurgeReport(outbox_events=1, deliveries=1)
        assert _outbox_left(state) == {recent.id, muted.id, fresh.id}

    def test_skipped_deliveries_go_with_their_old_events(self, state: StateStore) -> None:
        owner = _user(state)
        state.add_channel(make_channel(owner.id, enabled=False, disabled_reason="gone"))
        held = _event(owner, NOW - POLICY.outbox - MICROSECOND)
        state.add_outbox_events([held])
        assert state.fan_out(NOW) == 1
        assert state.purge(NOW, POLICY) == PurgeReport(outbox_events=1, deliveries=1)
        assert state.list_deliveries(event_id=held.id) == []

    def test_status_changes_go_after_the_history_period(self, state: StateStore) -> None:
        limit = NOW - POLICY.history
        machine = state.add_machine(make_machine(status=MachineStatus.ONLINE))
        gone = make_status_change(machine.id, at=limit - MICROSECOND)
        kept = make_status_change(machine.id, MachineStatus.OFFLINE, MachineStatus.ONLINE, at=limit)
        for change in (gone, kept):
            assert state.record_status_changes([StatusTransition(change)]) == [change]

        assert state.purge(NOW, POLICY) == PurgeReport(status_changes=1)

        assert state.list_status_changes(machine.id) == [kept]

    def test_alert_events_go_after_the_history_period_unless_still_open(
        self, state: StateStore
    ) -> None:
        limit = NOW - POLICY.history
        owner = _user(state)
        machine = state.add_machine(make_machine(owner_id=owner.id))
        rule = state.add_alert_rule(make_alert_rule(owner.id))
        still, over, acked = (SeriesKey(machine.id, rule.metric, {"cpu": str(n)}) for n in range(3))
        spell = limit - timedelta(days=10)  # when ``still`` and ``acked`` started firing
        _firing_since(state, rule, still, spell, AlertState.FIRING)
        _firing_since(state, rule, acked, spell, AlertState.FIRING)
        _firing_since(state, rule, over, spell, AlertState.RESOLVED)
        resolved = AlertState.RESOLVED
        gone = [
            _alert_event(state, rule, still, spell - timedelta(days=5)),  # an earlier spell
            _alert_event(state, rule, still, spell - timedelta(days=2), state=resolved),
            _alert_event(state, rule, over, spell - timedelta(hours=1)),
            _alert_event(state, rule, over, spell, state=resolved),
            _alert_event(state, rule, acked, spell, acknowledged_at=spell, acknowledged_by="x"),
        ]
        open_event = _alert_event(state, rule, still, spell)
        recent = _alert_event(state, rule, over, limit, state=resolved)

        assert state.purge(NOW, POLICY) == PurgeReport(alert_events=len(gone))

        left = state.list_alert_events(limit=1000)
        assert {event.id for event in left} == {open_event.id, recent.id}
        # Acknowledged, it has been looked at: it goes with the rest of its age.
        state.acknowledge_alert_event(open_event.id, owner.id, NOW)
        assert state.purge(NOW, POLICY) == PurgeReport(alert_events=1)
        assert [event.id for event in state.list_alert_events(limit=1000)] == [recent.id]

    def test_purge_works_through_a_backlog_in_batches(self, state: StateStore) -> None:
        user = _user(state)
        expired = [
            state.add_session(_session(user, expires_at=BASE_TIME + timedelta(minutes=n)))
            for n in range(7)
        ]
        active = state.add_session(_session(user))
        failures = f"someone-{new_id()[:8]}"
        for n in range(5):
            state.add_login_failure(failures, BASE_TIME + timedelta(seconds=n), None)
        policy = PurgePolicy(batch_size=2)

        assert state.purge(NOW, policy) == PurgeReport(sessions=7, login_failures=5)

        assert [s.id for s in state.list_sessions(user.id)] == [active.id]
        assert all(state.find_session(s.token_hash) is None for s in expired)
        assert state.count_login_failures(failures, BASE_TIME) == 0
        assert state.purge(NOW, policy) == PurgeReport()

    def test_concurrent_purges_delete_each_record_once(self, state: StateStore) -> None:
        user = _user(state)
        count = 3 * CALLERS
        for n in range(count):
            state.add_session(_session(user, expires_at=BASE_TIME + timedelta(seconds=n)))
        policy = PurgePolicy(batch_size=3)

        reports = race(lambda _: state.purge(NOW, policy))

        assert sum(report.sessions for report in reports) == count
        assert sum(report.total for report in reports) == count
        assert state.list_sessions(user.id) == []
