"""The audit log: who did what, to what, when and from where.

Services record every operation on users, machines, keys and claims::

    await audit.record(hub, action="machine.create", actor=call.principal,
                       target_type="machine", target_id=machine.id,
                       client=call.client, detail={"name": machine.name})

``actor`` is the principal that acted; ``None`` means the server itself
(``actor_kind = "system"``). The entry's ``via`` is the actor's ``via``: the
authenticator that accepted the request. A caller that is neither a user nor a machine (an
agent registering with its agent id) passes ``Principal(kind="agent", id=...)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lunasentri_core.components import Principal
from lunasentri_core.errors import StorageError
from lunasentri_core.model import AuditEntry, new_id

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

log = logging.getLogger(__name__)

SYSTEM = "system"


def entry(
    *,
    action: str,
    actor: Principal | None,
    at: datetime,
    target_type: str | None = None,
    target_id: str | None = None,
    client: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Build an entry (for callers that store it themselves, e.g. outside a hub)."""
    return AuditEntry(
        id=new_id(),
        at=at,
        action=action,
        actor_kind=actor.kind if actor is not None else SYSTEM,
        actor_id=(actor.id or None) if actor is not None else None,
        target_type=target_type,
        target_id=target_id,
        client=client,
        detail=dict(detail or {}),
        via=(actor.via or None) if actor is not None else None,
    )


async def record(
    hub: Sentri,
    *,
    action: str,
    actor: Principal | None,
    target_type: str | None = None,
    target_id: str | None = None,
    client: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Store one audit entry and return it.

    Called after the operation it records has happened: if storage is down, the
    failure is logged rather than raised, because failing the request would not
    undo the operation. A ``detail`` that is not JSON is a bug and raises.
    """
    made = entry(
        action=action,
        actor=actor,
        at=hub.clock(),
        target_type=target_type,
        target_id=target_id,
        client=client,
        detail=detail,
    )
    try:
        await hub.run_sync(hub.storage.state.add_audit, made)
    except StorageError:
        log.exception("audit entry %s %s could not be stored", made.action, made.target_id)
    return made


async def entries(
    hub: Sentri,
    *,
    action: str | None = None,
    actor_id: str | None = None,
    via: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    target_id: str | None = None,
    until: datetime | None = None,
    before: str | None = None,
) -> list[AuditEntry]:
    """Entries newest first, filtered by exact action, actor, target and authenticator
    (``via``), at or after ``since`` and before ``until``; ``before`` (an entry's id)
    starts after that entry, for the next page."""
    return await hub.run_sync(
        lambda: hub.storage.state.list_audit(
            action=action,
            actor_id=actor_id,
            via=via,
            since=since,
            limit=limit,
            target_id=target_id,
            until=until,
            before=before,
        )
    )
