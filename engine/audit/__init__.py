"""Audit: IHE BALP AuditEvents, written durably, hash-chained, searchable by IG officers."""
