"""Hospital PAS/EPR senders: the declarative maps, then the sender's configured security labels.

The generic adapter, which the other kinds build on (and which an unknown sender gets when
`SHAREDCARE_ACCEPT_UNKNOWN_SENDERS=1`): `mappings.hl7v2.dispatch.map_message` does the work; this
module adds only what depends on who sent the message —

- Z-segments (UK ADT carries ZU1–ZU8, meaning unverified; UK-REFERENCE §3): kept and reported as
  unmapped by default; a sender configured with `z_segments: "reject"` has them refused (AE, 100).
- security labels from the sender's configuration (`SenderConfig.security_labels`), added to
  `meta.security` of every resource except the shared directory types (Organization, Practitioner,
  PractitionerRole, Location: not patient data, and shared by every sender). A sender's `extra`
  may override that list with `"unlabelled_types": [...]`.
- the data-owner tag (`consent.vocabulary.owner_tag(sender ODS code)` in `meta.tag`) on the same
  resources: the organisation whose data it is, which access control and consent decide on.

Pure: no I/O, no clock (DESIGN.md, "Packages and what each owns").
"""

from __future__ import annotations

from collections.abc import Iterable

from adapters.hl7v2.parser import Message
from adapters.senders import SecurityLabel, SenderConfig
from consent.vocabulary import OWNER_TAG_SYSTEM, owner_tag
from mappings.hl7v2.dispatch import map_message
from mappings.result import SEGMENT_SEQUENCE_ERROR, ErrorLocation, MappingError, MappingResult

DIRECTORY_TYPES = frozenset({"Organization", "Practitioner", "PractitionerRole", "Location"})


def adapt(message: Message, sender: SenderConfig) -> MappingResult:
    """`message` from a hospital → its MappingResult, labelled as the sender's configuration says."""
    check_z_segments(message, sender)
    return label_for_sender(map_message(message, sender), sender, sender.security_labels)


def label_for_sender(result: MappingResult, sender: SenderConfig,
                     labels: Iterable[SecurityLabel]) -> MappingResult:
    """`labels` and the sender's data-owner tag on every resource but the shared directory types."""
    unlabelled = unlabelled_types(sender)
    label_resources(result, labels, unlabelled)
    return tag_owner(result, sender.ods_code, unlabelled)


def check_z_segments(message: Message, sender: SenderConfig) -> None:
    """Refuse Z-segments (AE, HL7 table 0357 code 100) when the sender is configured to."""
    if sender.z_segments != "reject":
        return
    for segment in message.segments:
        if segment.name.startswith("Z"):
            raise MappingError(SEGMENT_SEQUENCE_ERROR,
                               f"Z-segment {segment.name} is not accepted from sender {sender.ods_code}",
                               ErrorLocation(segment.name, segment.occurrence))


def unlabelled_types(sender: SenderConfig) -> frozenset[str]:
    """Resource types the sender's labels are not applied to (configurable, see the module docstring)."""
    configured = sender.extra.get("unlabelled_types")
    return DIRECTORY_TYPES if configured is None else frozenset(configured)


def label_resources(result: MappingResult, labels: Iterable[SecurityLabel],
                    unlabelled: frozenset[str] = DIRECTORY_TYPES) -> MappingResult:
    """Add `labels` to `meta.security` of each resource not in `unlabelled` (FHIR R4 Meta.security).

    Labels already present (the same system and code) are not repeated, so labelling twice
    changes nothing. Resources of the `unlabelled` types lose these labels if a map put them
    there: a shared Organization must not become restricted because one sender labels its data.
    """
    codings = [label.to_coding() for label in labels]
    if not codings:
        return result
    keys = {(c["system"], c["code"]) for c in codings}
    for resource in result.resources:
        meta = resource.get("meta") or {}
        security = [c for c in meta.get("security") or () if (c.get("system"), c.get("code")) not in keys]
        if resource.get("resourceType") not in unlabelled:
            present = {(c.get("system"), c.get("code")) for c in meta.get("security") or ()}
            security = list(meta.get("security") or ()) + [c for c in codings if (c["system"], c["code"]) not in present]
        _set_security(resource, security)
    return result


def tag_owner(result: MappingResult, ods_code: str,
              untagged: frozenset[str] = DIRECTORY_TYPES) -> MappingResult:
    """Name `ods_code` as the data owner in `meta.tag` of each resource not in `untagged` (FHIR R4 Meta.tag).

    The tag is `consent.vocabulary.owner_tag`: one per resource, replacing any other data-owner
    tag a map set, so tagging twice changes nothing. Shared directory resources carry no owner.
    """
    tag = owner_tag(ods_code)
    for resource in result.resources:
        tags = [c for c in (resource.get("meta") or {}).get("tag") or () if c.get("system") != OWNER_TAG_SYSTEM]
        if resource.get("resourceType") not in untagged:
            tags.append(dict(tag))
        _set_meta(resource, "tag", tags)
    return result


def _set_security(resource: dict, security: list[dict]) -> None:
    _set_meta(resource, "security", security)


def _set_meta(resource: dict, element: str, codings: list[dict]) -> None:
    """`meta.<element>` set to `codings`, or removed when empty (an empty meta is removed too)."""
    meta = dict(resource.get("meta") or {})
    if codings:
        meta[element] = codings
    else:
        meta.pop(element, None)
    if not meta:
        resource.pop("meta", None)
    elif "meta" in resource:
        resource["meta"] = meta
    else:  # where FHIR JSON puts it, after the id
        items = list(resource.items())
        at = next((i + 1 for i, (k, _) in enumerate(items) if k == "id"), 0)
        resource.clear()
        resource.update([*items[:at], ("meta", meta), *items[at:]])
