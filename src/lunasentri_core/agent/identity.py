"""What the agent keeps about itself in the spool directory, each in an owner-only file.

* ``agent-id``: a random id made at first start (unless settings give one);
* ``claim-token``: the secret an admin types to claim this agent (claim mode only);
* ``api-key``: the machine key the server delivered after the claim.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from lunasentri_core.agent.spool import write_durably
from lunasentri_core.samples import new_id

if TYPE_CHECKING:
    from lunasentri_core.security import IssuedToken

log = logging.getLogger(__name__)

AGENT_ID_FILE = "agent-id"
CLAIM_TOKEN_FILE = "claim-token"
API_KEY_FILE = "api-key"


class Identity:
    def __init__(self, directory: Path, agent_id: str | None = None) -> None:
        self.directory = directory
        self._configured_id = agent_id

    def agent_id(self) -> str:
        if self._configured_id:
            return self._configured_id
        stored = self._read(AGENT_ID_FILE)
        if stored:
            return stored
        return self.new_agent_id()

    def new_agent_id(self) -> str:
        """Replace the stored id (after the server lost track of the old one)."""
        agent_id = new_id()
        self._write(AGENT_ID_FILE, agent_id)
        self._configured_id = None
        return agent_id

    def claim_token(self) -> str | None:
        return self._read(CLAIM_TOKEN_FILE)

    def new_claim_token(self) -> IssuedToken:
        # Claim mode only: an agent with a key never loads the token machinery.
        from lunasentri_core.security import CLAIM_PREFIX, issue_token

        token = issue_token(CLAIM_PREFIX)
        self._write(CLAIM_TOKEN_FILE, token.secret)
        return token

    def api_key(self) -> str | None:
        return self._read(API_KEY_FILE)

    def save_api_key(self, key: str) -> None:
        self._write(API_KEY_FILE, key)
        # The token has served its purpose; a leaked copy must not outlive it.
        (self.directory / CLAIM_TOKEN_FILE).unlink(missing_ok=True)

    def forget_api_key(self) -> None:
        (self.directory / API_KEY_FILE).unlink(missing_ok=True)

    def _read(self, name: str) -> str | None:
        try:
            text = (self.directory / name).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def _write(self, name: str, value: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_durably(self.directory / f".{name}.tmp", self.directory / name, value.encode())
