"""access control: care relationships, break-glass grants

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('care_relationships',
    sa.Column('id', _PK, autoincrement=True, nullable=False),
    sa.Column('res_pk', _PK, nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('org', sa.String(length=128), nullable=False),
    sa.Column('low', sa.DateTime(), nullable=True),
    sa.Column('high', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_care_relationships'))
    )
    with op.batch_alter_table('care_relationships', schema=None) as batch_op:
        batch_op.create_index('ix_care_relationships_res_pk', ['res_pk'], unique=False)
        batch_op.create_index('ix_care_relationships_search_0', ['org', 'patient_id'], unique=False)
        batch_op.create_index('ix_care_relationships_search_1', ['patient_id'], unique=False)

    op.create_table('break_glass_grants',
    sa.Column('id', _PK, autoincrement=True, nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('org', sa.String(length=16), nullable=True),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('started', sa.DateTime(), nullable=False),
    sa.Column('expires', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_break_glass_grants'))
    )
    with op.batch_alter_table('break_glass_grants', schema=None) as batch_op:
        batch_op.create_index('ix_break_glass_grants_user_id_patient_id_expires',
                              ['user_id', 'patient_id', 'expires'], unique=False)
        batch_op.create_index('ix_break_glass_grants_started', ['started'], unique=False)


def downgrade() -> None:
    op.drop_table('break_glass_grants')
    op.drop_table('care_relationships')
