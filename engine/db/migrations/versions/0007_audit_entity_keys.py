"""audit_log.entities: each record's entity keys in its own row (GIN-indexed on PostgreSQL)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25

PostgreSQL: a text[] column under a GIN index replaces the `audit_entities` rows (moved into it, then
removed); see engine/audit/schema.py for why. SQLite: a JSON column beside the `audit_entities` rows,
which it keeps as its entity index.
"""

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TABLE audit_log ADD COLUMN entities text[]")
        op.execute("UPDATE audit_log SET entities = e.keys FROM (SELECT seq, array_agg(reference) AS keys "
                   "FROM audit_entities GROUP BY seq) AS e WHERE audit_log.seq = e.seq")
        op.execute("UPDATE audit_log SET entities = '{}' WHERE entities IS NULL")
        # A small pending list: the append that fills it merges it, under the chain lock (see schema).
        op.execute("CREATE INDEX ix_audit_log_entities ON audit_log USING gin (entities) "
                   "WITH (gin_pending_list_limit = 128)")
        op.execute("TRUNCATE audit_entities")
    else:
        op.execute("ALTER TABLE audit_log ADD COLUMN entities JSON")
        op.execute("UPDATE audit_log SET entities = (SELECT json_group_array(reference) FROM audit_entities "
                   "WHERE audit_entities.seq = audit_log.seq)")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("INSERT INTO audit_entities (reference, seq) SELECT DISTINCT unnest(entities), seq "
                   "FROM audit_log")
        op.execute("DROP INDEX ix_audit_log_entities")
    op.execute("ALTER TABLE audit_log DROP COLUMN entities")
