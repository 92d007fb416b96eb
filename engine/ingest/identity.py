"""Patient identity: which stored Patient a message is about, and one Patient per person.

DESIGN.md principle 4 and UK-REFERENCE §3 / test 3: a message's `PatientKey` is matched against
the search index (`idx_token`, parameter `identifier`) — the NHS number first
(https://fhir.nhs.uk/Id/nhs-number), then the sender's local identifiers (MRN system|value) in the
order the message lists them. A Patient replaced by a merge (`link.type = replaced-by`) resolves
to its survivor. When a stored Patient is found, the message's mapped Patient id is replaced by the
stored one and every `Patient/<mapped id>` reference is rewritten; identifiers are merged so that
one person has one Patient carrying every sender's MRN.

Writers touching the same person are serialised by transaction-scoped advisory locks on the
NHS number and MRN keys (`patient_lock_keys`), taken first in the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Text, bindparam, cast, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.db.repository import lock_key
from engine.db.schema import idx_token, resources
from engine.nhs_number import NHS_NUMBER_SYSTEM
from mappings.result import DUPLICATE_KEY_IDENTIFIER, ErrorLocation, MappingError, PatientKey

_MAX_LINKS = 8  # a replaced-by chain longer than this is a loop or a data error


@dataclass(frozen=True, slots=True)
class StoredPatient:
    """A Patient as stored: its row and its content (parsed)."""

    pk: int
    res_id: str
    version_id: int
    last_updated: datetime
    content: dict[str, Any]

    @property
    def nhs_number(self) -> str | None:
        return nhs_number_of(self.content)

    @property
    def replaced_by(self) -> str | None:
        """The id of the Patient this one was merged into (`link.type = replaced-by`), if any."""
        for link in self.content.get("link") or ():
            reference = (link.get("other") or {}).get("reference", "")
            if link.get("type") == "replaced-by" and reference.startswith("Patient/"):
                return reference.split("/", 2)[1]
        return None


@dataclass(frozen=True, slots=True)
class PatientMatch:
    """`matched` is the Patient an identifier found; `resolved` the one to use (its survivor, if merged)."""

    matched: StoredPatient
    resolved: StoredPatient
    by: str  # "nhs-number" or the local identifier's system


def key_identifiers(key: PatientKey | None) -> list[tuple[str, str]]:
    """(system, value) pairs of a key: the NHS number first, then the local identifiers."""
    if key is None:
        return []
    pairs = [(NHS_NUMBER_SYSTEM, key.nhs_number)] if key.nhs_number else []
    pairs.extend((i.system, i.value) for i in key.local if i.system and i.value)
    return pairs


def patient_lock_keys(keys: Iterable[PatientKey | None]) -> list[int]:
    """Advisory lock keys for the people `keys` name, sorted so that writers never deadlock."""
    found = {lock_key("patient", system, value) for key in keys for system, value in key_identifiers(key)}
    return sorted(found)


async def lock_patients(conn: AsyncConnection, keys: Iterable[PatientKey | None], *extra: int) -> None:
    """Serialise writers on these people until the transaction ends, in one round trip.

    PostgreSQL: transaction-scoped advisory locks (taken in key order: the same order in every
    transaction). SQLite: write transactions begin IMMEDIATE and are already serialised.
    """
    if conn.dialect.name != "postgresql":
        return
    lock_keys = sorted(set(patient_lock_keys(keys)) | set(extra))
    if not lock_keys:
        return
    # One statement; the ORDER BY makes the acquisition order explicit.
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k ORDER BY k"),
        {"keys": lock_keys},
    )


_PATIENT_COLUMNS = (
    resources.c.pk, resources.c.res_id, resources.c.version_id, resources.c.last_updated,
    cast(resources.c.content, Text).label("content"),
)


_t = idx_token.c
_FIND_PATIENTS = (
    select(*_PATIENT_COLUMNS, _t.system, _t.code)
    .select_from(idx_token.join(resources, resources.c.pk == _t.res_pk))
    .where(_t.res_type == "Patient", _t.param == "identifier", resources.c.deleted.is_(False),
           _t.code.in_(bindparam("codes", expanding=True)))
)


async def find_patient(conn: AsyncConnection, key: PatientKey | None) -> PatientMatch | None:
    """The stored Patient `key` names: NHS number first, then local identifiers; survivors followed."""
    pairs = key_identifiers(key)
    if key is None or not pairs:
        return None
    rows = (await conn.execute(_FIND_PATIENTS, {"codes": sorted({value for _, value in pairs})})).all()
    return await match_rows(conn, key, rows)


async def match_rows(conn: AsyncConnection, key: PatientKey, rows: Iterable[Any]) -> PatientMatch | None:
    """`find_patient` over candidate rows already read (Patient columns plus the token's system and code)."""
    pairs = key_identifiers(key)
    by_pair: dict[tuple[str, str], list[StoredPatient]] = {}
    patients: dict[str, StoredPatient] = {}
    for row in rows:
        if (row.system, row.code) not in pairs:
            continue  # the same value in another system: not this identifier
        patient = patients.get(row.res_id) or _stored_patient(row)
        patients[patient.res_id] = patient
        by_pair.setdefault((row.system, row.code), []).append(patient)
    for pair in pairs:
        candidates = by_pair.get(pair)
        if candidates:
            matched = _preferred(candidates)
            resolved = await _survivor(conn, matched, patients)
            return PatientMatch(matched, resolved, "nhs-number" if pair[0] == NHS_NUMBER_SYSTEM else pair[0])
    return None


def _preferred(candidates: list[StoredPatient]) -> StoredPatient:
    """Among Patients sharing an identifier, one that has not been merged away (else the first)."""
    for patient in candidates:
        if patient.replaced_by is None:
            return patient
    return candidates[0]


async def _survivor(conn: AsyncConnection, patient: StoredPatient,
                    known: Mapping[str, StoredPatient]) -> StoredPatient:
    seen = {patient.res_id}
    while patient.replaced_by and len(seen) <= _MAX_LINKS:
        next_id = patient.replaced_by
        if next_id in seen:
            break
        found = known.get(next_id) or await read_patient(conn, next_id)
        if found is None:
            break
        seen.add(next_id)
        patient = found
    return patient


_READ_PATIENT = select(*_PATIENT_COLUMNS).where(
    resources.c.res_type == "Patient", resources.c.res_id == bindparam("res_id"), resources.c.deleted.is_(False)
)


async def read_patient(conn: AsyncConnection, res_id: str) -> StoredPatient | None:
    row = (await conn.execute(_READ_PATIENT, {"res_id": res_id})).first()
    return _stored_patient(row) if row else None


def _stored_patient(row: Any) -> StoredPatient:
    return StoredPatient(row.pk, row.res_id, row.version_id, row.last_updated, orjson.loads(row.content))


def check_same_person(match: PatientMatch, key: PatientKey) -> None:
    """A local identifier match whose NHS number differs from the message's is not the same person.

    Raised as AE with HL7 table 0357 code 205 at PID-3, for a person to resolve (a merge, or a
    correction at the sender): silently overwriting a shared record's NHS number is never safe.
    """
    stored = match.resolved.nhs_number
    if match.by != "nhs-number" and key.nhs_number and stored and stored != key.nhs_number:
        raise MappingError(
            DUPLICATE_KEY_IDENTIFIER,
            "The patient's local identifier belongs to a stored patient with a different NHS number",
            ErrorLocation("PID", 1, 3),
        )


def nhs_number_of(patient: Mapping[str, Any]) -> str | None:
    """The current NHS number of a Patient (an identifier with `use: old` does not count)."""
    for identifier in patient.get("identifier") or ():
        if identifier.get("system") == NHS_NUMBER_SYSTEM and identifier.get("use") != "old":
            return identifier.get("value")
    return None


# -- rewriting and merging (pure) -------------------------------------------------------------------


def rewrite_references(value: Any, old: str, new: str) -> Any:
    """`value` with every `reference` equal to `old` (e.g. "Patient/abc") replaced by `new`.

    Versioned references (`Patient/abc/_history/2`) name a version of the old record and are
    rewritten without their version, since that version does not exist under the new id.
    Returns the same object when nothing changed (copy on write).
    """
    if isinstance(value, dict):
        changed: dict[str, Any] | None = None
        for k, v in value.items():
            if k == "reference" and isinstance(v, str) and (v == old or v.startswith(old + "/_history/")):
                new_v: Any = new
            else:
                new_v = rewrite_references(v, old, new)
            if new_v is not v:
                if changed is None:
                    changed = dict(value)
                changed[k] = new_v
        return value if changed is None else changed
    if isinstance(value, list):
        items = [rewrite_references(v, old, new) for v in value]
        return value if all(a is b for a, b in zip(items, value)) else items
    return value


def merge_identifiers(stored: list[dict[str, Any]], incoming: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The message's identifiers, then every stored identifier it did not carry (by system|value).

    Where both carry one, the message's wins but keeps what only the stored one had (e.g. the NHS
    number verification extension another sender sent, or `use: old` after a merge).
    """
    stored_by_key = {(i.get("system"), i.get("value")): i for i in stored}
    merged: list[dict[str, Any]] = []
    seen: set[tuple[Any, Any]] = set()
    for identifier in incoming:
        key = (identifier.get("system"), identifier.get("value"))
        if key in seen:
            continue
        seen.add(key)
        previous = stored_by_key.get(key)
        merged.append({**previous, **identifier} if previous else identifier)
    merged.extend(i for key, i in stored_by_key.items() if key not in seen)
    return merged


def adopt_identifiers(survivor: list[dict[str, Any]], old: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """After a merge the survivor also carries the old record's identifiers (UK-REFERENCE test 1).

    One the survivor already has an identifier of the same system for (a second NHS number, an
    older MRN from the same assigner) is kept with `use: old`, so the survivor still has exactly
    one current NHS number.
    """
    present = {(i.get("system"), i.get("value")) for i in survivor}
    systems = {i.get("system") for i in survivor if i.get("use") != "old"}
    adopted = list(survivor)
    for identifier in old:
        if (identifier.get("system"), identifier.get("value")) in present:
            continue
        if identifier.get("system") in systems:
            identifier = {**identifier, "use": "old"}
        adopted.append(identifier)
    return adopted


def merge_stored(stored: Mapping[str, Any], incoming: dict[str, Any],
                 not_sent: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The incoming version of a shared resource (a Patient) merged with what is stored.

    The message's content replaces the stored content (it is the newer event), except that
    identifiers are merged (`merge_identifiers`), merge links (`link`) are kept, security
    labels and tags are never dropped by another sender's update (a Patient a mental health trust
    labelled stays labelled; a Patient two trusts send carries both data-owner tags), and the
    elements in `not_sent` — the message carried no segment for them — keep their stored values.
    """
    merged = dict(incoming)
    for element in not_sent:
        if element not in merged and element in stored:
            merged[element] = stored[element]
    identifiers = merge_identifiers(list(stored.get("identifier") or ()), list(incoming.get("identifier") or ()))
    _set_or_drop(merged, "identifier", identifiers)
    links = _union(stored.get("link"), incoming.get("link"), lambda l: (
        (l.get("other") or {}).get("reference"), l.get("type")))
    _set_or_drop(merged, "link", links)
    if stored.get("resourceType") == "Patient" and stored.get("active") is False and "active" not in incoming:
        merged["active"] = False
    meta = dict(incoming.get("meta") or {})
    for element in ("security", "tag"):
        codings = _union((stored.get("meta") or {}).get(element), meta.get(element),
                         lambda c: (c.get("system"), c.get("code")))
        if codings:
            meta[element] = codings
    if meta:
        merged["meta"] = meta
    return merged


def _set_or_drop(document: dict[str, Any], key: str, items: list[Any]) -> None:
    """An element set where it stands, or removed when empty (FHIR has no empty arrays)."""
    if items:
        document[key] = items
    else:
        document.pop(key, None)


def _union(stored: Any, incoming: Any, key: Any) -> list[Any]:
    items = list(incoming or ())
    seen = {key(i) for i in items}
    items.extend(i for i in stored or () if key(i) not in seen)
    return items
