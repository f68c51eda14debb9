"""The running agent: three loops sharing a spool.

* collect: every ``interval``, run the collectors and append the sample to the spool;
* send: drain the spool oldest first in batches, backing off while the server is
  unreachable (collection goes on meanwhile: the spool absorbs the gap);
* config: fetch the central configuration at start and every ``config_poll_interval``.

Without an API key, the send loop first enrols by claim (:mod:`.claim`).
A stop request (SIGINT/SIGTERM) lets the send in flight finish; a second one
cancels it. Nothing is lost either way: samples leave the spool only once the
server acknowledged them.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import socket
from collections.abc import Callable, Mapping
from datetime import datetime

import anyio
import attrs
import httpx

from lunasentri_core.agent.backoff import Backoff
from lunasentri_core.agent.central import CentralConfig, InvalidCentralConfig, parse_central_config
from lunasentri_core.agent.claim import Announce, Enrolment
from lunasentri_core.agent.collectors import load_collectors
from lunasentri_core.agent.identity import Identity
from lunasentri_core.agent.settings import AgentSettings
from lunasentri_core.agent.spool import Spool, SpooledSample
from lunasentri_core.agent.transport import (
    Outcome,
    SendResult,
    ServerClient,
    ServerUnreachable,
    ingest_body,
)
from lunasentri_core.codec import encode
from lunasentri_core.components import Collector
from lunasentri_core.config import Settings
from lunasentri_core.errors import LunaSentriError
from lunasentri_core.model import Target, utcnow
from lunasentri_core.services.collection import CollectionError, collect

log = logging.getLogger(__name__)

UNSET_VERSION = "0"
"""The version a server reports when it stores no configuration for the machine."""

CollectorLoader = Callable[[Settings, tuple[str, ...]], Mapping[str, Collector]]


@attrs.define
class AgentStats:
    collected: int = 0
    delivered: int = 0
    failed_collections: int = 0
    send_failures: int = 0
    lost: int = 0
    """Samples that could not be spooled (a full or failing disk)."""
    last_error: str | None = None


@attrs.frozen
class OnceResult:
    delivered: int
    remaining: int
    dead_lettered: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None and self.remaining == 0 and self.dead_lettered == 0


class Agent:
    def __init__(
        self,
        settings: Settings,
        *,
        spool: Spool,
        identity: Identity,
        http: httpx.AsyncClient,
        version: str,
        api_key: str | None,
        announce: Announce,
        load: CollectorLoader = load_collectors,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.options: AgentSettings = settings.agent
        self.spool = spool
        self.identity = identity
        self.client = ServerClient(http)
        self.version = version
        self.api_key = api_key
        self.announce = announce
        self.stats = AgentStats()
        self.interval = self.options.interval.total_seconds()
        self.collector_names = tuple(self.options.collectors)
        self.target = Target(identity.agent_id(), labels=self.options.labels)
        self.central: CentralConfig | None = None
        self._load = load
        self._clock = clock
        self._collectors: Mapping[str, Collector] = load(settings, self.collector_names)
        self._batch_limit = self.options.batch_max_samples
        self._failing: set[str] = set()
        self._spool_failing = False
        self._backoff = Backoff(cap=self.options.backoff_max.total_seconds())
        self._stop = anyio.Event()
        self._samples_waiting = anyio.Event()
        self._schedule_changed = anyio.Event()
        self._key_ready = anyio.Event()
        if api_key:
            self._key_ready.set()

    # ------------------------------------------------------------ control

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Finish what is in flight, then return from :meth:`run`."""
        self._stop.set()
        for event in (self._samples_waiting, self._schedule_changed, self._key_ready):
            event.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Collect and send until :meth:`stop` (or SIGINT/SIGTERM with ``handle_signals``;
        an application embedding the agent leaves signals to itself)."""
        async with anyio.create_task_group() as outer:
            if handle_signals:
                outer.start_soon(self._watch_signals, outer.cancel_scope)
            if self.api_key:
                with anyio.move_on_after(self.options.timeout.total_seconds()):
                    await self._refresh_config()
            async with anyio.create_task_group() as loops:
                loops.start_soon(self._collect_loop)
                loops.start_soon(self._send_loop)
                loops.start_soon(self._config_loop)
            outer.cancel_scope.cancel()

    async def run_once(self) -> OnceResult:
        """Collect one sample, then try once to send everything spooled."""
        # CPU shares need a previous look: give the collectors a moment to have one.
        await anyio.sleep(min(1.0, self.interval))
        await self._collect_once()
        if not self.api_key:
            return OnceResult(0, len(self.spool), 0, "no API key (set one, or enrol by claim)")
        delivered, dead_before = self.stats.delivered, self.spool.dead_lettered
        error = None
        while len(self.spool):
            result = await self._send_batch()
            if result is not None and result.outcome is Outcome.RETRY:
                error = result.detail
                break
        return OnceResult(
            self.stats.delivered - delivered,
            len(self.spool),
            self.spool.dead_lettered - dead_before,
            error,
        )

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if self.stopping:
                        log.warning("second stop signal: cancelling the send in flight")
                        scope.cancel()
                        return
                    log.info("%s: stopping after the send in flight", signal.Signals(signum).name)
                    self.stop()
        except NotImplementedError:
            # Windows event loops take no signal handlers: Ctrl+C arrives as
            # KeyboardInterrupt instead, which the command turns into a clean exit.
            return

    async def _wait(self, seconds: float, event: anyio.Event | None = None) -> bool:
        """Sleep up to ``seconds`` (less if ``event`` fires); ``True`` if stopping."""
        with anyio.move_on_after(max(seconds, 0.0)):
            await (event or self._stop).wait()
        return self.stopping

    # ------------------------------------------------------------ collect

    async def _collect_loop(self) -> None:
        while not self.stopping:
            started = anyio.current_time()
            await self._collect_once()
            while True:
                changed = self._schedule_changed
                # Anchored on the start of the last collection, so its duration adds no drift.
                if await self._wait(started + self.interval - anyio.current_time(), changed):
                    return
                if not changed.is_set():
                    break
                self._schedule_changed = anyio.Event()

    async def _collect_once(self) -> None:
        try:
            result = await collect(
                self._collectors,
                self.target,
                timeout=self.settings.collect.timeout,
                clock=self._clock,
            )
        except CollectionError as error:
            self.stats.failed_collections += 1
            self._note_failures(error.failures)
            return
        self._note_failures(result.failures)
        data = json.dumps(encode(result.sample), separators=(",", ":"), allow_nan=False)
        try:
            await anyio.to_thread.run_sync(self.spool.append, data.encode())
        except OSError as error:
            # A full disk loses this sample, not the agent: collection goes on.
            self.stats.lost += 1
            if not self._spool_failing:
                log.error("cannot spool a sample (%s); it is lost", error)
            self._spool_failing = True
            return
        if self._spool_failing:
            log.warning("spooling works again; %d sample(s) were lost", self.stats.lost)
            self._spool_failing = False
        self.stats.collected += 1
        self._samples_waiting.set()

    def _note_failures(self, failures: Mapping[str, str]) -> None:
        """Log when a collector starts or stops failing, not at every interval."""
        for name, reason in failures.items():
            if name not in self._failing:
                log.warning("collector %s failed: %s", name, reason)
        for name in self._failing - failures.keys():
            log.info("collector %s works again", name)
        self._failing = set(failures)

    # ------------------------------------------------------------ send

    async def _send_loop(self) -> None:
        if not self.api_key:
            self.api_key = await self._enrol()
            if not self.api_key:
                return
            self._key_ready.set()
        last_send = -math.inf
        while not self.stopping:
            if not len(self.spool):
                await self._samples_waiting.wait()
                self._samples_waiting = anyio.Event()
                continue
            if len(self.spool) < self._batch_limit:
                # Let a few samples gather (a backlog goes out without waiting).
                due = last_send + self.options.send_interval.total_seconds()
                if await self._wait(due - anyio.current_time()):
                    return
            last_send = anyio.current_time()
            result = await self._send_batch()
            if result is not None and result.outcome is Outcome.RETRY:
                delay = self._retry_delay(result)
                log.warning(
                    "sending %d spooled sample(s) failed (%s); retrying in %.1f s",
                    len(self.spool),
                    result.detail,
                    delay,
                )
                await self._wait(delay)

    async def _send_batch(self) -> SendResult | None:
        """Send the oldest batch and settle it; ``None`` if the spool was empty."""
        assert self.api_key is not None
        # Reading and unlinking a few small files is quicker inline than a thread hop;
        # only appends (two fsyncs) go to a worker thread.
        batch = self.spool.peek(self._batch_limit)
        if not batch:
            return None
        result = await self.client.ingest(self.api_key, ingest_body(s.data for s in batch))
        if result.outcome is Outcome.DELIVERED:
            self.spool.remove(s.seq for s in batch)
            self.stats.delivered += len(batch)
            self._backoff.reset()
            # Back to full batches after a split isolated a bad sample.
            self._batch_limit = min(self._batch_limit * 2, self.options.batch_max_samples)
        elif result.outcome is Outcome.BAD_BATCH:
            await self._settle_bad_batch(batch, result)
        else:
            self.stats.send_failures += 1
            self.stats.last_error = result.detail
        return result

    async def _settle_bad_batch(self, batch: list[SpooledSample], result: SendResult) -> None:
        if len(batch) > 1:
            # One bad sample must not condemn the batch: halve until it stands alone.
            self._batch_limit = max(1, len(batch) // 2)
            log.warning(
                "server refused a batch of %d (%s); retrying in smaller batches",
                len(batch),
                result.detail,
            )
            return
        await anyio.to_thread.run_sync(self.spool.dead_letter, batch, result.detail)

    def _retry_delay(self, result: SendResult) -> float:
        if result.retry_after is not None:
            self._backoff.attempts += 1
            return result.retry_after
        return self._backoff.next_delay()

    async def _enrol(self) -> str | None:
        enrolment = Enrolment(
            self.client,
            self.identity,
            hostname=self.options.hostname or socket.gethostname(),
            version=self.version,
            poll_interval=min(self.interval, 10.0),
            backoff=Backoff(cap=self.options.backoff_max.total_seconds()),
            announce=self.announce,
            wait=self._wait,
        )
        return await enrolment.api_key()

    # ------------------------------------------------------------ central config

    async def _config_loop(self) -> None:
        await self._key_ready.wait()
        if self.central is None and not self.stopping:
            # Enrolled just now, or the server did not answer at start.
            await self._refresh_config()
        period = self.options.config_poll_interval.total_seconds()
        while not await self._wait(period):
            await self._refresh_config()

    async def _refresh_config(self) -> None:
        if not self.api_key:
            return
        etag = self.central.etag if self.central else None
        try:
            reply = await self.client.agent_config(self.api_key, etag)
        except ServerUnreachable as error:
            log.debug("central configuration: %s", error)
            return
        if reply.status == 304:
            return
        if reply.status == 404:
            log.debug("the server has no central configuration for this agent")
            return
        if not reply.ok:
            log.warning("fetching the central configuration failed: %s", reply.describe())
            return
        try:
            config = parse_central_config(reply.body, reply.etag)
        except InvalidCentralConfig as error:
            log.warning("ignoring an invalid central configuration: %s", error)
            return
        if config.version == UNSET_VERSION:
            # Nothing stored for this machine: the agent's own settings stand (and
            # come back if an administrator removes a central configuration).
            config = attrs.evolve(
                config,
                interval=self.options.interval,
                collectors=tuple(self.options.collectors),
                labels=self.options.labels,
            )
        await self._apply(config)

    async def _apply(self, config: CentralConfig) -> None:
        if config.collectors != self.collector_names:
            try:
                collectors = await anyio.to_thread.run_sync(
                    self._load, self.settings, config.collectors
                )
            except LunaSentriError as error:
                # Logged once per configuration version: the next poll gets a 304.
                log.error(
                    "central configuration %s names unusable collectors (%s); keeping %s",
                    config.version,
                    error,
                    ", ".join(self.collector_names),
                )
            else:
                self._collectors, self.collector_names = collectors, config.collectors
                log.info("collectors now %s (central configuration)", ", ".join(config.collectors))
        if config.labels != self.target.labels:
            self.target = attrs.evolve(self.target, labels=config.labels)
        interval = config.interval.total_seconds()
        if interval != self.interval:
            log.info("interval now %g s (central configuration)", interval)
            self.interval = interval
            self._schedule_changed.set()
        self.central = config
