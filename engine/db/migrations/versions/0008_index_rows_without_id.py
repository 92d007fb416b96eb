"""search index rows without a surrogate key; the absolute-URL reference index only over absolute URLs

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

Nothing reads an index row by an `id` of its own: rows are found through their search indexes and
replaced by `res_pk`. The column's primary-key B-tree (and, on PostgreSQL, its sequence) cost every
index row an insert and WAL of their own, on the hot write paths (HL7 v2 ingest writes about 85 rows a
message). `ix_idx_reference_search_2` (res_type, param, url) now covers only the rows that have a URL
(absolute references to other servers and canonical URLs, a small minority); a search by URL is
`url = …`, which implies `url IS NOT NULL`, so both PostgreSQL and SQLite still use it.
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# The index tables as engine/db/schema.py INDEX_TABLES names them (copied: a migration must not change).
_TABLES = ('idx_string', 'idx_token', 'idx_date', 'idx_reference', 'idx_quantity', 'idx_number', 'idx_uri',
           'care_relationships')
_PK = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == 'postgresql'
    for table in _TABLES:
        if postgresql:  # the primary key constraint, its index and the column's sequence go with it
            op.execute(f"ALTER TABLE {table} DROP COLUMN id")
        else:  # SQLite cannot drop a primary key column: the table is copied (its indexes re-created)
            with op.batch_alter_table(table, recreate='always') as batch_op:
                batch_op.drop_column('id')
    op.execute("DROP INDEX ix_idx_reference_search_2")
    op.execute("CREATE INDEX ix_idx_reference_search_2 ON idx_reference (res_type, param, url) WHERE url IS NOT NULL")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == 'postgresql'
    op.execute("DROP INDEX ix_idx_reference_search_2")
    op.execute("CREATE INDEX ix_idx_reference_search_2 ON idx_reference (res_type, param, url)")
    for table in _TABLES:
        if postgresql:
            op.execute(f"ALTER TABLE {table} ADD COLUMN id bigserial")
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (id)")
        else:
            with op.batch_alter_table(table, recreate='always') as batch_op:
                batch_op.add_column(sa.Column('id', _PK, autoincrement=True, nullable=False))
                batch_op.create_primary_key(f'pk_{table}', ['id'])
