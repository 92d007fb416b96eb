"""store: resources, versions, search index

Revision ID: 0001
Revises: 
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('idx_date',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('res_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('low', sa.DateTime(), nullable=True),
    sa.Column('high', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idx_date'))
    )
    with op.batch_alter_table('idx_date', schema=None) as batch_op:
        batch_op.create_index('ix_idx_date_res_pk', ['res_pk'], unique=False)
        batch_op.create_index('ix_idx_date_search_0', ['res_type', 'param', 'low', 'high'], unique=False)
        batch_op.create_index('ix_idx_date_search_1', ['res_type', 'param', 'high'], unique=False)

    op.create_table('idx_number',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('res_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idx_number'))
    )
    with op.batch_alter_table('idx_number', schema=None) as batch_op:
        batch_op.create_index('ix_idx_number_res_pk', ['res_pk'], unique=False)
        batch_op.create_index('ix_idx_number_search_0', ['res_type', 'param', 'value'], unique=False)

    op.create_table('idx_quantity',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('res_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('system', sa.String(length=256), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idx_quantity'))
    )
    with op.batch_alter_table('idx_quantity', schema=None) as batch_op:
        batch_op.create_index('ix_idx_quantity_res_pk', ['res_pk'], unique=False)
        batch_op.create_index('ix_idx_quantity_search_0', ['res_type', 'param', 'code', 'value'], unique=False)
        batch_op.create_index('ix_idx_quantity_search_1', ['res_type', 'param', 'value'], unique=False)

    op.create_table('idx_reference',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('res_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('target_type', sa.String(length=64), nullable=True),
    sa.Column('target_id', sa.String(length=64), nullable=True),
    sa.Column('url', sa.String(length=512), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idx_reference'))
    )
    with op.batch_alter_table('idx_reference', schema=None) as batch_op:
        batch_op.create_index('ix_idx_reference_res_pk', ['res_pk'], unique=False)
        batch_op.create_index('ix_idx_reference_search_0', ['res_type', 'param', 'target_id', 'target_type'], unique=False)
        batch_op.create_index('ix_idx_reference_search_1', ['target_type', 'target_id'], unique=False)
        batch_op.create_index('ix_idx_reference_search_2', ['res_type', 'param', 'url'], unique=False)

    op.create_table('idx_string',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('res_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=256), nullable=False),
    sa.Column('exact', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idx_string'))
    )
    with op.batch_alter_table('idx_string', schema=None) as batch_op:
        batch_op.create_index('ix_idx_string_res_pk', ['res_pk'], unique=False)
        batch_op.create_index('ix_idx_string_search_0', ['res_type', 'param', 'value'], unique=False, postgresql_ops={'value': 'varchar_pattern_ops'})
        batch_op.create_index('ix_idx_string_search_1', ['res_type', 'param', 'exact'], unique=False)

    op.create_table('idx_token',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('res_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('system', sa.String(length=256), nullable=False),
    sa.Column('code', sa.String(length=256), nullable=False),
    sa.Column('display', sa.String(length=256), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idx_token'))
    )
    with op.batch_alter_table('idx_token', schema=None) as batch_op:
        batch_op.create_index('ix_idx_token_res_pk', ['res_pk'], unique=False)
        batch_op.create_index('ix_idx_token_search_0', ['res_type', 'param', 'code', 'system'], unique=False)
        batch_op.create_index('ix_idx_token_search_1', ['res_type', 'param', 'system'], unique=False)

    op.create_table('idx_uri',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('res_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=512), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idx_uri'))
    )
    with op.batch_alter_table('idx_uri', schema=None) as batch_op:
        batch_op.create_index('ix_idx_uri_res_pk', ['res_pk'], unique=False)
        batch_op.create_index('ix_idx_uri_search_0', ['res_type', 'param', 'value'], unique=False)

    op.create_table('resource_versions',
    sa.Column('res_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('last_updated', sa.DateTime(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('content', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.PrimaryKeyConstraint('res_pk', 'version_id', name=op.f('pk_resource_versions'))
    )
    with op.batch_alter_table('resource_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_resource_versions_last_updated'), ['last_updated'], unique=False)
        batch_op.create_index(batch_op.f('ix_resource_versions_res_type_last_updated'), ['res_type', 'last_updated'], unique=False)
        batch_op.create_index(batch_op.f('ix_resource_versions_res_type_res_id_version_id'), ['res_type', 'res_id', 'version_id'], unique=False)

    op.create_table('resources',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.DateTime(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('content', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_resources')),
    sa.UniqueConstraint('res_type', 'res_id', name=op.f('uq_resources_res_type_res_id'))
    )
    with op.batch_alter_table('resources', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_resources_patient_id_res_type'), ['patient_id', 'res_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_resources_res_type_last_updated'), ['res_type', 'last_updated'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('resources', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_resources_res_type_last_updated'))
        batch_op.drop_index(batch_op.f('ix_resources_patient_id_res_type'))

    op.drop_table('resources')
    with op.batch_alter_table('resource_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_resource_versions_res_type_res_id_version_id'))
        batch_op.drop_index(batch_op.f('ix_resource_versions_res_type_last_updated'))
        batch_op.drop_index(batch_op.f('ix_resource_versions_last_updated'))

    op.drop_table('resource_versions')
    with op.batch_alter_table('idx_uri', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_uri_search_0')
        batch_op.drop_index('ix_idx_uri_res_pk')

    op.drop_table('idx_uri')
    with op.batch_alter_table('idx_token', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_token_search_1')
        batch_op.drop_index('ix_idx_token_search_0')
        batch_op.drop_index('ix_idx_token_res_pk')

    op.drop_table('idx_token')
    with op.batch_alter_table('idx_string', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_string_search_1')
        batch_op.drop_index('ix_idx_string_search_0', postgresql_ops={'value': 'varchar_pattern_ops'})
        batch_op.drop_index('ix_idx_string_res_pk')

    op.drop_table('idx_string')
    with op.batch_alter_table('idx_reference', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_reference_search_2')
        batch_op.drop_index('ix_idx_reference_search_1')
        batch_op.drop_index('ix_idx_reference_search_0')
        batch_op.drop_index('ix_idx_reference_res_pk')

    op.drop_table('idx_reference')
    with op.batch_alter_table('idx_quantity', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_quantity_search_1')
        batch_op.drop_index('ix_idx_quantity_search_0')
        batch_op.drop_index('ix_idx_quantity_res_pk')

    op.drop_table('idx_quantity')
    with op.batch_alter_table('idx_number', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_number_search_0')
        batch_op.drop_index('ix_idx_number_res_pk')

    op.drop_table('idx_number')
    with op.batch_alter_table('idx_date', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_date_search_1')
        batch_op.drop_index('ix_idx_date_search_0')
        batch_op.drop_index('ix_idx_date_res_pk')

    op.drop_table('idx_date')
