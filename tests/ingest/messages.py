"""Small HL7 v2 messages for the ingest tests, built field by field (segments end with CR)."""

from __future__ import annotations

NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
# Valid test NHS numbers (modulus 11): UK-REFERENCE §1 and the 999 test range.
NHS_A = "9449305552"
NHS_B = "9912003888"
NHS_C = "9990000018"


def msh(trigger: str, control_id: str, *, sender: str = "RR8", code: str = "ADT", structure: str = "",
        when: str = "20240301101500", accept: str = "", application: str = "") -> str:
    message_type = f"{code}^{trigger}" + (f"^{structure}" if structure else "")
    return (f"MSH|^~\\&|PAS|{sender}|SHAREDCARE|SC|{when}||{message_type}|{control_id}|P|2.4|||"
            f"{accept}|{application}||UNICODE UTF-8")


def pid(*, nhs: str | None = NHS_A, mrn: str | None = "RR81234567", assigner: str = "RR8",
        family: str = "SMITH", given: str = "JANE", birth: str = "19620315", sex: str = "2",
        phone: str = "") -> str:
    ids = []
    if nhs:
        ids.append(f"{nhs}^^^NHS^NH")
    if mrn:
        ids.append(f"{mrn}^^^{assigner}^MR")
    return f"PID|1||{'~'.join(ids)}||{family}^{given}||{birth}|{sex}|||||{phone}"


def pv1(*, visit: str = "V0001234", assigner: str = "RR8", patient_class: str = "I", admitted: str = "202403011005",
        discharged: str = "", destination: str = "") -> str:
    fields = ["PV1", "1", patient_class, f"{assigner}01^WARD 12^BED 4^{assigner}"] + [""] * 15
    fields += [f"{visit}^^^{assigner}^VN"] + [""] * 17 + [destination] + [""] * 6 + [admitted, discharged]
    return "|".join(fields).rstrip("|")


def adt(trigger: str, control_id: str, *, sender: str = "RR8", event: str = "20240301101200",
        visit: str | None = "V0001234", segments: tuple[str, ...] = (), accept: str = "", application: str = "",
        discharged: str = "", **patient: str | None) -> str:
    assigner = sender
    lines = [msh(trigger, control_id, sender=sender, accept=accept, application=application), f"EVN|{trigger}|{event}",
             pid(assigner=assigner, **patient)]  # type: ignore[arg-type]
    if visit is not None:
        lines.append(pv1(visit=visit, assigner=assigner, discharged=discharged))
    lines.extend(segments)
    return "\r".join(lines) + "\r"


def a40(control_id: str, *, survivor_nhs: str = NHS_A, survivor_mrn: str = "RR81234567", old_nhs: str | None = NHS_C,
        old_mrn: str = "RR80000042", sender: str = "RR8", event: str = "20240403110000") -> str:
    old = [f"{old_nhs}^^^NHS^NH"] if old_nhs else []
    old.append(f"{old_mrn}^^^{sender}^MR")
    lines = [msh("A40", control_id, sender=sender, structure="ADT_A39"), f"EVN|A40|{event}",
             pid(nhs=survivor_nhs, mrn=survivor_mrn, assigner=sender), f"MRG|{'~'.join(old)}"]
    return "\r".join(lines) + "\r"
