"""Bulk export for secondary use (research, planning): NDJSON of the store, the national data opt-out applied.

The national data opt-out covers secondary use only (UK-REFERENCE §5): a patient who has opted out
(a Consent `consent.policy.OptOutMarker` recognises) is left out of every export — their Patient and
everything in their compartment — while direct care never sees the opt-out. Exports are for backend
services (SMART `system/` scopes) and the command line, and are audited like every other access.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import orjson
from sqlalchemy import Text, cast, select

from consent.model import ConsentError, parse_consent
from engine import outcomes
from engine.access import AccessGate
from engine.audit.events import record_for
from engine.auth import Principal
from engine.db.schema import resources
from engine.search.registry import SUPPORTED_TYPES

BATCH = 500


async def opted_out_patients(gate: AccessGate) -> set[str]:
    """Patients whose active Consents include a national data opt-out."""
    query = select(resources.c.patient_id, cast(resources.c.content, Text)).where(
        resources.c.res_type == "Consent", resources.c.deleted.is_(False), resources.c.patient_id.is_not(None))
    opted: set[str] = set()
    async with gate.db.read() as conn:
        for patient_id, content in await conn.execute(query):
            try:
                consent = parse_consent(orjson.loads(content))
            except ConsentError:
                continue
            if consent and consent.in_force(gate.clock()) and gate.policy.opt_out.recognises(consent):
                opted.add(patient_id)
    return opted


async def export_ndjson(gate: AccessGate, who: Principal, types: Sequence[str] | None = None,
                        since: datetime | None = None) -> AsyncIterator[bytes]:
    """NDJSON lines of current resources of `types` (default: all), opted-out patients left out.

    Refused (403) for anyone but a backend service: secondary use is not a person's direct care.
    """
    wanted = sorted(types or SUPPORTED_TYPES)
    unknown = [t for t in wanted if t not in SUPPORTED_TYPES]
    if unknown:
        raise outcomes.bad_request(f"Unknown resource type for export: {', '.join(unknown)}", ("_type",), "bad-type")
    if not who.is_system:
        error = outcomes.forbidden("secondary-use", "Bulk export is for backend services (system/ scopes) only")
        await gate.audit_refusal(who, "operation", None, error, operation="$export")
        raise error
    for res_type in wanted:
        gate.authorise(who, "r", res_type)
    excluded = await opted_out_patients(gate)
    await gate.audit([record_for(who, recorded=gate.clock(), subtype="operation", operation="$export",
                                 query=f"_type={','.join(wanted)}")])
    return _lines(gate, wanted, since, excluded)


async def _lines(gate: AccessGate, types: list[str], since: datetime | None,
                 excluded: set[str]) -> AsyncIterator[bytes]:
    r = resources.c
    after = 0
    while True:
        query = (select(r.pk, r.patient_id, cast(r.content, Text)).where(r.res_type.in_(types), r.deleted.is_(False),
                                                                        r.pk > after)
                 .order_by(r.pk).limit(BATCH))
        if since is not None:
            query = query.where(r.last_updated >= since)
        async with gate.db.read() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return
        after = rows[-1][0]
        chunk = [content.encode() + b"\n" for _, patient_id, content in rows if patient_id not in excluded]
        if chunk:
            yield b"".join(chunk)
