"""The heartbeat: machines silent past their threshold go offline, and back online.

Every ``heartbeat_interval`` a sweep asks storage which machines are due a
change and records each change with its notice in one transaction, applied only
while the machine still has the status the sweep saw. A change is therefore
recorded, and notified, exactly once, also across restarts and processes: a
machine already stored as offline is not due again. A machine that reports is
brought online right after its samples are stored, without waiting for a sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import attrs

from lunasentri_core.model import Machine, MachineStatus, StatusChange, new_id
from lunasentri_core.services.jobs import JOB_HEARTBEAT
from lunasentri_core.services.notices import status_event
from lunasentri_core.storage.protocols import StateStore, StatusTransition

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

log = logging.getLogger(__name__)

_ATTEMPTS = 3
"""Rounds of a sweep when another writer changes the same machines meanwhile."""


AGENT_BACKOFF_MAX = timedelta(seconds=30)
"""The push agent's default ``backoff_max``, the default ``restart_grace``: after a
restart, an agent that kept running may wait this long before its next send (it
usually returns sooner: it probes)."""


class Heartbeat:
    def __init__(
        self,
        hub: Sentri,
        *,
        interval: timedelta,
        threshold: timedelta,
        restart_grace: timedelta = AGENT_BACKOFF_MAX,
    ) -> None:
        self._hub = hub
        self.interval = interval
        self.threshold = threshold
        self.restart_grace = restart_grace
        self.listeners: list[Callable[[Sequence[StatusChange]], object]] = []
        """Called with the changes each sweep recorded (from the event loop)."""
        self._online: set[str] = set()
        self._reported: set[str] = set()
        self._woken = anyio.Event()
        self._sweeping = anyio.Lock()
        self._listening_since: datetime | None = None
        """When :meth:`run` started: no machine could report to this hub before."""
        self.first_round = anyio.Event()
        """Set once :meth:`run` has ended its first round (the sweep at start, where
        this process runs sweeps): what happens after it is not raced by that sweep."""

    async def sweep(self, machine_ids: Sequence[str] | None = None) -> list[StatusChange]:
        """Record every due status change now (of ``machine_ids`` only, when given)."""
        state = self._hub.storage.state
        async with self._sweeping:  # one sweep at a time per hub
            moved = await self._hub.run_sync(self._sweep_sync, state, machine_ids)
        changes = [change for change, _ in moved]
        if changes:
            self._notify(changes)
        plugins = self._hub.plugins
        if plugins.listens("lunasentri_machine_status_changed"):
            for change, machine in moved:
                now = attrs.evolve(machine, status=change.status)
                await plugins.machine_status_changed(
                    self._hub, now, change.previous, change.status, change.at
                )
        return changes

    def _sweep_sync(
        self, state: StateStore, machine_ids: Sequence[str] | None
    ) -> list[tuple[StatusChange, Machine]]:
        """The changes recorded, each with its machine as it was before."""
        recorded: list[tuple[StatusChange, Machine]] = []
        for _ in range(_ATTEMPTS):
            now = self._hub.clock()  # a retry decides on the present, not the past
            due = [d for d in state.find_status_changes(now, self.threshold, machine_ids)
                   if not self._in_grace(d, now)]  # fmt: skip
            if not due:
                break
            transitions = [self._transition(state, m, status, now) for m, status in due]
            applied = state.record_status_changes(transitions)
            machines = {m.id: m for m, _ in due}
            recorded.extend((c, machines[c.machine_id]) for c in applied)
            # A machine whose change was lost moved meanwhile (another sweep, another
            # process): look at it again, so what it is due now is not left for later.
            done = {change.machine_id for change in applied}
            machine_ids = [m.id for m, _ in due if m.id not in done]
            if not machine_ids:
                break
        return recorded

    def _in_grace(self, due: tuple[Machine, MachineStatus], now: datetime) -> bool:
        """Whether a machine is silent only because this hub was not listening.

        After a server restart (or a longer outage) every machine's last report
        predates the start: it goes offline only once it has been silent for
        its threshold since, plus the longest an agent backs off between sends,
        rather than all at once, to come back seconds later.
        """
        machine, status = due
        since = self._listening_since
        if status is not MachineStatus.OFFLINE or since is None:
            return False
        if machine.last_seen is not None and machine.last_seen >= since:
            return False  # it reported to this hub: its own silence counts
        threshold = machine.offline_after or self.threshold
        return now - since < threshold + self.restart_grace

    @staticmethod
    def _transition(
        state: StateStore, machine: Machine, status: MachineStatus, now: datetime
    ) -> StatusTransition:
        change = StatusChange(
            id=new_id(),
            machine_id=machine.id,
            previous=machine.status,
            status=status,
            at=now,
            last_seen=machine.last_seen,
        )
        offline_since = None
        if machine.status is MachineStatus.OFFLINE:
            last = state.list_status_changes(machine.id, limit=1)
            offline_since = last[0].at if last else None
        return StatusTransition(change, status_event(machine, change, offline_since=offline_since))

    def _notify(self, changes: Sequence[StatusChange]) -> None:
        for change in changes:
            if change.status is MachineStatus.ONLINE:
                self._online.add(change.machine_id)
            else:
                self._online.discard(change.machine_id)
        for listener in self.listeners:
            try:
                listener(changes)
            except Exception:
                log.exception("heartbeat listener failed")

    def seen(self, machine_ids: Iterable[str]) -> None:
        """Note machines that just reported; those not known online are swept soon."""
        new = {m for m in machine_ids if m not in self._online}
        if new:
            self._reported |= new
            self._woken.set()

    async def run(self) -> None:
        """Sweep now and every interval until cancelled, and machines as they report.

        A failed sweep is logged and tried again at the next occasion.
        """
        period = self.interval.total_seconds()
        next_sweep = anyio.current_time()
        self._listening_since = self._hub.clock()
        while True:
            with anyio.move_on_after(max(0.0, next_sweep - anyio.current_time())):
                await self._woken.wait()
            self._woken = anyio.Event()
            reported, self._reported = sorted(self._reported), set()
            full = anyio.current_time() >= next_sweep
            if full:
                next_sweep = anyio.current_time() + period
                if not await self._runs_sweeps():
                    full = False  # another process sweeps: only bring reporters online
            if full or reported:
                await self._sweep_logged(None if full else reported)
            self.first_round.set()

    async def _runs_sweeps(self) -> bool:
        """Whether this process runs the full sweep (one process of those sharing storage)."""
        try:
            return await self._hub.singleton(JOB_HEARTBEAT)
        except Exception:
            log.exception("heartbeat sweep failed")
            return False

    async def _sweep_logged(self, machine_ids: Sequence[str] | None) -> None:
        try:
            changes = await self.sweep(machine_ids)
        except Exception:
            log.exception("heartbeat sweep failed")
            return
        for change in changes:
            log.info(
                "machine %s is %s (was %s)",
                change.machine_id,
                change.status.value,
                change.previous.value,
            )
