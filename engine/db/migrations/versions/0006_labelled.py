"""resources.labelled: whether a resource carries security labels, computed by the database

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25

A generated column (engine/db/schema.py, CarriesSecurityLabels): stored on PostgreSQL (adding it
rewrites the table once), virtual on SQLite (which cannot add a stored one to an existing table). A
partial index over the labelled rows finds a patient's labelled resources of one type without reading
the others (the access gate's hidden-labels check).
"""

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# As engine.db.schema.LABELLED_SQL (copied: a migration must not change when the code does).
_LABELLED = {
    'postgresql': "(content -> 'meta' -> 'security') IS NOT NULL",
    'sqlite': "json_extract(content, '$.meta.security') IS NOT NULL",
}
_KIND = {'postgresql': 'STORED', 'sqlite': 'VIRTUAL'}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(f"ALTER TABLE resources ADD COLUMN labelled BOOLEAN "
               f"GENERATED ALWAYS AS ({_LABELLED[dialect]}) {_KIND[dialect]}")
    op.execute("CREATE INDEX ix_resources_labelled ON resources (patient_id, res_type) WHERE labelled")


def downgrade() -> None:
    op.execute("DROP INDEX ix_resources_labelled")
    op.execute("ALTER TABLE resources DROP COLUMN labelled")
