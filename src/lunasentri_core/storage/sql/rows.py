"""Machine records to and from SQL rows (shared by the state stores' parts)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Row

from lunasentri_core.model import Machine, MachineKind, MachineStatus
from lunasentri_core.storage.sql.schema import labels_from_json, labels_to_json

_MICROSECOND = timedelta(microseconds=1)


def machine_values(machine: Machine) -> dict[str, Any]:
    return {
        "id": machine.id,
        "name": machine.name,
        "owner_id": machine.owner_id,
        "hostname": machine.hostname,
        "kind": machine.kind.value,
        "labels": labels_to_json(machine.labels),
        "status": machine.status.value,
        "last_seen": machine.last_seen,
        "created_at": machine.created_at,
        "offline_after_us": None
        if machine.offline_after is None
        else machine.offline_after // _MICROSECOND,
    }


def machine_from_row(row: Row[Any]) -> Machine:
    return Machine(
        id=row.id,
        name=row.name,
        owner_id=row.owner_id,
        hostname=row.hostname,
        kind=MachineKind(row.kind),
        labels=labels_from_json(row.labels),
        status=MachineStatus(row.status),
        last_seen=row.last_seen,
        created_at=row.created_at,
        offline_after=None
        if row.offline_after_us is None
        else timedelta(microseconds=row.offline_after_us),
    )
