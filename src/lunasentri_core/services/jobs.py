"""The names of the once-only periodic jobs (see :meth:`Sentri.singleton`).

Processes sharing one database run each of these in one process at a time. The
names key the storage's locks (and, on SQLite, name files beside the database):
changing one lets an old and a new process run the job at once during an upgrade.
"""

from __future__ import annotations

from typing import Final

JOB_HEARTBEAT: Final = "heartbeat"
"""The full heartbeat sweep (machines that went silent go offline)."""
JOB_MAINTENANCE: Final = "maintenance"
"""Storage maintenance (compaction, rollups, retention) and purges of old state."""
JOB_SILENCES: Final = "silences"
"""Closing silences that ended, with their re-notifications."""
JOB_DISCOVERY_STALE: Final = "discovery-stale"
"""Failing discovery runs whose process is gone."""
JOB_CLAIM_EXPIRY: Final = "claim-expiry"
"""Expiring unclaimed agent registrations."""

ALL_JOBS: Final = (
    JOB_HEARTBEAT,
    JOB_MAINTENANCE,
    JOB_SILENCES,
    JOB_DISCOVERY_STALE,
    JOB_CLAIM_EXPIRY,
)
