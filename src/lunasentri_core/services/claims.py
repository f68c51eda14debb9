"""The claim workflow: an agent enrols without a key, an administrator claims it.

1. The agent makes a claim token (``lsc_...``), keeps it, and registers with its
   agent id and the token's SHA-256: the registration is *pending*.
2. An administrator, given the token by whoever installed the agent, claims the
   registration: a machine and its API key are made. The key is kept only
   *sealed*, AES-GCM encrypted under a key derived from the claim token, which
   the server never stores; so the database never holds a usable key.
3. The agent polls with its token; the first poll after the claim unseals and
   returns the key, once (the storage hands the sealed key out atomically).
   Later polls say *delivered* and never show it again.

A registration nobody claims expires after ``server.claim_ttl``. Every answer to
a poll with the wrong token is "not found", so a poll tells nothing to a caller
that does not hold the token.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lunasentri_core.components import Principal
from lunasentri_core.errors import (
    ConflictError,
    FieldError,
    LunaSentriError,
    NotFoundError,
    ValidationError,
)
from lunasentri_core.model import (
    AgentClaim,
    ApiKey,
    ClaimStatus,
    Labels,
    Machine,
    MachineKind,
    new_id,
)
from lunasentri_core.security import tokens_match
from lunasentri_core.services import audit
from lunasentri_core.services.ingest import TokenBucket
from lunasentri_core.services.jobs import JOB_CLAIM_EXPIRY
from lunasentri_core.services.machines import (
    Machines,
    check_hostname,
    check_labels,
    check_name,
    new_key,
    store_with_key,
)

if TYPE_CHECKING:
    from lunasentri_core.config import ServerSettings, Settings
    from lunasentri_core.hub import Sentri

log = logging.getLogger(__name__)

AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
TOKEN_HASH = re.compile(r"^[0-9a-f]{64}$")
MAX_VERSION = 64
VERSION = re.compile(r"^[ -~]{1,64}$")
"""Printable ASCII, as version strings are (PEP 440, semver); a pattern the OpenAPI
document can state, unlike ``str.isprintable``."""
EXPIRY_PERIOD = timedelta(minutes=1)
_SEAL_INFO = b"lunasentri claim: sealed machine API key v1"
_NONCE_BYTES = 12


class ClaimTokenMismatch(Exception):
    """The claim token an administrator gave is not the one the agent registered."""


class RegistrationThrottled(LunaSentriError):
    """A client address registers agents faster than ``server.register_rate``."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many agent registrations from this address; try again later")
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


class RegistrationThrottle:
    """A token bucket per client address for registrations, which anyone may send.

    Each registration that passes validation (and so reaches storage) takes a
    token; an address whose bucket is empty is refused before its request is
    even read. An IPv6 client is counted by its /64, which one host usually has
    whole. Not thread-safe: call it from the event loop.
    """

    def __init__(
        self, settings: ServerSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._buckets = TokenBucket(settings.register_rate, settings.register_burst, clock=clock)

    def admit(self, client: str | None) -> None:
        """Refuse ``client`` with :class:`RegistrationThrottled` if its bucket is empty."""
        wait = self._buckets.wait(client_key(client))
        if wait > 0:
            raise RegistrationThrottled(wait)

    def take(self, client: str | None) -> None:
        """Count one registration of ``client``, or raise :class:`RegistrationThrottled`."""
        wait = self._buckets.take(client_key(client), 1)
        if wait > 0:
            raise RegistrationThrottled(wait)


def client_key(client: str | None) -> str:
    """The address a client is counted by: its own, an IPv6 one's /64 (``""`` for none)."""
    if client is None:
        return ""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:  # not an IP address (a test client, a Unix socket)
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@attrs.frozen
class PollResult:
    status: ClaimStatus
    machine_id: str | None = None
    api_key: str | None = None
    expires_at: datetime | None = None


# --------------------------------------------------------------------------- sealing


def _sealing_key(claim_token: str, agent_id: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=agent_id.encode(), info=_SEAL_INFO)
    return hkdf.derive(claim_token.encode())


def seal(api_key: str, claim_token: str, agent_id: str) -> bytes:
    """``nonce || ciphertext`` of ``api_key``, bound to the agent id."""
    nonce = os.urandom(_NONCE_BYTES)
    cipher = AESGCM(_sealing_key(claim_token, agent_id))
    return nonce + cipher.encrypt(nonce, api_key.encode(), agent_id.encode())


def unseal(sealed: bytes, claim_token: str, agent_id: str) -> str:
    """The key :func:`seal` sealed; ``cryptography.exceptions.InvalidTag`` for a wrong token."""
    cipher = AESGCM(_sealing_key(claim_token, agent_id))
    nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
    return cipher.decrypt(nonce, ciphertext, agent_id.encode()).decode()


# --------------------------------------------------------------------------- validation


def check_agent_id(agent_id: str, field: str = "agent_id") -> str:
    if not AGENT_ID.match(agent_id):
        raise ValidationError(
            [FieldError(field, "must be 1 to 128 letters, digits, '.', '_', ':' or '-'")],
            what="request body",
        )
    return agent_id


def _check_registration(agent_id: str, token_hash: str, hostname: str, version: str) -> str:
    errors: list[FieldError] = []
    checks: list[Callable[[], object]] = [
        lambda: check_agent_id(agent_id),
        lambda: check_hostname(hostname),
    ]
    for check in checks:
        try:
            check()
        except ValidationError as error:
            errors.extend(error.errors)
    if not TOKEN_HASH.match(token_hash.lower()):
        errors.append(FieldError("claim_token_hash", "must be the hex SHA-256 of the claim token"))
    if not VERSION.match(version):
        errors.append(
            FieldError("version", f"must be 1 to {MAX_VERSION} printable ASCII characters")
        )
    if errors:
        raise ValidationError(errors, what="request body")
    return token_hash.lower()


def effective_status(claim: AgentClaim, now: datetime) -> ClaimStatus:
    """The status as of ``now``: a pending registration past its expiry is expired."""
    if claim.status is ClaimStatus.PENDING and claim.expires_at <= now:
        return ClaimStatus.EXPIRED
    return claim.status


# --------------------------------------------------------------------------- the service


class Claims:
    def __init__(
        self,
        hub: Sentri,
        settings: Settings | None = None,
        *,
        throttle: RegistrationThrottle | None = None,
    ) -> None:
        self.hub = hub
        self.settings = settings or hub.settings
        self.throttle = throttle

    async def register(
        self,
        agent_id: str,
        claim_token_hash: str,
        hostname: str,
        version: str,
        *,
        client: str | None = None,
    ) -> AgentClaim:
        """Record an agent's registration; the same registration again changes nothing.

        :class:`ConflictError` if the agent is pending or claimed under another token;
        :class:`RegistrationThrottled` if ``client`` registers too often.
        """
        token_hash = _check_registration(agent_id, claim_token_hash, hostname, version)
        if self.throttle is not None:
            self.throttle.take(client)
        now = self.hub.clock()
        claim = AgentClaim(
            agent_id=agent_id,
            claim_token_hash=token_hash,
            hostname=hostname,
            version=version,
            created_at=now,
            expires_at=now + self.settings.server.claim_ttl,
            client=client,
        )
        stored, created = await self.hub.run_sync(self._register, claim, now)
        if created:
            await audit.record(
                self.hub,
                action="claim.register",
                actor=Principal(kind="agent", id=agent_id),
                target_type="agent",
                target_id=agent_id,
                client=client,
                detail={"hostname": hostname, "version": version},
            )
        return stored

    def _register(self, claim: AgentClaim, now: datetime) -> tuple[AgentClaim, bool]:
        state = self.hub.storage.state
        # A pending registration past its expiry must give way to the new one.
        state.expire_claims(now)
        try:
            return state.add_claim(claim), True
        except ConflictError:
            current = state.get_claim(claim.agent_id)
            if hmac.compare_digest(claim.claim_token_hash, current.claim_token_hash):
                return current, False
            raise ConflictError(
                f"agent {claim.agent_id!r} is already registered ({current.status}) "
                "with another claim token"
            ) from None

    async def poll(self, agent_id: str, claim_token: str) -> PollResult:
        """The registration's status for the agent holding ``claim_token``; the key, once.

        :class:`NotFoundError` for an unknown agent or a wrong token alike.
        """
        claim = await self.hub.run_sync(self.hub.storage.state.get_claim, agent_id)
        if not tokens_match(claim_token, claim.claim_token_hash):
            raise NotFoundError(f"agent {agent_id!r} has no registration")
        status = effective_status(claim, self.hub.clock())
        if status is not ClaimStatus.CLAIMED:
            expires = claim.expires_at if status is ClaimStatus.PENDING else None
            return PollResult(status, machine_id=claim.machine_id, expires_at=expires)
        sealed = await self.hub.run_sync(self.hub.storage.state.take_sealed_key, agent_id)
        if sealed is None:  # a concurrent poll delivered it
            return PollResult(ClaimStatus.DELIVERED, machine_id=claim.machine_id)
        api_key = unseal(sealed, claim_token, agent_id)
        await audit.record(
            self.hub,
            action="claim.deliver",
            actor=Principal(kind="agent", id=agent_id),
            target_type="agent",
            target_id=agent_id,
            detail={"machine_id": claim.machine_id},
        )
        return PollResult(ClaimStatus.CLAIMED, machine_id=claim.machine_id, api_key=api_key)

    async def pending(self) -> list[AgentClaim]:
        """Registrations waiting for an administrator, oldest first."""
        now = self.hub.clock()
        claims = await self.hub.run_sync(self.hub.storage.state.list_claims, ClaimStatus.PENDING)
        return [c for c in claims if effective_status(c, now) is ClaimStatus.PENDING]

    async def claim(
        self,
        actor: Principal,
        agent_id: str,
        claim_token: str,
        name: str,
        *,
        owner_id: str | None = None,
        labels: Labels = (),
        client: str | None = None,
    ) -> Machine:
        """Claim a pending registration: make its machine and seal the key for delivery.

        :raises ClaimTokenMismatch: ``claim_token`` is not the agent's.
        :raises ConflictError: the registration is not pending (claimed, expired ...).
        """
        now = self.hub.clock()
        registration = await self.hub.run_sync(self.hub.storage.state.get_claim, agent_id)
        status = effective_status(registration, now)
        if status is not ClaimStatus.PENDING:
            raise ConflictError(f"the registration of agent {agent_id!r} is {status}")
        if not tokens_match(claim_token, registration.claim_token_hash):
            raise ClaimTokenMismatch(f"this is not the claim token of agent {agent_id!r}")
        machine = Machine(
            id=new_id(),
            name=check_name(name),
            owner_id=owner_id or actor.id,
            hostname=registration.hostname,
            kind=MachineKind.AGENT,
            labels=check_labels(labels),
            created_at=now,
        )
        issued = new_key(machine.id, now)
        claimed = attrs.evolve(
            registration,
            status=ClaimStatus.CLAIMED,
            machine_id=machine.id,
            sealed_key=seal(issued.secret, claim_token, agent_id),
        )
        stored = await self.hub.run_sync(self._claim, machine, issued.key, claimed)
        await self._audit_claim(actor, registration, stored, issued.key.id, client)
        return Machines(self.hub, self.settings).present(stored)

    def _claim(self, machine: Machine, key: ApiKey, claimed: AgentClaim) -> Machine:
        state = self.hub.storage.state
        try:
            stored = store_with_key(state, machine, key)
        except NotFoundError:
            raise ValidationError(
                [FieldError("owner_id", f"no user with id {machine.owner_id!r}")],
                what="request body",
            ) from None
        try:
            state.update_claim(claimed, expected_status=ClaimStatus.PENDING)
        except BaseException:
            # Another administrator claimed it first, or it expired meanwhile.
            state.delete_machine(stored.id)
            raise
        return stored

    async def _audit_claim(
        self,
        actor: Principal,
        registration: AgentClaim,
        machine: Machine,
        key_id: str,
        client: str | None,
    ) -> None:
        await audit.record(
            self.hub,
            action="machine.create",
            actor=actor,
            target_type="machine",
            target_id=machine.id,
            client=client,
            detail={
                "name": machine.name,
                "owner_id": machine.owner_id,
                "key_id": key_id,
                "agent_id": registration.agent_id,
            },
        )
        await audit.record(
            self.hub,
            action="claim.approve",
            actor=actor,
            target_type="agent",
            target_id=registration.agent_id,
            client=client,
            detail={"machine_id": machine.id, "hostname": registration.hostname},
        )

    # ------------------------------------------------------------ expiry

    async def expire(self) -> int:
        return await self.hub.run_sync(self.hub.storage.state.expire_claims, self.hub.clock())

    async def expire_forever(self) -> None:
        """Expire unclaimed registrations now and then every minute (or ``claim_ttl``)."""
        period = min(EXPIRY_PERIOD, self.settings.server.claim_ttl).total_seconds()
        while True:
            try:
                expired = await self.expire() if await self.hub.singleton(JOB_CLAIM_EXPIRY) else 0
                if expired:
                    log.info("%d unclaimed agent registrations expired", expired)
            except Exception:
                log.exception("expiring agent registrations failed")
            await anyio.sleep(max(period, 0.5))
