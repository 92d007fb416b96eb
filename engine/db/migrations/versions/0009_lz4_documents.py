"""PostgreSQL: resource documents and raw messages compressed with LZ4 rather than pglz

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

A document over about 2 kB (a discharge Bundle, a long report) is compressed when it is stored (TOAST).
PostgreSQL's default, pglz, showed as about 4 % of its CPU under HL7 v2 ingest, which writes each new
version twice (`resources` and `resource_versions`); LZ4 compresses several times faster and
decompresses faster on reads. Only values written from now on are affected: stored ones stay as they
are, and both kinds are read alike. A server built without LZ4 support keeps pglz (the statement is
skipped). SQLite has no TOAST: nothing to do.
"""

from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_COLUMNS = (('resources', 'content'), ('resource_versions', 'content'), ('hl7_messages', 'raw'))


def _set_compression(method: str) -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table, column in _COLUMNS:
        # feature_not_supported: a server compiled without --with-lz4
        op.execute(f"DO $$ BEGIN ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method};"
                   " EXCEPTION WHEN feature_not_supported THEN NULL; END $$")


def upgrade() -> None:
    _set_compression('lz4')


def downgrade() -> None:
    _set_compression('pglz')
