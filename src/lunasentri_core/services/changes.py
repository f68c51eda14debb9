"""Following what other processes sharing the storage change.

A hub keeps alert rules, machines and decrypted credentials in memory. Changes made through this hub
update that at once. Changes made through another hub on the same database
(another server process) are heard at once where the storage can tell
(:func:`~lunasentri_core.storage.listen_for_changes`: PostgreSQL's
``LISTEN``/``NOTIFY``), and are noticed anyway by polling the store's
:meth:`~lunasentri_core.storage.StateStore.config_epoch` every
``sync_interval``, the fallback should a notice be lost.

Samples another process stored are handed to :attr:`ChangeFollower.sample_listeners`
(the server's live streams); they do not fire ``lunasentri_samples_ingested``,
which the hub that stored them has fired already.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Final

import anyio
import anyio.to_thread

from lunasentri_core.samples import Sample
from lunasentri_core.storage.protocols import Change, ChangeKind, ChangeListener, listen_for_changes

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

log = logging.getLogger(__name__)

LISTEN_WAIT: Final = 0.5
"""Seconds one wait for notices lasts: how long stopping the hub may wait for it."""

SampleListener = Callable[[str, Sequence[Sample], int], None]
"""``(machine_id, samples, missed)``: ``missed`` older samples were left out."""


class ChangeFollower:
    def __init__(self, hub: Sentri, *, interval: timedelta) -> None:
        self._hub = hub
        self.interval = interval
        self._epoch: int | None = None
        self._checking = anyio.Lock()
        self.sample_listeners: list[SampleListener] = []
        """Called on the event loop with a machine id and samples another process stored."""
        self.listening = False
        """Whether changes are heard as they happen (else only polled)."""
        self._listener: ChangeListener | None = None

    async def check(self) -> bool:
        """Reload rules and machines if the store changed since the last check."""
        async with self._checking:
            epoch = await self._hub.run_sync(self._hub.storage.state.config_epoch)
            previous, self._epoch = self._epoch, epoch
            if epoch == previous:
                return False
            # API keys ended elsewhere (revoked, expired, deleted with their machine
            # or owner) move the epoch too: keys remembered for them go. So do
            # sessions ended and users' roles changed: sessions remembered go. On
            # the first check, what was remembered before it goes as well.
            state = self._hub.storage.state
            for changed in ("keys_changed_elsewhere", "sessions_changed_elsewhere"):
                forget = getattr(state, changed, None)
                if forget is not None:
                    forget()
            if previous is None:
                return False
            await self._hub.reload_machines()
            self._hub.alerts.invalidate()
            self._hub.credentials.forget()
            log.debug("rules or machines changed in storage (epoch %d): reloading", epoch)
            return True

    async def watch(self, machine_id: str) -> None:
        """Have samples of ``machine_id`` other processes store reach
        :attr:`sample_listeners` from now on (until :meth:`unwatch`)."""
        if self._listener is None:
            return
        try:
            await self._hub.run_sync(self._listener.watch, machine_id)
        except Exception as error:  # this process's own samples still reach them
            log.warning("cannot watch %s's samples in other processes: %s", machine_id, error)

    async def unwatch(self, machine_id: str) -> None:
        if self._listener is None:
            return
        try:
            await self._hub.run_sync(self._listener.unwatch, machine_id)
        except Exception as error:  # the lock went with the connection
            log.warning("cannot stop watching %s's samples: %s", machine_id, error)

    async def run(self) -> None:
        self._listener = listener = listen_for_changes(self._hub.storage)
        async with anyio.create_task_group() as tasks:
            if listener is not None:
                tasks.start_soon(self._listen, listener)
            await self._poll()

    async def _poll(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("checking storage for changes failed; retrying")
            await anyio.sleep(self.interval.total_seconds())

    async def _listen(self, listener: ChangeListener) -> None:
        # One thread of its own: the wait blocks it for up to LISTEN_WAIT each time.
        limiter = anyio.CapacityLimiter(1)
        try:
            while True:
                changes = await anyio.to_thread.run_sync(
                    listener.receive, LISTEN_WAIT, limiter=limiter
                )
                self.listening = getattr(listener, "connected", True)
                await self._apply(changes)
        finally:
            self.listening = False
            self._listener = None
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(listener.close, limiter=limiter)

    async def _apply(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if change.kind is ChangeKind.SAMPLES and change.machine_id is not None:
                for deliver in self.sample_listeners:
                    deliver(change.machine_id, change.samples, change.missed)
        if any(change.kind is ChangeKind.CONFIG for change in changes):
            try:
                await self.check()
            except Exception:
                log.exception("reloading after a change notice failed; the poll will retry")
