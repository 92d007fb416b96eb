"""Pure consent and access decisions (DESIGN.md: no database, no HTTP, no clock of its own).

- `consent.model`: Requester, AccessRequest, ResourceFacts, Relationship, PatientConsent/Provision
  (`parse_consent`), Decision, RuleVerdict.
- `consent.policy`: Policy as data (`policy.json`), `load_policy`, `check_break_glass_reason`.
- `consent.decide`: `decide`, `decide_patient`, `explain`, `explain_patient` and the rules they combine.
- `consent.labels`: security labels from sensitive code lists; `consent.relationships`: legitimate
  relationships from stored resources; `consent.vocabulary`: the code systems all of them share.
"""
