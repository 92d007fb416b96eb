"""Security labelling from code lists (UK-REFERENCE §5): which `meta.security` codings a resource calls for.

Ingest applies them (`apply_labels`) so that the gate decides on labels alone and never re-reads codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consent.model import resource_codes
from consent.policy import Policy, normal_coding


def sensitivity_labels(document: Mapping[str, Any], policy: Policy) -> list[dict[str, str]]:
    """The meta.security codings the policy's sensitive code lists call for (e.g. ICD-10 F32 → v3-ActCode
    PSY), plus the policy's confidentiality label (v3-Confidentiality R) when any applies; sorted by
    (system, code), without duplicates."""
    coded = resource_codes(document)
    if not coded:
        return []  # nothing coded (a Patient, an Organization…): the common case
    codes = {normal_coding(coding, policy) for coding in coded}
    found = {
        (code_list.label["system"], code_list.label["code"]): dict(code_list.label)
        for code_list in policy.code_list_index.matching(codes)
    }
    if found:
        confidentiality = policy.confidentiality_label
        found.setdefault((confidentiality["system"], confidentiality["code"]), dict(confidentiality))
    return [found[key] for key in sorted(found)]


def apply_labels(document: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    """`document` with `sensitivity_labels` merged into `meta.security`: existing labels kept in their
    order, new ones appended in sorted order, nothing added twice (idempotent). A new dict; the input is
    never changed (its nested parts are shared, and only `meta` is rebuilt when a label is added)."""
    labels = sensitivity_labels(document, policy)
    if not labels:
        return dict(document)
    meta = document.get("meta") if isinstance(document.get("meta"), Mapping) else {}
    security = list(meta.get("security") or [])
    present = {(c.get("system"), c.get("code")) for c in security if isinstance(c, Mapping)}
    additions = [c for c in labels if (c["system"], c["code"]) not in present]
    if not additions:
        return dict(document)
    return {**document, "meta": {**meta, "security": security + additions}}
