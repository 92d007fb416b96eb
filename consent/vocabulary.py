"""The code systems and codes that consent, access control and audit share.

One place, so that what ingest writes, what the gate reads and what the audit records agree.
"""

from __future__ import annotations

# meta.tag: the ODS code of the organisation that holds (controls) the data.
OWNER_TAG_SYSTEM = "https://fhir.sharedcare.dev/CodeSystem/data-owner"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"

# meta.security (UK-REFERENCE §5).
CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

# Purpose of use (v3-ActReason): direct care, break-glass, secondary uses.
ACT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
TREATMENT = "TREAT"
BREAK_GLASS = "BTG"

# Consent (R4).
CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
PATIENT_PRIVACY = "patient-privacy"
RESEARCH = "research"

# NHS RBAC job roles (UK-REFERENCE §4).
RBAC_ROLE_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-SDSJobRoleName"


def owner_tag(ods_code: str) -> dict[str, str]:
    """The meta.tag coding that names `ods_code` as the data's owning organisation."""
    return {"system": OWNER_TAG_SYSTEM, "code": ods_code, "display": "data owner"}


# --- added for the consent decisions (consent/model.py, consent/decide.py) ---

ODS_SITE_SYSTEM = "https://fhir.nhs.uk/Id/ods-site-code"
SDS_USER_SYSTEM = "https://fhir.nhs.uk/Id/sds-user-id"

# Confidentiality codes (v3-Confidentiality): normal, restricted, very restricted.
NORMAL, RESTRICTED, VERY_RESTRICTED = "N", "R", "V"

# Consent R4 (https://hl7.org/fhir/R4/consent.html) and IHE PCF (https://profiles.ihe.net/ITI/PCF).
CONSENT_ACTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentaction"
RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
# Consent.policyRule codes (v3-ActCode) that say what a provision-less root means.
OPT_IN, OPT_OUT = "OPTIN", "OPTOUT"

# An EpisodeOfCare is care-home residency (UK-REFERENCE §6: "residency → EpisodeOfCare with the care home's
# ODS site code") when its type text/display contains one of these phrases, case-insensitive.
CARE_HOME_EPISODE_PHRASES = ("care home", "nursing home", "residential home")
