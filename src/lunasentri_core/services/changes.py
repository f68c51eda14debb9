"""Following what other processes sharing the storage change.

A hub keeps alert rules, machines and decrypted credentials in memory. Changes made through this hub
update that at once; changes made through another hub on the same database
(another server process) are noticed by polling the store's
:meth:`~lunasentri_core.storage.StateStore.config_epoch` every
``sync_interval``, so they take effect here within that time.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

log = logging.getLogger(__name__)


class ChangeFollower:
    def __init__(self, hub: Sentri, *, interval: timedelta) -> None:
        self._hub = hub
        self.interval = interval
        self._epoch: int | None = None

    async def check(self) -> bool:
        """Reload rules and machines if the store changed since the last check."""
        epoch = await self._hub.run_sync(self._hub.storage.state.config_epoch)
        previous, self._epoch = self._epoch, epoch
        if previous is None or epoch == previous:
            return False
        await self._hub.reload_machines()
        self._hub.alerts.invalidate()
        self._hub.credentials.forget()
        log.debug("rules or machines changed in storage (epoch %d): reloading", epoch)
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("checking storage for changes failed; retrying")
            await anyio.sleep(self.interval.total_seconds())
