"""sessions.client_events: the count behind the per-session cap on client events

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Telemetry events were unbounded (500 posts a second added 1.6 MB/s of append-only rows); the
service now counts the events each session's client may cause and stops at a cap.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('client_events', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_column('client_events')
