"""audit_log (hash-chained AuditEvents), break-glass review queue

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_INDEXES = {
    'audit_log': [('recorded',), ('user_id', 'seq'), ('org', 'seq'), ('purpose', 'seq'), ('kind', 'seq'),
                  ('action', 'seq'), ('outcome', 'seq')],
    'audit_patients': [('seq',)],
    'audit_entities': [('seq',)],
    'break_glass_reviews': [('audit_seq',)],
}


def _index_name(table: str, columns: tuple[str, ...]) -> str:
    return f"ix_{table}_{'_'.join(columns)}"


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('seq', _PK, autoincrement=False, nullable=False),
    sa.Column('recorded', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('org', sa.String(length=16), nullable=True),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('action', sa.String(length=1), nullable=False),
    sa.Column('subtype', sa.String(length=32), nullable=False),
    sa.Column('outcome', sa.String(length=2), nullable=False),
    sa.Column('break_glass', sa.Boolean(), nullable=False),
    sa.Column('record', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_log')),
    )
    op.create_table('audit_patients',
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('seq', _PK, nullable=False),
    sa.PrimaryKeyConstraint('patient_id', 'seq', name=op.f('pk_audit_patients')),
    )
    op.create_table('audit_entities',
    sa.Column('reference', sa.String(length=200), nullable=False),
    sa.Column('seq', _PK, nullable=False),
    sa.PrimaryKeyConstraint('reference', 'seq', name=op.f('pk_audit_entities')),
    )
    op.create_table('audit_chain_head',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', _PK, nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_chain_head')),
    )
    op.create_table('break_glass_reviews',
    sa.Column('id', _PK, autoincrement=True, nullable=False),
    sa.Column('audit_seq', _PK, nullable=False),
    sa.Column('reviewer', sa.String(length=128), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('reviewed_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_break_glass_reviews')),
    sqlite_autoincrement=True,
    )
    for table, indexes in _INDEXES.items():
        for columns in indexes:
            op.create_index(op.f(_index_name(table, columns)), table, list(columns), unique=False)


def downgrade() -> None:
    for table, indexes in _INDEXES.items():
        for columns in indexes:
            op.drop_index(op.f(_index_name(table, columns)), table_name=table)
    for table in ('break_glass_reviews', 'audit_chain_head', 'audit_entities', 'audit_patients', 'audit_log'):
        op.drop_table(table)
