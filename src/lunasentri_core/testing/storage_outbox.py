"""The notification part of the :class:`StateStore` contract: channels, outbox, silences.

It pins down: channel names are unique per owner; channels, silences,
deliveries and outbox events are scoped by their ``owner_id`` (an unowned
event is seen only unscoped). Outbox events are listed newest first. ``fan_out``
handles each new event once, oldest first: one matching the owner's silence
active when it occurred is marked silenced, any other is dispatched with one
pending delivery per enabled channel of its owner (of every administrator when
it has none), due at once, and one skipped delivery per disabled channel, saying
why. A claimed delivery is not claimed again until its lease runs out or it is
finished; disabling a channel with a delivery's outcome skips its other pending
deliveries; only a dead or skipped delivery can be retried, and a channel's
skipped deliveries are resent together once it is enabled again; a
silence is closed once, its re-notifications written with the close. Of
concurrent callers, each event is fanned out and each delivery claimed once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs
import pytest

from lunasentri_core.errors import ConflictError, NotFoundError
from lunasentri_core.model import (
    Channel,
    Delivery,
    DeliveryState,
    EventState,
    OutboxEvent,
    Role,
    User,
)
from lunasentri_core.storage.protocols import StateStore
from lunasentri_core.testing.builders import (
    BASE_TIME,
    make_alert_rule,
    make_channel,
    make_machine,
    make_outbox_event,
    make_silence,
    make_user,
)
from lunasentri_core.testing.contract import Contract
from lunasentri_core.testing.races import CALLERS, race

NOW = BASE_TIME + timedelta(hours=2, microseconds=81)
LEASE = timedelta(minutes=1)
MICROSECOND = timedelta(microseconds=1)


def _user(state: StateStore, role: Role = Role.USER) -> User:
    return state.add_user(make_user(role=role), "hash-of-a-password")


def _events(state: StateStore, owner: User | None, count: int) -> list[OutboxEvent]:
    """``count`` new events, stored oldest first."""
    owner_id = None if owner is None else owner.id
    events = [
        make_outbox_event(owner_id, occurred_at=BASE_TIME + timedelta(seconds=n))
        for n in range(count)
    ]
    state.add_outbox_events(events)
    return events


def _queued(state: StateStore) -> tuple[User, Channel, Delivery]:
    """A user with one channel and one pending delivery to it, due at :data:`NOW`."""
    owner = _user(state)
    channel = state.add_channel(make_channel(owner.id))
    [event] = _events(state, owner, 1)
    assert state.fan_out(NOW) == 1
    [delivery] = state.list_deliveries(event_id=event.id)
    return owner, channel, delivery


def _claimed(state: StateStore, now: datetime, limit: int = 50) -> list[Delivery]:
    return [delivery for delivery, _, _ in state.claim_deliveries(now, LEASE, limit)]


def _by_id(events: list[OutboxEvent]) -> dict[str, OutboxEvent]:
    return {event.id: event for event in events}


class OutboxStateContract(Contract):
    """Channel, outbox, delivery and silence tests, run as part of :class:`StateStoreContract`.

    They use its ``state`` fixture.
    """

    __test__ = False

    # ------------------------------------------------------------ channels

    def test_channels(self, state: StateStore) -> None:
        owner, other = _user(state), _user(state)
        channel = make_channel(owner.id, config={"url": "https://x.test", "retries": [1, 2]})
        assert state.add_channel(channel) == channel
        assert state.get_channel(channel.id) == channel
        assert state.get_channel(channel.id, owner.id) == channel
        assert state.list_channels(owner.id) == [channel]
        changed = attrs.evolve(
            channel,
            owner_id=other.id,
            name="paused pager",
            type="telegram",
            config={"chat_id": 42},
            enabled=False,
            disabled_reason="paused by its owner",
            created_at=NOW,
        )
        stored = state.update_channel(changed)
        assert stored == attrs.evolve(changed, owner_id=owner.id, created_at=channel.created_at)
        assert state.get_channel(channel.id) == stored
        state.delete_channel(channel.id)
        with pytest.raises(NotFoundError):
            state.get_channel(channel.id)
        with pytest.raises(NotFoundError):
            state.delete_channel(channel.id)
        with pytest.raises(NotFoundError):
            state.update_channel(channel)
        with pytest.raises(NotFoundError):
            state.add_channel(make_channel("no-such-user"))

    def test_channel_names_are_unique_per_owner(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        ops = state.add_channel(make_channel(alice.id, name="ops"))
        state.add_channel(make_channel(bob.id, name="ops"))
        with pytest.raises(ConflictError):
            state.add_channel(make_channel(alice.id, name="ops"))
        pager = state.add_channel(make_channel(alice.id, name="pager"))
        with pytest.raises(ConflictError):
            state.update_channel(attrs.evolve(pager, name="ops"))
        assert state.get_channel(pager.id) == pager
        assert sorted(c.id for c in state.list_channels(alice.id)) == sorted([ops.id, pager.id])

    def test_channels_are_scoped_to_their_owner(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        mine = state.add_channel(make_channel(alice.id))
        theirs = state.add_channel(make_channel(bob.id))
        with pytest.raises(NotFoundError):
            state.get_channel(mine.id, bob.id)
        with pytest.raises(NotFoundError):
            state.delete_channel(mine.id, bob.id)
        assert state.get_channel(mine.id) == mine
        assert state.list_channels(bob.id) == [theirs]
        assert {mine.id, theirs.id} <= {c.id for c in state.list_channels()}
        state.delete_channel(mine.id, alice.id)
        assert state.list_channels(alice.id) == []

    # ------------------------------------------------------------ the outbox

    def test_outbox_events_newest_first(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        at = [BASE_TIME + timedelta(seconds=n, microseconds=n) for n in range(4)]
        first = make_outbox_event(alice.id, occurred_at=at[0])
        unowned = make_outbox_event(None, occurred_at=at[1])
        theirs = make_outbox_event(bob.id, machine_id="m-1", rule_id="r-1", occurred_at=at[2])
        last = make_outbox_event(alice.id, occurred_at=at[3])
        state.add_outbox_events([first, unowned, theirs])
        state.add_outbox_events([last])
        state.add_outbox_events([])
        assert state.list_outbox_events(alice.id) == [last, first]
        assert state.list_outbox_events(bob.id) == [theirs]
        assert state.list_outbox_events() == [last, theirs, unowned, first]
        assert state.list_outbox_events(ids=[first.id, unowned.id]) == [unowned, first]
        assert state.list_outbox_events(bob.id, ids=[first.id]) == []
        assert state.list_outbox_events(limit=1) == [last]
        assert len(state.list_outbox_events(state=EventState.NEW)) == 4
        assert state.list_outbox_events(state=EventState.DISPATCHED) == []

    def test_fan_out_queues_a_delivery_per_enabled_channel(self, state: StateStore) -> None:
        owner, lonely, other = _user(state), _user(state), _user(state)
        channels = [state.add_channel(make_channel(owner.id)) for _ in range(2)]
        state.add_channel(make_channel(owner.id, enabled=False, disabled_reason="paused"))
        state.add_channel(make_channel(other.id))
        [event], [unheard] = _events(state, owner, 1), _events(state, lonely, 1)
        assert state.fan_out(NOW) == 2
        assert state.fan_out(NOW) == 0, "an event is handed out once"
        assert state.list_outbox_events(ids=[event.id]) == [
            attrs.evolve(event, state=EventState.DISPATCHED)
        ]
        queued = state.list_deliveries(event_id=event.id, state=DeliveryState.PENDING)
        assert sorted(d.channel_id for d in queued) == sorted(c.id for c in channels)
        for delivery in queued:
            expected = Delivery(delivery.id, event.id, delivery.channel_id, owner.id)
            assert delivery == attrs.evolve(expected, next_attempt_at=NOW, created_at=NOW)
        assert state.list_outbox_events(ids=[unheard.id])[0].state is EventState.DISPATCHED
        assert state.list_deliveries(event_id=unheard.id) == []

    def test_fan_out_takes_the_oldest_events_first(self, state: StateStore) -> None:
        owner = _user(state)
        oldest, middle, newest = _events(state, owner, 3)
        assert state.fan_out(NOW, limit=2) == 2
        found = _by_id(state.list_outbox_events(owner.id))
        assert [found[e.id].state for e in (oldest, middle, newest)] == [
            EventState.DISPATCHED,
            EventState.DISPATCHED,
            EventState.NEW,
        ]
        assert state.fan_out(NOW, limit=2) == 1
        assert state.fan_out(NOW, limit=2) == 0

    def test_fan_out_silences_matching_events(self, state: StateStore) -> None:
        owner, other = _user(state), _user(state)
        prod = state.add_machine(make_machine(owner_id=owner.id, labels={"env": "prod"}))
        test = state.add_machine(make_machine(owner_id=owner.id, labels={"env": "test"}))
        state.add_channel(make_channel(owner.id))
        silence = state.add_silence(make_silence(owner.id, labels={"env": "prod"}))
        state.add_silence(make_silence(other.id))  # another owner's silence mutes nothing here
        during = silence.starts_at + timedelta(minutes=10)
        muted = make_outbox_event(owner.id, machine_id=prod.id, occurred_at=during)
        elsewhere = make_outbox_event(owner.id, machine_id=test.id, occurred_at=during)
        after = make_outbox_event(owner.id, machine_id=prod.id, occurred_at=silence.ends_at)
        state.add_outbox_events([muted, elsewhere, after])
        assert state.fan_out(NOW) == 3
        found = _by_id(state.list_outbox_events(owner.id))
        assert found[muted.id] == attrs.evolve(
            muted, state=EventState.SILENCED, silence_id=silence.id
        )
        assert state.list_deliveries(event_id=muted.id) == []
        for sent in (elsewhere, after):
            assert found[sent.id] == attrs.evolve(sent, state=EventState.DISPATCHED)
            assert len(state.list_deliveries(event_id=sent.id)) == 1

    def test_unowned_events_go_to_every_admins_channels(self, state: StateStore) -> None:
        admin, deputy, user = _user(state, Role.ADMIN), _user(state, Role.ADMIN), _user(state)
        mine, theirs = (state.add_channel(make_channel(a.id)) for a in (admin, deputy))
        state.add_channel(make_channel(deputy.id, enabled=False))
        state.add_channel(make_channel(user.id))
        [event] = _events(state, None, 1)
        assert state.fan_out(NOW) == 1
        queued = state.list_deliveries(event_id=event.id, state=DeliveryState.PENDING)
        assert {(d.channel_id, d.owner_id) for d in queued} == {
            (mine.id, admin.id),
            (theirs.id, deputy.id),
        }
        assert [d.channel_id for d in state.list_deliveries(admin.id)] == [mine.id]
        assert len(state.list_deliveries(deputy.id, state=DeliveryState.SKIPPED)) == 1
        assert state.list_deliveries(user.id) == []

    # ------------------------------------------------------------ deliveries

    def test_list_deliveries_filters(self, state: StateStore) -> None:
        owner, channel, delivery = _queued(state)
        other = state.add_channel(make_channel(owner.id))
        assert state.list_deliveries(owner.id) == [delivery]
        assert state.list_deliveries(channel_id=channel.id) == [delivery]
        assert state.list_deliveries(channel_id=other.id) == []
        assert state.list_deliveries(state=DeliveryState.PENDING) == [delivery]
        assert state.list_deliveries(state=DeliveryState.DEAD) == []
        assert state.list_deliveries(_user(state).id) == []
        assert state.list_deliveries(limit=0) == []

    def test_a_claimed_delivery_is_leased(self, state: StateStore) -> None:
        owner, channel, delivery = _queued(state)
        [(claimed, event, to)] = state.claim_deliveries(NOW, LEASE)
        assert (claimed, to) == (delivery, channel)
        assert state.list_outbox_events(owner.id) == [event]
        assert event.state is EventState.DISPATCHED
        assert _claimed(state, NOW + LEASE - MICROSECOND) == [], "taken again within its lease"
        assert _claimed(state, NOW + LEASE) == [delivery], "not taken again after its lease"

    def test_a_delivery_is_claimed_when_due(self, state: StateStore) -> None:
        _, _, delivery = _queued(state)
        assert _claimed(state, NOW - MICROSECOND) == []
        assert _claimed(state, NOW) == [delivery]
        retry_at = NOW + LEASE / 2
        waiting = attrs.evolve(delivery, attempts=1, next_attempt_at=retry_at, last_error="busy")
        state.finish_delivery(waiting)  # releases the lease, too
        assert state.list_deliveries(event_id=delivery.event_id) == [waiting]
        assert _claimed(state, retry_at - MICROSECOND) == []
        assert _claimed(state, retry_at) == [waiting]

    def test_a_finished_delivery_is_not_claimed_again(self, state: StateStore) -> None:
        _, _, delivery = _queued(state)
        assert _claimed(state, NOW) == [delivery]
        done = attrs.evolve(
            delivery, state=DeliveryState.DELIVERED, attempts=1, delivered_at=NOW + MICROSECOND
        )
        state.finish_delivery(done)
        assert state.list_deliveries(event_id=delivery.event_id) == [done]
        assert _claimed(state, NOW + timedelta(days=1)) == []

    def test_finish_delivery_can_disable_the_channel(self, state: StateStore) -> None:
        owner, channel, delivery = _queued(state)
        kept = state.add_channel(make_channel(owner.id))
        dead = attrs.evolve(delivery, state=DeliveryState.DEAD, attempts=1, last_error="410")
        state.finish_delivery(dead, disable_channel="the receiver is gone")
        assert state.list_deliveries(event_id=delivery.event_id) == [dead]
        assert state.get_channel(channel.id) == attrs.evolve(
            channel, enabled=False, disabled_reason="the receiver is gone"
        )
        assert state.get_channel(kept.id) == kept
        [event] = _events(state, owner, 1)
        state.fan_out(NOW)
        found = state.list_deliveries(event_id=event.id, state=DeliveryState.PENDING)
        assert [d.channel_id for d in found] == [kept.id]

    def test_a_disabled_channel_gets_a_skipped_delivery(self, state: StateStore) -> None:
        owner = _user(state)
        paused = state.add_channel(make_channel(owner.id, enabled=False, disabled_reason="410"))
        muted = state.add_channel(make_channel(owner.id, enabled=False))
        [event] = _events(state, owner, 1)
        assert state.fan_out(NOW) == 1
        found = {d.channel_id: d for d in state.list_deliveries(event_id=event.id)}
        assert set(found) == {paused.id, muted.id}
        for channel, why in ((paused, "channel disabled: 410"), (muted, "channel disabled")):
            expected = Delivery(found[channel.id].id, event.id, channel.id, owner.id)
            assert found[channel.id] == attrs.evolve(
                expected,
                state=DeliveryState.SKIPPED,
                last_error=why,
                next_attempt_at=NOW,
                created_at=NOW,
            )
        assert _claimed(state, NOW + timedelta(days=1)) == [], "a skipped one is not sent"

    def test_disabling_a_channel_skips_its_other_pending_deliveries(
        self, state: StateStore
    ) -> None:
        owner, channel, first = _queued(state)
        other = state.add_channel(make_channel(owner.id))
        _events(state, owner, 2)
        assert state.fan_out(NOW) == 2
        assert first in _claimed(state, NOW)  # the others are taken too: leases don't matter
        dead = attrs.evolve(first, state=DeliveryState.DEAD, attempts=1, last_error="410")
        state.finish_delivery(dead, disable_channel="gone")
        assert state.list_deliveries(channel_id=channel.id, state=DeliveryState.PENDING) == []
        held = state.list_deliveries(channel_id=channel.id, state=DeliveryState.SKIPPED)
        assert len(held) == 2
        assert {(d.attempts, d.last_error) for d in held} == {(0, "channel disabled: gone")}
        assert len(state.list_deliveries(channel_id=other.id, state=DeliveryState.PENDING)) == 2
        assert state.list_deliveries(channel_id=channel.id, state=DeliveryState.DEAD) == [dead]

    def test_resend_skipped_queues_an_enabled_channels_skipped_deliveries(
        self, state: StateStore
    ) -> None:
        owner = _user(state)
        channel = state.add_channel(make_channel(owner.id, enabled=False, disabled_reason="x"))
        elsewhere = state.add_channel(make_channel(owner.id, enabled=False))
        _events(state, owner, 2)
        state.fan_out(NOW)
        later = NOW + timedelta(hours=1)
        with pytest.raises(ConflictError):
            state.resend_skipped(channel.id, later, owner.id)  # still disabled
        enabled = state.update_channel(attrs.evolve(channel, enabled=True, disabled_reason=None))
        with pytest.raises(NotFoundError):
            state.resend_skipped(channel.id, later, _user(state).id)
        with pytest.raises(NotFoundError):
            state.resend_skipped("no-such-channel", later)
        assert state.resend_skipped(enabled.id, later, owner.id) == 2
        queued = state.list_deliveries(channel_id=channel.id)
        assert {(d.state, d.attempts, d.next_attempt_at) for d in queued} == {
            (DeliveryState.PENDING, 0, later)
        }
        assert sorted(d.id for d in _claimed(state, later)) == sorted(d.id for d in queued)
        assert state.resend_skipped(channel.id, later) == 0
        assert len(state.list_deliveries(channel_id=elsewhere.id)) == 2, "only that channel's"

    def test_a_skipped_delivery_can_be_retried(self, state: StateStore) -> None:
        owner = _user(state)
        state.add_channel(make_channel(owner.id, enabled=False))
        [event] = _events(state, owner, 1)
        state.fan_out(NOW)
        [held] = state.list_deliveries(event_id=event.id)
        retried = state.retry_delivery(held.id, NOW, owner.id)
        assert (retried.state, retried.attempts) == (DeliveryState.PENDING, 0)

    def test_only_a_dead_delivery_is_retried(self, state: StateStore) -> None:
        owner, _, delivery = _queued(state)
        with pytest.raises(ConflictError):
            state.retry_delivery(delivery.id, NOW)
        dead = attrs.evolve(delivery, state=DeliveryState.DEAD, attempts=5, last_error="gave up")
        state.finish_delivery(dead)
        later = NOW + timedelta(hours=1)
        with pytest.raises(NotFoundError):
            state.retry_delivery(delivery.id, later, _user(state).id)
        with pytest.raises(NotFoundError):
            state.retry_delivery("no-such-delivery", later)
        retried = state.retry_delivery(delivery.id, later, owner.id)
        assert (retried.id, retried.state, retried.attempts, retried.next_attempt_at) == (
            delivery.id,
            DeliveryState.PENDING,
            0,
            later,
        )
        assert state.list_deliveries(event_id=delivery.event_id) == [retried]
        assert _claimed(state, later) == [retried]
        with pytest.raises(ConflictError):
            state.retry_delivery(delivery.id, later)

    def test_concurrent_fan_outs_hand_out_each_event_once(self, state: StateStore) -> None:
        owner = _user(state)
        state.add_channel(make_channel(owner.id))
        events = _events(state, owner, 2 * CALLERS)
        handled = sum(race(lambda _: state.fan_out(NOW, limit=3)))
        while batch := state.fan_out(NOW, limit=3):
            handled += batch
        assert handled == len(events)
        queued = state.list_deliveries(owner.id, limit=10 * len(events))
        assert sorted(d.event_id for d in queued) == sorted(e.id for e in events)

    def test_concurrent_claims_take_each_delivery_once(self, state: StateStore) -> None:
        owner = _user(state)
        state.add_channel(make_channel(owner.id))
        _events(state, owner, 2 * CALLERS)
        state.fan_out(NOW)
        taken = [d.id for ds in race(lambda _: _claimed(state, NOW, limit=3)) for d in ds]
        taken += [d.id for d in _claimed(state, NOW)]
        queued = state.list_deliveries(owner.id, limit=100)
        assert sorted(taken) == sorted(d.id for d in queued)

    # ------------------------------------------------------------ silences

    def test_silences(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        machine = state.add_machine(make_machine(owner_id=alice.id))
        rule = state.add_alert_rule(make_alert_rule(alice.id))
        silence = make_silence(
            alice.id, machine_id=machine.id, labels={"env": "prod"}, rule_id=rule.id, comment="ünï"
        )
        assert state.add_silence(silence) == silence
        assert state.get_silence(silence.id) == silence
        assert state.get_silence(silence.id, alice.id) == silence
        later = state.add_silence(
            make_silence(alice.id, starts_at=silence.ends_at, ends_at=NOW, created_by=None)
        )
        theirs = state.add_silence(make_silence(bob.id))
        with pytest.raises(NotFoundError):
            state.get_silence(silence.id, bob.id)
        with pytest.raises(NotFoundError):
            state.get_silence("no-such-silence")
        with pytest.raises(NotFoundError):
            state.add_silence(make_silence("no-such-user"))
        assert {s.id for s in state.list_silences(alice.id)} == {silence.id, later.id}
        assert state.list_silences(bob.id) == [theirs]
        # The window is half-open: at its end a silence is over.
        assert state.list_silences(alice.id, active_at=silence.ends_at) == [later]
        assert state.list_silences(alice.id, active_at=silence.starts_at) == [silence]
        assert state.list_silences(alice.id, active_at=NOW) == []

    def test_end_silence(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        silence = state.add_silence(make_silence(alice.id))
        at = silence.starts_at + timedelta(minutes=10, microseconds=1)
        with pytest.raises(NotFoundError):
            state.end_silence(silence.id, at, bob.id)
        ended = state.end_silence(silence.id, at, alice.id)
        assert ended == attrs.evolve(silence, ends_at=at)
        assert state.get_silence(silence.id) == ended
        assert state.end_silence(silence.id, at + LEASE) == ended, "an earlier end stays"
        assert state.due_silences(at) == [ended]
        planned = state.add_silence(make_silence(alice.id, starts_at=NOW, ends_at=NOW + LEASE))
        cancelled = state.end_silence(planned.id, at)
        assert cancelled.ends_at == at
        assert state.list_silences(alice.id, active_at=NOW) == [], "a cancelled one never starts"
        with pytest.raises(NotFoundError):
            state.end_silence("no-such-silence", at)

    def test_a_due_silence_is_closed_once(self, state: StateStore) -> None:
        owner = _user(state)
        silence = state.add_silence(make_silence(owner.id))
        end = silence.ends_at
        assert state.due_silences(end - MICROSECOND) == []
        assert state.due_silences(end) == [silence]
        notice, late = make_outbox_event(owner.id), make_outbox_event(owner.id)
        assert state.close_silence(silence.id, end + LEASE, [notice]) is True
        assert state.close_silence(silence.id, end + 2 * LEASE, [late]) is False
        assert state.get_silence(silence.id) == attrs.evolve(silence, ended_at=end + LEASE)
        assert state.due_silences(NOW) == []
        assert state.list_outbox_events(owner.id) == [notice]

    def test_concurrent_closes_of_a_silence_have_one_winner(self, state: StateStore) -> None:
        owner = _user(state)
        silence = state.add_silence(make_silence(owner.id))
        closed = race(lambda _: state.close_silence(silence.id, NOW, [make_outbox_event(owner.id)]))
        assert sorted(closed) == [False] * (CALLERS - 1) + [True]
        assert len(state.list_outbox_events(owner.id)) == 1


__all__ = ["OutboxStateContract"]
