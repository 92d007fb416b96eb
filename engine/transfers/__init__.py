"""Transfers of care: a discharge raises one FHIR Task per receiving organisation, tracked and delivered.

Pure core: `receivers` (who receives a discharge), `tasks` (the Task and its state machine),
`backoff` (the retry schedule), `subscriptions` (reading a Subscription). I/O at the edges:
`store` (tables and queries), `discharge` (the ingest hook), `actions` (receive/accept/reject),
`delivery` (the outbox worker). docs/transfers.md tells the whole story.
"""
