"""Enrolment without a key: register, wait to be claimed, receive the API key once.

The agent makes a claim token (kept in the spool directory, owner-only), registers
its agent id with the token's SHA-256 and shows the token to whoever installs it;
an administrator claims the agent with that token, and the agent's next poll
returns the machine's API key, which it keeps for every later start.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from lunasentri_core.agent.backoff import Backoff
from lunasentri_core.agent.identity import Identity
from lunasentri_core.agent.transport import Reply, ServerClient, ServerUnreachable
from lunasentri_core.errors import LunaSentriError
from lunasentri_core.security import hash_token

log = logging.getLogger(__name__)

Announce = Callable[[str, str], None]
"""Called with (agent id, claim token) whenever a new token awaits its claim."""
Claimed = Callable[[str], None]
"""Called with the agent id once the claim has delivered the API key."""
Wait = Callable[[float], bool]
"""Waits up to the given seconds (the agent collects meanwhile); ``True`` if it is stopping."""


class EnrolmentFailed(LunaSentriError):
    """The server refused the registration itself (e.g. an invalid host name)."""


class Enrolment:
    def __init__(
        self,
        client: ServerClient,
        identity: Identity,
        *,
        hostname: str,
        version: str,
        poll_interval: float,
        backoff: Backoff,
        announce: Announce,
        wait: Wait,
    ) -> None:
        self.client = client
        self.identity = identity
        self.hostname = hostname
        self.version = version
        self.poll_interval = poll_interval
        self.backoff = backoff
        self.announce = announce
        self.wait = wait
        self._announced: set[str] = set()

    def api_key(self) -> str | None:
        """Enrol until the key arrives (returned, and stored) or the agent stops (``None``)."""
        agent_id = self.identity.agent_id()
        token = self.identity.claim_token() or self.identity.new_claim_token().secret
        registered = False
        while True:
            try:
                if not registered:
                    agent_id, registered = self._register(agent_id, token)
                    if not registered:
                        if self._retry("registering with a new agent id"):
                            return None
                        continue
                reply = self.client.claim_status(agent_id, token)
            except ServerUnreachable as error:
                if self._retry(f"cannot reach the server: {error}"):
                    return None
                continue
            step = self._on_status(reply, agent_id)
            if step is _Step.DONE:
                return self.identity.api_key()
            if step is _Step.NEW_TOKEN:
                token, registered = self.identity.new_claim_token().secret, False
                continue
            if step is _Step.REREGISTER:
                registered = False
                reason = "the server does not know this registration (any more)"
            elif step is _Step.ERROR:
                reason = f"claim status: {reply.describe()}"
            else:
                self.backoff.reset()
                if self.wait(self.poll_interval):
                    return None
                continue
            if self._retry(reason):
                return None

    def _register(self, agent_id: str, token: str) -> tuple[str, bool]:
        reply = self.client.register(agent_id, hash_token(token), self.hostname, self.version)
        if reply.status == 409:
            # Registered earlier under a token this agent no longer holds (its spool
            # directory was reset): only a fresh id can enrol before that one expires.
            new_id = self.identity.new_agent_id()
            log.warning(
                "agent id %s is registered with another claim token; now %s", agent_id, new_id
            )
            return new_id, False
        if reply.status in (400, 422):
            raise EnrolmentFailed(f"the server refused the registration: {reply.describe()}")
        if not reply.ok:
            raise ServerUnreachable(f"registration: {reply.describe()}")
        if token not in self._announced:
            self._announced.add(token)
            self.announce(agent_id, token)
        log.info("registered as agent %s; waiting to be claimed", agent_id)
        return agent_id, True

    def _on_status(self, reply: Reply, agent_id: str) -> _Step:
        if reply.status == 404:
            return _Step.REREGISTER
        if not reply.ok:
            return _Step.ERROR
        status = reply.body.get("status")
        key = reply.body.get("api_key")
        if status == "claimed" and isinstance(key, str) and key:
            self.identity.save_api_key(key)
            log.info("agent %s was claimed; its API key is stored", agent_id)
            return _Step.DONE
        if status in ("expired", "delivered", "claimed"):
            # Expired unclaimed, or the key went to a poll whose answer was lost:
            # either way only a new registration can produce a key now.
            log.warning("registration of agent %s is %s; registering anew", agent_id, status)
            return _Step.NEW_TOKEN
        if status != "pending":
            log.warning("unexpected claim status %r; polling on", status)
        return _Step.PENDING

    def _retry(self, reason: str) -> bool:
        delay = self.backoff.next_delay()
        log.warning("enrolment: %s; retrying in %.0f s", reason, delay)
        return self.wait(delay)


class _Step(enum.Enum):
    PENDING = "pending"
    DONE = "done"
    NEW_TOKEN = "new-token"
    REREGISTER = "reregister"
    ERROR = "error"
