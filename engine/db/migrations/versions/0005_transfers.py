"""transfers of care: delivery outbox and attempts, subscriptions, per-organisation endpoints

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

Tables of engine/transfers/schema.py; they refer to no table of another revision.
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('transfer_outbox',
    sa.Column('id', _PK, autoincrement=True, nullable=False),
    sa.Column('delivery_key', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('task_id', sa.String(length=64), nullable=False),
    sa.Column('task_version', sa.Integer(), nullable=False),
    sa.Column('owner_ods', sa.String(length=64), nullable=True),
    sa.Column('target_kind', sa.String(length=16), nullable=False),
    sa.Column('target_ref', sa.String(length=128), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('headers', sa.JSON(), nullable=False),
    sa.Column('body', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('retry_from', sa.DateTime(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=False),
    sa.Column('claimed_by', sa.String(length=64), nullable=True),
    sa.Column('claimed_until', sa.DateTime(), nullable=True),
    sa.Column('delivered_at', sa.DateTime(), nullable=True),
    sa.Column('dead_at', sa.DateTime(), nullable=True),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transfer_outbox')),
    sa.UniqueConstraint('delivery_key', name=op.f('uq_transfer_outbox_delivery_key')),
    sqlite_autoincrement=True,
    )
    with op.batch_alter_table('transfer_outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_transfer_outbox_status_next_attempt_at'), ['status', 'next_attempt_at'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_transfer_outbox_task_id'), ['task_id'], unique=False)

    op.create_table('transfer_delivery_attempts',
    sa.Column('id', _PK, autoincrement=True, nullable=False),
    sa.Column('outbox_id', _PK, nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('worker', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transfer_delivery_attempts')),
    )
    with op.batch_alter_table('transfer_delivery_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_transfer_delivery_attempts_outbox_id'), ['outbox_id'], unique=False)

    op.create_table('transfer_subscriptions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('criteria', sa.String(length=1024), nullable=False),
    sa.Column('owner_ods', sa.String(length=64), nullable=True),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('content', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transfer_subscriptions')),
    )
    with op.batch_alter_table('transfer_subscriptions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_transfer_subscriptions_status'), ['status'], unique=False)

    op.create_table('transfer_endpoints',
    sa.Column('ods_code', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=2048), nullable=False),
    sa.Column('headers', sa.JSON(), nullable=False),
    sa.Column('payload', sa.String(length=64), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('ods_code', name=op.f('pk_transfer_endpoints')),
    )


def downgrade() -> None:
    op.drop_table('transfer_endpoints')
    with op.batch_alter_table('transfer_subscriptions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_transfer_subscriptions_status'))
    op.drop_table('transfer_subscriptions')
    with op.batch_alter_table('transfer_delivery_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_transfer_delivery_attempts_outbox_id'))
    op.drop_table('transfer_delivery_attempts')
    with op.batch_alter_table('transfer_outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_transfer_outbox_task_id'))
        batch_op.drop_index(batch_op.f('ix_transfer_outbox_status_next_attempt_at'))
    op.drop_table('transfer_outbox')
