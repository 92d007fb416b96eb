"""ingest: hl7_messages (message store and error queue), resource_sources (staleness)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('hl7_messages',
    sa.Column('id', _PK, autoincrement=True, nullable=False),
    sa.Column('sender', sa.String(length=64), nullable=True),
    sa.Column('control_id', sa.String(length=200), nullable=True),
    sa.Column('message_type', sa.String(length=32), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('ack_code', sa.String(length=2), nullable=False),
    sa.Column('error_code', sa.String(length=8), nullable=True),
    sa.Column('error_text', sa.Text(), nullable=True),
    sa.Column('error_location', sa.String(length=64), nullable=True),
    sa.Column('raw', sa.Text(), nullable=False),
    sa.Column('ack', sa.Text(), nullable=True),
    sa.Column('transport', sa.String(length=16), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.Column('event_time', sa.DateTime(), nullable=True),
    sa.Column('processed_at', sa.DateTime(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('unmapped', sa.JSON(), nullable=True),
    sa.Column('warnings', sa.JSON(), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hl7_messages')),
    sa.UniqueConstraint('sender', 'control_id', name=op.f('uq_hl7_messages_sender_control_id')),
    sqlite_autoincrement=True,
    )
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hl7_messages_status_received_at'), ['status', 'received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_hl7_messages_error_code'), ['error_code'], unique=False)
        batch_op.create_index(batch_op.f('ix_hl7_messages_received_at'), ['received_at'], unique=False)

    op.create_table('resource_sources',
    sa.Column('res_pk', _PK, nullable=False),
    sa.Column('event_time', sa.DateTime(), nullable=True),
    sa.Column('message_id', _PK, nullable=True),
    sa.PrimaryKeyConstraint('res_pk', name=op.f('pk_resource_sources'))
    )


def downgrade() -> None:
    op.drop_table('resource_sources')
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hl7_messages_received_at'))
        batch_op.drop_index(batch_op.f('ix_hl7_messages_error_code'))
        batch_op.drop_index(batch_op.f('ix_hl7_messages_status_received_at'))

    op.drop_table('hl7_messages')
