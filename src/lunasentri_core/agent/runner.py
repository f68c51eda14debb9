"""The running agent: one thread, one loop, three duties sharing a spool.

* collect: every ``interval``, run the collectors and append the sample to the spool;
* send: drain the spool oldest first in batches, backing off while the server is
  unreachable (collection goes on meanwhile: the spool absorbs the gap);
* config: fetch the central configuration at start and every ``config_poll_interval``.

The loop sleeps until the earliest of the three is due (``time.monotonic``
deadlines). Nothing runs concurrently, except each collector in a thread of its
own (:mod:`.collect`) so that a hung one can be abandoned. A request blocks the
loop until it returns or its ``timeout`` (for connecting, and for each read and
write) runs out; a collection due meanwhile runs as soon as it returns, and the
next one an ``interval`` after that.

Without an API key the agent first enrols by claim (:mod:`.claim`), collecting
while it waits. A stop request (SIGINT/SIGTERM, or :meth:`Agent.stop` from any
thread) lets the send in flight finish; a second signal cancels it. Nothing is
lost either way: samples leave the spool only once the server acknowledged them.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import socket
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, NamedTuple

import attrs
import httpx

from lunasentri_core.agent.backoff import Backoff
from lunasentri_core.agent.central import CentralConfig, InvalidCentralConfig, parse_central_config
from lunasentri_core.agent.collect import collect
from lunasentri_core.agent.collectors import load_collectors
from lunasentri_core.agent.identity import Identity
from lunasentri_core.agent.settings import AgentRunSettings, AgentSettings
from lunasentri_core.agent.spool import Spool, SpooledSample
from lunasentri_core.agent.stop import StopFlag
from lunasentri_core.agent.transport import (
    Outcome,
    SendResult,
    ServerClient,
    ServerUnreachable,
    ingest_body,
    sample_json,
)
from lunasentri_core.errors import LunaSentriError
from lunasentri_core.samples import Collector, Target, utcnow

if TYPE_CHECKING:
    from lunasentri_core.agent.claim import Announce, Claimed

log = logging.getLogger(__name__)

PROBE_INTERVAL = 5.0
"""Seconds between cheap looks at an unreachable server while a send backs off, so
the agent is back within seconds of the server, whatever its backoff had grown to."""

UNSET_VERSION = "0"
"""The version a server reports when it stores no configuration for the machine."""

CollectorLoader = Callable[[AgentRunSettings, tuple[str, ...]], Mapping[str, Collector]]


class Cancelled(BaseException):
    """A second stop signal: raised wherever the agent is, to end the send in flight.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on
    the way (a collector's, httpx's) swallows it.
    """


class AgentStats:
    """What the agent did since it started."""

    def __init__(self) -> None:
        self.collected = 0
        self.delivered = 0
        self.failed_collections = 0
        self.send_failures = 0
        self.lost = 0
        """Samples that could not be spooled (a full or failing disk)."""
        self.last_error: str | None = None

    def snapshot(self) -> AgentStats:
        copy = AgentStats()
        copy.__dict__.update(self.__dict__)
        return copy


class OnceResult(NamedTuple):
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
        settings: AgentRunSettings,
        *,
        spool: Spool,
        identity: Identity,
        http: httpx.Client,
        version: str,
        api_key: str | None,
        announce: Announce,
        claimed: Claimed | None = None,
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
        self.claimed = claimed
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
        self._stop = StopFlag()
        # Monotonic times: when the collectors may first be asked (CPU shares need a
        # previous look to measure from, a clock tick or more before), when the last
        # collection and send started, when a failed send may be retried, when the
        # central configuration is next fetched.
        self._ready_at = time.monotonic() + min(1.0, self.interval)
        self._collected_at = -math.inf
        self._sent_at = -math.inf
        self._retry_at = -math.inf
        self._config_at = math.inf
        self._probe_at = math.inf
        self._draining = False
        self._summary_at = time.monotonic() + self.options.summary_interval.total_seconds()
        self._summarised = AgentStats()

    # ------------------------------------------------------------ control

    @property
    def stopping(self) -> bool:
        return self._stop.is_set

    def stop(self) -> None:
        """Finish what is in flight, then return from :meth:`run` (safe from any thread)."""
        self._stop.set()

    def run(self, *, handle_signals: bool = True) -> None:
        """Collect and send until :meth:`stop` (or SIGINT/SIGTERM with ``handle_signals``,
        in the main thread; an application embedding the agent leaves signals to itself)."""
        handler = self._on_signal if handle_signals else None
        try:
            with self._stop.armed(handler, signal.SIGINT, signal.SIGTERM):
                self._run()
        except Cancelled:
            log.warning("second stop signal: cancelled the send in flight")

    def run_once(self) -> OnceResult:
        """Collect one sample, then try once to send everything spooled."""
        with self._stop.armed():
            self._stop.wait(self._collection_due() - time.monotonic())
        self._collect_once()
        if not self.api_key:
            return OnceResult(0, len(self.spool), 0, "no API key (set one, or enrol by claim)")
        delivered, dead_before = self.stats.delivered, self.spool.dead_lettered
        error = None
        while len(self.spool):
            result = self._send_batch()
            if result is not None and result.outcome is Outcome.RETRY:
                error = result.detail
                break
        return OnceResult(
            self.stats.delivered - delivered,
            len(self.spool),
            self.spool.dead_lettered - dead_before,
            error,
        )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            raise Cancelled
        log.info("%s: stopping after the send in flight", signal.Signals(signum).name)
        self.stop()

    def _run(self) -> None:
        if self.api_key:
            self._refresh_config()
        else:
            self.api_key = self._enrol()  # collecting meanwhile
            if not self.api_key:
                return
            if self.claimed is not None:
                self.claimed(self.identity.agent_id())
            self._refresh_config()
        self._config_at = time.monotonic() + self.options.config_poll_interval.total_seconds()
        self._send_loop()

    # ------------------------------------------------------------ waiting

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``, collecting (and fetching the configuration) as they fall due
        meanwhile; ``True`` if stopping."""
        until = time.monotonic() + max(seconds, 0.0)
        while not self.stopping and time.monotonic() < until:
            self._idle(until)
        return self.stopping

    def _idle(self, until: float) -> None:
        """Run the duties that are due, or else sleep until ``until`` or the next one."""
        now = time.monotonic()
        due = min(self._collection_due(), self._config_at, self._probe_at)
        if due <= now:
            self._run_due_duties()
        else:
            self._stop.wait(min(until, due) - now)

    def _run_due_duties(self) -> None:
        if time.monotonic() >= self._collection_due():
            self._collect_once()
        if self.api_key and time.monotonic() >= self._config_at:
            self._refresh_config()
            self._config_at = time.monotonic() + self.options.config_poll_interval.total_seconds()
        if time.monotonic() >= self._probe_at:
            self._probe()
        if time.monotonic() >= self._summary_at:
            self._summarise()

    def _summarise(self) -> None:
        """Log what was done since the last summary (checked with each collection)."""
        now, before = self.stats, self._summarised
        log.info(
            "last %g min: %d sample(s) collected, %d delivered, %d failed send(s); %d spooled",
            self.options.summary_interval.total_seconds() / 60,
            now.collected - before.collected,
            now.delivered - before.delivered,
            now.send_failures - before.send_failures,
            len(self.spool),
        )
        self._summarised = now.snapshot()
        self._summary_at = time.monotonic() + self.options.summary_interval.total_seconds()

    # ------------------------------------------------------------ collect

    def _collection_due(self) -> float:
        return max(self._ready_at, self._collected_at + self.interval)

    def _collect_once(self) -> None:
        # The next collection is an interval after this one started: its duration
        # adds no drift.
        self._collected_at = time.monotonic()
        result = collect(
            self._collectors,
            self.target,
            timeout=self.settings.collect_timeout.total_seconds(),
            clock=self._clock,
        )
        self._note_failures(result.failures)
        if result.sample is None:
            self.stats.failed_collections += 1
            return
        try:
            self.spool.append(sample_json(result.sample))
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

    def _note_failures(self, failures: Mapping[str, str]) -> None:
        """Log when a collector starts or stops failing, not at every interval."""
        for name, reason in failures.items():
            if name not in self._failing:
                log.warning("collector %s failed: %s", name, reason)
        for name in self._failing - failures.keys():
            log.info("collector %s works again", name)
        self._failing = set(failures)

    # ------------------------------------------------------------ send

    def _send_loop(self) -> None:
        while not self.stopping:
            due = self._send_due()
            if due > time.monotonic():
                self._idle(due)
                continue
            self._sent_at = time.monotonic()
            result = self._send_batch()
            if result is not None and result.outcome is Outcome.RETRY:
                delay = self._retry_delay(result)
                log.warning(
                    "sending %d spooled sample(s) failed (%s); retrying in %.1f s",
                    len(self.spool),
                    result.detail,
                    delay,
                )
                self._retry_at = time.monotonic() + delay
                self._probe_at = self._first_probe(result, delay)
            elif result is not None:
                self._probe_at = math.inf

    def _first_probe(self, result: SendResult, delay: float) -> float:
        """When to look whether the server is back: only when it did not answer (an
        answering server's 5xx or Retry-After is heeded), and only if it saves time."""
        if result.status is not None or delay <= PROBE_INTERVAL:
            return math.inf
        return time.monotonic() + PROBE_INTERVAL * random.uniform(0.5, 1.0)

    def _probe(self) -> None:
        if self.client.probe():
            log.info("the server answers again: sending %d spooled sample(s)", len(self.spool))
            self._retry_at = time.monotonic()
            self._probe_at = math.inf
        else:
            self._probe_at = time.monotonic() + PROBE_INTERVAL

    def _send_due(self) -> float:
        """When the next batch goes: never while the spool is empty; a backlog (a full
        batch, or what is left of one after a full batch went) at once; else once
        samples have gathered for ``send_interval``."""
        if not len(self.spool):
            return math.inf
        if len(self.spool) >= self._batch_limit or self._draining:
            return self._retry_at
        return max(self._retry_at, self._sent_at + self.options.send_interval.total_seconds())

    def _send_batch(self) -> SendResult | None:
        """Send the oldest batch and settle it; ``None`` if the spool was empty."""
        assert self.api_key is not None
        batch = self.spool.peek(self._batch_limit)
        if not batch:
            return None
        result = self.client.ingest(self.api_key, ingest_body(s.data for s in batch))
        if result.outcome is Outcome.DELIVERED:
            self.spool.remove(s.seq for s in batch)
            self._draining = len(batch) >= self._batch_limit
            self.stats.delivered += len(batch)
            self._backoff.reset()
            # Back to full batches after a split isolated a bad sample.
            self._batch_limit = min(self._batch_limit * 2, self.options.batch_max_samples)
        elif result.outcome is Outcome.BAD_BATCH:
            self._settle_bad_batch(batch, result)
        else:
            self.stats.send_failures += 1
            self.stats.last_error = result.detail
        return result

    def _settle_bad_batch(self, batch: list[SpooledSample], result: SendResult) -> None:
        if len(batch) > 1:
            # One bad sample must not condemn the batch: halve until it stands alone.
            self._batch_limit = max(1, len(batch) // 2)
            log.warning(
                "server refused a batch of %d (%s); retrying in smaller batches",
                len(batch),
                result.detail,
            )
            return
        self.spool.dead_letter(batch, result.detail)

    def _retry_delay(self, result: SendResult) -> float:
        if result.retry_after is not None:
            self._backoff.attempts += 1
            return result.retry_after
        return self._backoff.next_delay()

    def _enrol(self) -> str | None:
        # Claim mode only: an agent started with a key never loads it (nor hashlib/hmac).
        from lunasentri_core.agent.claim import Enrolment

        enrolment = Enrolment(
            self.client,
            self.identity,
            hostname=self.options.hostname or socket.gethostname(),
            version=self.version,
            poll_interval=min(self.interval, 10.0),
            backoff=Backoff(cap=self.options.backoff_max.total_seconds()),
            announce=self.announce,
            wait=self._pause,
        )
        return enrolment.api_key()

    # ------------------------------------------------------------ central config

    def _refresh_config(self) -> None:
        if not self.api_key:
            return
        etag = self.central.etag if self.central else None
        try:
            reply = self.client.agent_config(self.api_key, etag)
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
            config = config._replace(
                interval=self.options.interval,
                collectors=tuple(self.options.collectors),
                labels=self.options.labels,
            )
        self._apply(config)

    def _apply(self, config: CentralConfig) -> None:
        if config.collectors != self.collector_names:
            try:
                collectors = self._load(self.settings, config.collectors)
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
            # The loop reads it at its next turn: a shorter interval takes effect at once.
            log.info("interval now %g s (central configuration)", interval)
            self.interval = interval
        self.central = config
