"""Code tables as data: HL7 v2 table values → FHIR codes, with the UK ones.

Sources: the HL7 v2-to-FHIR IG concept maps (http://hl7.org/fhir/uv/v2mappings, "Vocabulary
Maps": AdministrativeSex, NameType, AddressType[Use]/[Type], TelecommunicationUseCode,
TelecommunicationEquipmentType, PatientClass[EncounterClass], MaritalStatus, AllergenType,
AllergySeverity, DiagnosisType, Relationship, ContactRole), UK Core CodeSystems
(NHSDigital/FHIR-R4-UKCORE-STAGING-MAIN `codesystems/`) and the NHS ITK HL7 v2 ADT specification
as summarised in UK-REFERENCE.md §1 and §3. Where UK practice differs from the IG, the UK wins
and the table says so.

A table maps the upper-cased v2 code to a FHIR code, or to `(system, code, display)`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

Coded = tuple[str, str, str]  # (system, code, display)

# --- systems ----------------------------------------------------------------------------------

NHS_NUMBER_SYSTEM: Final = "https://fhir.nhs.uk/Id/nhs-number"
UKCORE_CS: Final = "https://fhir.hl7.org.uk/CodeSystem"
UKCORE_SD: Final = "https://fhir.hl7.org.uk/StructureDefinition"
V3_ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_MARITAL: Final = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
V3_NULL_FLAVOR: Final = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
V3_PARTICIPATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
V3_ROLE_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
V2_0004: Final = "http://terminology.hl7.org/CodeSystem/v2-0004"
V2_0131: Final = "http://terminology.hl7.org/CodeSystem/v2-0131"

VERIFICATION_STATUS_EXTENSION: Final = f"{UKCORE_SD}/Extension-UKCore-NHSNumberVerificationStatus"
VERIFICATION_STATUS_SYSTEM: Final = f"{UKCORE_CS}/UKCore-NHSNumberVerificationStatusEngland"
ETHNIC_CATEGORY_EXTENSION: Final = f"{UKCORE_SD}/Extension-UKCore-EthnicCategory"
ETHNIC_CATEGORY_SYSTEM: Final = f"{UKCORE_CS}/UKCore-EthnicCategoryEngland"
ADMISSION_METHOD_EXTENSION: Final = f"{UKCORE_SD}/Extension-UKCore-AdmissionMethod"
ADMISSION_METHOD_SYSTEM: Final = f"{UKCORE_CS}/UKCore-AdmissionMethodEngland"
SOURCE_OF_ADMISSION_SYSTEM: Final = f"{UKCORE_CS}/UKCore-SourceOfAdmissionEngland"
DISCHARGE_METHOD_EXTENSION: Final = f"{UKCORE_SD}/Extension-UKCore-DischargeMethod"
DISCHARGE_METHOD_SYSTEM: Final = f"{UKCORE_CS}/UKCore-DischargeMethodEngland"
DISCHARGE_DESTINATION_SYSTEM: Final = f"{UKCORE_CS}/UKCore-DischargeDestinationEngland"

# HL7 table 0396 (coding system) → FHIR system URI. UK senders use SNOMED CT, ICD-10 (the NHS
# edition, http://hl7.org/fhir/sid/icd-10-uk), Read v2 and CTV3 as well as LOINC.
CODING_SYSTEMS: Final = MappingProxyType({
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "SNOMEDCT": "http://snomed.info/sct",
    "SNOMED-CT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "LOINC": "http://loinc.org",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I10UK": "http://hl7.org/fhir/sid/icd-10-uk",
    "ICD10UK": "http://hl7.org/fhir/sid/icd-10-uk",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9CDX": "http://hl7.org/fhir/sid/icd-9-cm",
    "READ": "http://read.info/readv2",
    "READ2": "http://read.info/readv2",
    "RD2": "http://read.info/readv2",
    "CTV3": "http://read.info/ctv3",
    "UCUM": "http://unitsofmeasure.org",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "ISO639": "urn:ietf:bcp:47",
    "ISO3166": "urn:iso:std:iso:3166",
    "DMD": "https://dmd.nhs.uk",
})

# --- identifiers ------------------------------------------------------------------------------

# UK-REFERENCE §3: a CX whose CX-4 or CX-5 is one of these carries the NHS number.
NHS_NUMBER_MARKERS: Final = frozenset({"NHS", "NH", "NHSNMBR", "NHSNBR"})

# XCN.13 / XCN.9 register codes → UK Core practitioner identifier systems (UK-REFERENCE §1).
PRACTITIONER_SYSTEMS: Final = MappingProxyType({
    "GMC": "https://fhir.hl7.org.uk/Id/gmc-number",
    "GMP": "https://fhir.hl7.org.uk/Id/gmp-number",
    "NMC": "https://fhir.hl7.org.uk/Id/nmc-number",
    "GPHC": "https://fhir.hl7.org.uk/Id/gphc-number",
    "HCPC": "https://fhir.hl7.org.uk/Id/hcpc-number",
    "SDS": "https://fhir.nhs.uk/Id/sds-user-id",
})

# The v2-0203 codes our maps emit, with their displays (HL7 table 0203).
IDENTIFIER_TYPE_DISPLAY: Final = MappingProxyType({
    "MR": "Medical record number",
    "NH": "National Health Plan Identifier",
    "VN": "Visit number",
    "PLAC": "Placer Identifier",
    "FILL": "Filler Identifier",
    "PI": "Patient internal identifier",
    "PN": "Person number",
    "PRN": "Provider number",
    "DN": "Doctor number",
    "AN": "Account number",
    "PT": "Patient external identifier",
})

# --- Patient ----------------------------------------------------------------------------------

# PID-8. IG AdministrativeSex (table 0001: M F O U A N) plus the NHS Data Dictionary "person stated
# gender" codes 1 2 9 X that UK senders use (UK-REFERENCE §1: 1/2/9/X ↔ male/female/other/unknown).
GENDER: Final = MappingProxyType({
    "M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "other",
    "1": "male", "2": "female", "9": "other", "X": "unknown", "0": "unknown",
})

# PID-32 identity reliability code NSTS01–NSTS08 → NHS number verification status 01–08
# (UK Core CodeSystem UKCore-NHSNumberVerificationStatusEngland).
VERIFICATION_STATUS: Final = MappingProxyType({
    "01": "Number present and verified",
    "02": "Number present but not traced",
    "03": "Trace required",
    "04": "Trace attempted - No match or multiple match found",
    "05": "Trace needs to be resolved - (NHS number or patient detail conflict)",
    "06": "Trace in progress",
    "07": "Number not present and trace not required",
    "08": "Trace postponed (baby under six weeks old)",
})

# PID-22 (CE, ethnic group) → UK Core EthnicCategoryEngland (NHS Data Dictionary ethnic category).
# UK practice wins over the IG, which leaves PID-22 to a local extension.
ETHNIC_CATEGORY: Final = MappingProxyType({
    "A": "White - British",
    "B": "White - Irish",
    "C": "White - Any other White background",
    "D": "Mixed - White and Black Caribbean",
    "E": "Mixed - White and Black African",
    "F": "Mixed - White and Asian",
    "G": "Mixed - Any other mixed background",
    "H": "Asian or Asian British - Indian",
    "J": "Asian or Asian British - Pakistani",
    "K": "Asian or Asian British - Bangladeshi",
    "L": "Asian or Asian British - Any other Asian background",
    "M": "Black or Black British - Caribbean",
    "N": "Black or Black British - African",
    "P": "Black or Black British - Any other Black background",
    "R": "Other Ethnic Groups - Chinese",
    "S": "Other Ethnic Groups - Any other ethnic group",
    "Z": "Not stated",
    "99": "Not known",
})

# PID-16 (table 0002) → v3 MaritalStatus / NullFlavor (IG MaritalStatus). The IG maps P twice
# (T "Domestic partner" and a v3 P "Polygamous"); we keep T.
MARITAL_STATUS: Final = MappingProxyType({
    "A": (V3_MARITAL, "L", "Legally Separated"),
    "D": (V3_MARITAL, "D", "Divorced"),
    "M": (V3_MARITAL, "M", "Married"),
    "S": (V3_MARITAL, "S", "Never Married"),
    "W": (V3_MARITAL, "W", "Widowed"),
    "C": (V3_MARITAL, "C", "Common Law"),
    "G": (V3_MARITAL, "T", "Domestic partner"),
    "P": (V3_MARITAL, "T", "Domestic partner"),
    "R": (V3_MARITAL, "T", "Domestic partner"),
    "E": (V3_MARITAL, "L", "Legally Separated"),
    "N": (V3_MARITAL, "A", "Annulled"),
    "I": (V3_MARITAL, "I", "Interlocutory"),
    "B": (V3_MARITAL, "U", "unmarried"),
    "U": (V3_NULL_FLAVOR, "UNK", "Unknown"),
    "O": (V3_NULL_FLAVOR, "OTH", "Other"),
    "T": (V3_NULL_FLAVOR, "NAVU", "Not available"),
})

# XPN.7 (table 0200) → HumanName.use (IG NameType).
NAME_USE: Final = MappingProxyType({
    "BAD": "old", "D": "usual", "L": "official", "M": "maiden", "MSK": "anonymous", "N": "nickname",
    "NAV": "temp", "R": "official", "TEMP": "temp", "NOUSE": "old",
})

# XAD.7 (table 0190) → Address.use / Address.type (IG AddressType[Use], AddressType[Type]).
ADDRESS_USE: Final = MappingProxyType({
    "BA": "old", "BI": "billing", "C": "temp", "B": "work", "H": "home", "O": "work",
})
ADDRESS_TYPE: Final = MappingProxyType({"M": "postal", "SH": "postal"})

# XTN.2 (table 0201) → ContactPoint.use; XTN.3 (table 0202) → ContactPoint.system
# (IG TelecommunicationUseCode / TelecommunicationEquipmentType; the IG's CP → "mobile" is a use,
# so CP gives system phone with use mobile).
TELECOM_USE: Final = MappingProxyType({"PRN": "home", "WPN": "work", "PRS": "mobile", "ORN": "home",
                                       "VHN": "temp"})
TELECOM_SYSTEM: Final = MappingProxyType({
    "PH": "phone", "FX": "fax", "MD": "other", "CP": "phone", "SAT": "other", "BP": "pager",
    "INTERNET": "email", "X.400": "email", "TDD": "other", "TTY": "other",
})

# NK1-3 (table 0063) → RelatedPerson.relationship (IG Relationship concept map, row for row).
V2_0063: Final = "http://terminology.hl7.org/CodeSystem/v2-0063"
RELATIONSHIP: Final = MappingProxyType({
    "SEL": (V3_ROLE_CODE, "ONESELF", "self"),
    "SPO": (V3_ROLE_CODE, "SPS", "spouse"),
    "DOM": (V3_ROLE_CODE, "SIGOTHR", "significant other"),
    "CHD": (V3_ROLE_CODE, "CHILD", "child"),
    "GCH": (V3_ROLE_CODE, "GRNDCHILD", "grandchild"),
    "NCH": (V3_ROLE_CODE, "NCHILD", "natural child"),
    "SCH": (V3_ROLE_CODE, "STPCHLD", "step child"),
    "FCH": (V3_ROLE_CODE, "CHLDFOST", "foster child"),
    "DEP": (V2_0063, "DEP", "Handicapped dependent"),
    "WRD": (V2_0063, "WRD", "Ward of court"),
    "PAR": (V3_ROLE_CODE, "PRN", "parent"),
    "MTH": (V3_ROLE_CODE, "MTH", "mother"),
    "FTH": (V3_ROLE_CODE, "FTH", "father"),
    "CGV": (V2_0063, "CGV", "Care giver"),
    "GRD": (V2_0063, "GRD", "Guardian"),
    "GRP": (V3_ROLE_CODE, "GRPRN", "grandparent"),
    "EXF": (V3_ROLE_CODE, "EXT", "extended family member"),
    "SIB": (V3_ROLE_CODE, "SIB", "sibling"),
    "BRO": (V3_ROLE_CODE, "BRO", "brother"),
    "SIS": (V3_ROLE_CODE, "SIS", "sister"),
    "FND": (V3_ROLE_CODE, "FRND", "unrelated friend"),
    "OAD": (V2_0063, "OAD", "Other adult"),
    "EME": (V2_0063, "EME", "Employee"),
    "EMR": (V2_0131, "E", "Employer"),
    "ASC": (V2_0063, "ASC", "Associate"),
    "EMC": (V2_0131, "C", "Emergency Contact"),
    "OWN": (V2_0063, "OWN", "Owner"),
    "TRA": (V2_0063, "TRA", "Trainer"),
    "MGR": (V2_0063, "MGR", "Manager"),
    "NON": (V2_0063, "NON", "None"),
    "UNK": (V2_0131, "U", "Unknown"),
    "OTH": (V2_0131, "O", "Other"),
})

# NK1-7 (table 0131) contact role → Patient.contact.relationship (v2-0131, as the IG's ContactRole).
CONTACT_ROLE_SYSTEM: Final = V2_0131

# --- Encounter --------------------------------------------------------------------------------

# PV1-2 (table 0004) → Encounter.class (IG PatientClass[EncounterClass]; UK-REFERENCE §3 E I O P).
ENCOUNTER_CLASS: Final = MappingProxyType({
    "E": (V3_ACT_CODE, "EMER", "emergency"),
    "I": (V3_ACT_CODE, "IMP", "inpatient encounter"),
    "O": (V3_ACT_CODE, "AMB", "ambulatory"),
    "P": (V3_ACT_CODE, "PRENC", "pre-admission"),
    "R": (V2_0004, "R", "Recurring patient"),
    "B": (V2_0004, "B", "Obstetrics"),
    "C": (V2_0004, "C", "Commercial Account"),
    "N": (V2_0004, "N", "Not Applicable"),
    "U": (V2_0004, "U", "Unknown"),
})

# ADT trigger → Encounter.status (UK-REFERENCE §3). A08 has no fixed status: see
# `encounter.status_from_times` (finished when PV1-45 is valued, else in-progress).
TRIGGER_STATUS: Final = MappingProxyType({
    "A01": "in-progress", "A02": "in-progress", "A13": "in-progress",
    "A03": "finished",
    "A04": "planned", "A05": "planned",
    "A11": "cancelled",
    "A12": "in-progress",  # cancel transfer: still admitted, at the prior location
})

# PV1-4 admission method (UK ITK: NHS Data Dictionary admission method) → UK Core AdmissionMethod
# extension. The IG maps PV1-4 to Encounter.type (AdmissionType); UK practice wins.
ADMISSION_METHOD: Final = MappingProxyType({
    "11": "Elective Admission: Waiting list",
    "12": "Elective Admission: Booked",
    "13": "Elective Admission: Planned",
    "21": "Emergency Admission: Emergency Care Department or dental casualty department of the Health "
          "Care Provider",
    "22": "Emergency Admission: General Practitioner: after a request for immediate admission has been made "
          "direct to a Hospital Provider, i.e. not through a Bed bureau, by a General Practitioner or deputy",
    "23": "Emergency Admission: Bed bureau",
    "24": "Emergency Admission: Consultant Clinic, of this or another Health Care Provider",
    "25": "Emergency Admission: Admission via Mental Health Crisis Resolution Team",
    "2A": "Emergency Admission: Emergency Care Department of another provider where the Patient had not "
          "been admitted",
    "2B": "Emergency Admission: Transfer of an admitted Patient from another Hospital Provider in an emergency",
    "2C": "Emergency Admission: Baby born at home as intended",
    "2D": "Emergency Admission: Other emergency admission",
    "28": "Emergency Admission: Other means, examples are: - admitted from the Emergency Care Department of "
          "another provider where they had not been admitted - transfer of an admitted Patient from another "
          "Hospital Provider in an emergency - baby born at home as intended",
    "31": "Maternity Admission: Admitted ante partum",
    "32": "Maternity Admission: Admitted post partum",
    "81": "Other Admission: Transfer of any admitted Patient from other Hospital Provider other than in an "
          "emergency",
    "82": "Other Admission: The birth of a baby in this Health Care Provider",
    "83": "Other Admission: Baby born outside the Health Care Provider except when born at home as intended",
    "98": "Not applicable",
    "99": "Admission Method not known",
})

# PV1-14 source of admission → Encounter.hospitalization.admitSource (UK Core binding; the IG
# leaves table 0023 without vocabulary).
SOURCE_OF_ADMISSION: Final = MappingProxyType({
    "19": "Usual place of residence unless listed below, for example, a private dwelling whether owner "
          "occupied or owned by Local Authority, housing association or other landlord. This includes "
          "wardened accommodation but not residential accommodation where health care is provided. It "
          "also includes Patients with no fixed abode.",
    "29": "Temporary place of residence when usually resident elsewhere (e.g. hotels, residential "
          "Educational Establishments)",
    "39": "Penal establishment, Court, or Police Station / Police Custody Suite",
    "49": "NHS other Hospital Provider - high security psychiatric accommodation in an NHS Hospital "
          "Provider (NHS Trust or NHS Foundation Trust)",
    "51": "NHS other Hospital Provider - Ward for general Patients or the younger physically disabled or "
          "Emergency Care Department",
    "52": "NHS other Hospital Provider - Ward for maternity Patients or Neonates",
    "53": "NHS other Hospital Provider - Ward for Patients who are mentally ill or have Learning Disabilities",
    "54": "NHS run Care Home",
    "65": "Local Authority residential accommodation i.e. where care is provided",
    "66": "Local Authority foster care",
    "79": "Babies born in or on the way to hospital",
    "85": "Non-NHS (other than Local Authority) run Care Home",
    "87": "Non NHS run hospital",
    "88": "Non-NHS (other than Local Authority) run Hospice",
    "98": "Not applicable",
    "99": "Source of admission not known",
})

# PV1-36 discharge method (UK ITK) → UK Core DischargeMethod extension. The IG maps PV1-36
# (discharge disposition) to hospitalization.dischargeDisposition; in UK messages PV1-36 is the
# method and PV1-37 the destination, so UK practice wins.
DISCHARGE_METHOD: Final = MappingProxyType({
    "1": "Patient discharged on clinical advice or with clinical consent",
    "3": "Patient discharged by mental health review tribunal, Home Secretary or Court",
    "4": "Patient died",
    "5": "Stillbirth",
    "6": "Patient discharged him/herself",
    "7": "Patient discharged by a relative or advocate",
    "8": "Not applicable (Hospital Provider Spell not finished at episode end (i.e. not discharged) or "
         "current episode unfinished)",
    "9": "Method of discharge not known",
})

# PV1-37 discharge destination (UK ITK) → hospitalization.dischargeDisposition (UK Core binding).
# The IG maps PV1-37 (DLD) to hospitalization.destination (a Location); UK practice wins.
DISCHARGE_DESTINATION: Final = MappingProxyType({
    "19": "Usual place of residence unless listed below, for example, a private dwelling whether owner "
          "occupied or owned by Local Authority, housing association or other landlord. This includes "
          "wardened accommodation but not residential accommodation where health care is provided. It "
          "also includes patients with no fixed abode.",
    "29": "Temporary place of residence when usually resident elsewhere (includes hotel, residential "
          "Educational Establishment)",
    "30": "Repatriation from high security psychiatric accommodation in an NHS Hospital Provider (NHS Trust "
          "or NHS Foundation Trust)",
    "37": "Court",
    "38": "Penal establishment or police station",
    "48": "High Security Psychiatric Hospital, Scotland",
    "49": "NHS other Hospital Provider - high security psychiatric accommodation",
    "50": "NHS other Hospital Provider - medium secure unit",
    "51": "NHS other Hospital Provider - Ward for general patients or the younger physically disabled",
    "52": "NHS other Hospital Provider - Ward for maternity patients or Neonates",
    "53": "NHS other Hospital Provider - Ward for patients who are mentally ill or have Learning Disabilities",
    "54": "NHS run Care Home",
    "65": "Local Authority residential accommodation i.e. where care is provided",
    "66": "Local Authority foster care",
    "79": "Not applicable - Patient died or stillbirth",
    "84": "Non-NHS run hospital - medium secure unit",
    "85": "Non-NHS (other than Local Authority) run Care Home",
    "87": "Non-NHS run hospital",
    "88": "Non-NHS (other than Local Authority) run Hospice",
    "98": "Not applicable - Hospital Provider Spell not finished at episode end (i.e. not discharged) or "
          "current episode unfinished",
    "99": "Not known",
})

# Discharge destinations that are a care home (UK-REFERENCE §1; test case 6).
CARE_HOME_DESTINATIONS: Final = frozenset({"54", "65", "85"})

# Encounter.participant.type for PV1-7/8/9/17 (IG PV1[Encounter]).
PARTICIPANT_TYPES: Final = MappingProxyType({
    7: (V3_PARTICIPATION, "ATND", "attender"),
    8: (V3_PARTICIPATION, "REF", "referrer"),
    9: (V3_PARTICIPATION, "CON", "consultant"),
    17: (V3_PARTICIPATION, "ADM", "admitter"),
})

# --- AllergyIntolerance / Condition ---------------------------------------------------------

# AL1-2 (table 0127) → AllergyIntolerance.category (IG AllergenType[AllergyIntoleranceCategory]; MA and
# MC have no category there) and → AllergyIntolerance.type (IG AllergyType; MC has none).
ALLERGY_CATEGORY: Final = MappingProxyType({
    "DA": "medication", "FA": "food", "EA": "environment", "AA": "biologic", "PA": "environment",
    "LA": "environment",
})
ALLERGY_TYPE: Final = MappingProxyType({code: "allergy" for code in ("DA", "FA", "MA", "EA", "AA", "PA", "LA")})
# AL1-4 (table 0128) → criticality and reaction severity (IG AllergySeverity; MO and U have no
# criticality there).
ALLERGY_CRITICALITY: Final = MappingProxyType({"SV": "high", "MI": "low"})
ALLERGY_SEVERITY: Final = MappingProxyType({"SV": "severe", "MO": "moderate", "MI": "mild"})

# DG1-6 (table 0052) diagnosis type. The IG maps only A → diagnosis-role AD (on Encounter.diagnosis);
# every DG1 Condition is an encounter-diagnosis (condition-category) and W/F are kept as the
# sender's v2-0052 coding on Condition.category too, so nothing is lost.
CONDITION_CATEGORY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
V2_0052: Final = "http://terminology.hl7.org/CodeSystem/v2-0052"
DIAGNOSIS_TYPE: Final = MappingProxyType({"A": "Admitting", "W": "Working", "F": "Final"})
