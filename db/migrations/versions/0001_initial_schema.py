"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 16:10:31.082634
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


# Frozen copies of db/ddl.py at this revision: later edits there need a new migration.
DDL = [
    "\nCREATE OR REPLACE FUNCTION quire_audit_append_only() RETURNS trigger AS $$\nBEGIN\n  IF TG_OP = 'UPDATE' THEN\n    RAISE EXCEPTION 'audit_events is append-only: UPDATE of job % seq % rejected', OLD.job_id, OLD.seq\n      USING ERRCODE = 'insufficient_privilege';\n  END IF;\n  -- A DELETE is the cascade of deleting the job; its row is already gone by then.\n  IF EXISTS (SELECT 1 FROM jobs WHERE id = OLD.job_id) THEN\n    RAISE EXCEPTION 'audit_events rows go only with their job: DELETE of job % seq % rejected',\n      OLD.job_id, OLD.seq USING ERRCODE = 'insufficient_privilege';\n  END IF;\n  RETURN OLD;\nEND $$ LANGUAGE plpgsql;\nCREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events\n  FOR EACH ROW EXECUTE FUNCTION quire_audit_append_only();\n",
    "\nCREATE OR REPLACE FUNCTION quire_audit_notify() RETURNS trigger AS $$\nDECLARE r record;\nBEGIN\n  -- One notification per job per statement, carrying the highest seq; delivered at commit.\n  FOR r IN SELECT job_id, max(seq) AS seq FROM new_rows GROUP BY job_id LOOP\n    PERFORM pg_notify('quire_audit', r.job_id::text || ':' || r.seq::text);\n  END LOOP;\n  RETURN NULL;\nEND $$ LANGUAGE plpgsql;\nCREATE TRIGGER audit_events_notify AFTER INSERT ON audit_events\n  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION quire_audit_notify();\n",
    "\nCREATE OR REPLACE FUNCTION quire_state_chain() RETURNS trigger AS $$\nDECLARE parent_ordinal int;\nBEGIN\n  IF NEW.parent_id IS NOT NULL THEN\n    SELECT ordinal INTO parent_ordinal FROM coherence_states WHERE id = NEW.parent_id;\n    IF parent_ordinal IS DISTINCT FROM NEW.ordinal - 1 THEN\n      RAISE EXCEPTION 'coherence state % of job %: parent % has ordinal %, expected %',\n        NEW.ordinal, NEW.job_id, NEW.parent_id, parent_ordinal, NEW.ordinal - 1\n        USING ERRCODE = 'check_violation';\n    END IF;\n  END IF;\n  RETURN NEW;\nEND $$ LANGUAGE plpgsql;\nCREATE TRIGGER coherence_states_chain BEFORE INSERT OR UPDATE ON coherence_states\n  FOR EACH ROW EXECUTE FUNCTION quire_state_chain();\n",
    "\nCREATE OR REPLACE FUNCTION quire_chunk_chain() RETURNS trigger AS $$\nDECLARE expected bigint; after_parent bigint;\nBEGIN\n  IF TG_OP = 'UPDATE' AND OLD.status = 'done'\n     AND (NEW.state_before_id IS DISTINCT FROM OLD.state_before_id\n          OR NEW.state_after_id IS DISTINCT FROM OLD.state_after_id) THEN\n    RAISE EXCEPTION 'chunk % of job % is done: its coherence states cannot change', NEW.ordinal, NEW.job_id\n      USING ERRCODE = 'check_violation';\n  END IF;\n  IF NEW.state_before_id IS NULL THEN\n    RETURN NEW;\n  END IF;\n  IF NEW.ordinal = 0 THEN\n    SELECT id INTO expected FROM coherence_states WHERE job_id = NEW.job_id AND ordinal = 0;\n  ELSE\n    SELECT state_after_id INTO expected FROM chunks\n     WHERE job_id = NEW.job_id AND ordinal = NEW.ordinal - 1 AND status = 'done';\n  END IF;\n  IF expected IS DISTINCT FROM NEW.state_before_id THEN\n    RAISE EXCEPTION 'chunk % of job %: state_before % is not the state left by its predecessor (%)',\n      NEW.ordinal, NEW.job_id, NEW.state_before_id, expected USING ERRCODE = 'check_violation';\n  END IF;\n  IF NEW.state_after_id IS NOT NULL THEN\n    SELECT parent_id INTO after_parent FROM coherence_states WHERE id = NEW.state_after_id;\n    IF after_parent IS DISTINCT FROM NEW.state_before_id THEN\n      RAISE EXCEPTION 'chunk % of job %: state_after % does not follow state_before %',\n        NEW.ordinal, NEW.job_id, NEW.state_after_id, NEW.state_before_id USING ERRCODE = 'check_violation';\n    END IF;\n  END IF;\n  RETURN NEW;\nEND $$ LANGUAGE plpgsql;\nCREATE TRIGGER chunks_chain BEFORE INSERT OR UPDATE ON chunks\n  FOR EACH ROW EXECUTE FUNCTION quire_chunk_chain();\n",
    "\nCREATE OR REPLACE VIEW job_history AS\nSELECT j.id, j.user_id, j.kind, j.status, j.title, j.target_words, j.max_words,\n       j.created_at, j.started_at, j.completed_at, j.error_code, j.failure_reason,\n       j.words_written, o.word_count AS output_words,\n       COALESCE(o.word_count >= j.target_words, false) AS target_met,\n       j.sections_total, j.chunks_total, j.chunks_done, j.audit_seq AS audit_events,\n       (SELECT count(*) FROM llm_calls c WHERE c.job_id = j.id) AS llm_calls,\n       (SELECT COALESCE(sum(c.tokens_in), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_in,\n       (SELECT COALESCE(sum(c.tokens_out), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_out\n  FROM jobs j\n  LEFT JOIN documents o ON o.job_id = j.id AND o.role = 'output' AND o.version = 1\n",
]
DROP = ['DROP VIEW IF EXISTS job_history', 'DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events', 'DROP TRIGGER IF EXISTS audit_events_notify ON audit_events', 'DROP TRIGGER IF EXISTS coherence_states_chain ON coherence_states', 'DROP TRIGGER IF EXISTS chunks_chain ON chunks', 'DROP FUNCTION IF EXISTS quire_audit_append_only()', 'DROP FUNCTION IF EXISTS quire_audit_notify()', 'DROP FUNCTION IF EXISTS quire_state_chain()', 'DROP FUNCTION IF EXISTS quire_chunk_chain()']


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    op.create_table('users',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('name', name=op.f('uq_users_name'))
    )
    op.create_table('account_events',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=True),
    sa.Column('ts', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('method', sa.Text(), nullable=True),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('ip', sa.Text(), nullable=True),
    sa.Column('user_agent', sa.Text(), nullable=True),
    sa.Column('job_id', sa.UUID(), nullable=True),
    sa.Column('data', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_account_events_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_account_events'))
    )
    op.create_index('ix_account_events_user_ts', 'account_events', ['user_id', 'ts'], unique=False)
    op.create_table('api_keys',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('prefix', sa.Text(), nullable=False),
    sa.Column('key_hash', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_keys_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash')),
    sa.UniqueConstraint('prefix', name=op.f('uq_api_keys_prefix'))
    )
    op.create_index(op.f('ix_api_keys_user_id'), 'api_keys', ['user_id'], unique=False)
    op.create_table('jobs',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='queued', nullable=False),
    sa.Column('title', sa.Text(), nullable=True),
    sa.Column('prompt', sa.Text(), nullable=True),
    sa.Column('target_words', sa.Integer(), nullable=False),
    sa.Column('max_words', sa.Integer(), nullable=False),
    sa.Column('model', sa.Text(), nullable=False),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('skeleton', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('idempotency_key', sa.Text(), nullable=True),
    sa.Column('workflow_id', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failure_reason', sa.Text(), nullable=True),
    sa.Column('error_code', sa.Text(), nullable=True),
    sa.Column('current_step', sa.Text(), nullable=True),
    sa.Column('words_written', sa.Integer(), server_default='0', nullable=False),
    sa.Column('sections_total', sa.Integer(), server_default='0', nullable=False),
    sa.Column('chunks_total', sa.Integer(), server_default='0', nullable=False),
    sa.Column('chunks_done', sa.Integer(), server_default='0', nullable=False),
    sa.Column('finalize_rounds', sa.Integer(), server_default='0', nullable=False),
    sa.Column('audit_seq', sa.BigInteger(), server_default='0', nullable=False),
    sa.CheckConstraint("(status IN ('succeeded','failed','cancelled')) = (completed_at IS NOT NULL)", name=op.f('ck_jobs_completed_iff_terminal')),
    sa.CheckConstraint("error_code IS NULL OR error_code IN ('E_LENGTH_NOT_MET', 'E_BUDGET_EXHAUSTED', 'E_LLM_UNAVAILABLE', 'E_INPUT_INVALID', 'E_CANCELLED', 'E_INTERNAL')", name=op.f('ck_jobs_error_code')),
    sa.CheckConstraint("kind IN ('generate', 'rewrite')", name=op.f('ck_jobs_kind')),
    sa.CheckConstraint("status <> 'failed' OR (error_code IS NOT NULL AND failure_reason IS NOT NULL)", name=op.f('ck_jobs_failed_has_reason')),
    sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f('ck_jobs_status')),
    sa.CheckConstraint('audit_seq >= 0', name=op.f('ck_jobs_audit_seq')),
    sa.CheckConstraint('completed_at IS NULL OR completed_at >= COALESCE(started_at, created_at)', name=op.f('ck_jobs_completed_after_started')),
    sa.CheckConstraint('max_words >= target_words', name=op.f('ck_jobs_max_words')),
    sa.CheckConstraint('started_at IS NULL OR started_at >= created_at', name=op.f('ck_jobs_started_after_created')),
    sa.CheckConstraint('target_words BETWEEN 1 AND 500000', name=op.f('ck_jobs_target_words')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_jobs_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('user_id', 'idempotency_key', name=op.f('uq_jobs_user_id_idempotency_key')),
    sa.UniqueConstraint('workflow_id', name=op.f('uq_jobs_workflow_id'))
    )
    op.create_index('ix_jobs_user_created', 'jobs', ['user_id', 'created_at', 'id'], unique=False)
    op.create_index(op.f('ix_jobs_user_id'), 'jobs', ['user_id'], unique=False)
    op.create_index('ix_jobs_user_status_created', 'jobs', ['user_id', 'status', 'created_at'], unique=False)
    op.create_table('audit_events',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('table_name', sa.Text(), nullable=True),
    sa.Column('row_id', sa.Text(), nullable=True),
    sa.Column('sql_text', sa.Text(), nullable=True),
    sa.Column('data', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_audit_events_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events')),
    sa.UniqueConstraint('job_id', 'seq', name=op.f('uq_audit_events_job_id_seq'))
    )
    op.create_index('ix_audit_events_job_kind_seq', 'audit_events', ['job_id', 'kind', 'seq'], unique=False)
    op.create_table('coherence_states',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('ordinal', sa.Integer(), nullable=False),
    sa.Column('parent_id', sa.BigInteger(), nullable=True),
    sa.Column('summary', sa.Text(), server_default='', nullable=False),
    sa.Column('glossary', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('open_threads', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('delta', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('(ordinal = 0) = (parent_id IS NULL)', name=op.f('ck_coherence_states_root_has_no_parent')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_coherence_states_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['parent_id', 'job_id'], ['coherence_states.id', 'coherence_states.job_id'], name=op.f('fk_coherence_states_parent_id_job_id_coherence_states')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coherence_states')),
    sa.UniqueConstraint('id', 'job_id', name=op.f('uq_coherence_states_id_job_id')),
    sa.UniqueConstraint('job_id', 'ordinal', name=op.f('uq_coherence_states_job_id_ordinal'))
    )
    op.create_index('ix_coherence_states_parent_id', 'coherence_states', ['parent_id'], unique=False)
    op.create_table('documents',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('role', sa.Text(), nullable=False),
    sa.Column('version', sa.Integer(), server_default='1', nullable=False),
    sa.Column('filename', sa.Text(), nullable=True),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('sha256', sa.Text(), nullable=False),
    sa.Column('word_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("role IN ('input','output','partial')", name=op.f('ck_documents_role')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_documents_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_documents')),
    sa.UniqueConstraint('job_id', 'role', 'version', name=op.f('uq_documents_job_id_role_version'))
    )
    op.create_index('ix_documents_job_id', 'documents', ['job_id'], unique=False)
    op.create_table('sections',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('ordinal', sa.Integer(), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('summary', sa.Text(), server_default='', nullable=False),
    sa.Column('key_points', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('target_words', sa.Integer(), nullable=False),
    sa.Column('is_continuation', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('status', sa.Text(), server_default='pending', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_sections_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sections')),
    sa.UniqueConstraint('job_id', 'ordinal', name=op.f('uq_sections_job_id_ordinal'))
    )
    op.create_index('ix_sections_job_id', 'sections', ['job_id'], unique=False)
    op.create_table('chunks',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('section_id', sa.BigInteger(), nullable=False),
    sa.Column('ordinal', sa.Integer(), nullable=False),
    sa.Column('index_in_section', sa.Integer(), nullable=False),
    sa.Column('brief', sa.Text(), server_default='', nullable=False),
    sa.Column('source_text', sa.Text(), nullable=True),
    sa.Column('target_words', sa.Integer(), nullable=False),
    sa.Column('min_words', sa.Integer(), nullable=False),
    sa.Column('max_words', sa.Integer(), nullable=False),
    sa.Column('status', sa.Text(), server_default='pending', nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('word_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('state_before_id', sa.BigInteger(), nullable=True),
    sa.Column('state_after_id', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status <> 'done' OR state_after_id IS NOT NULL", name=op.f('ck_chunks_done_has_state_after')),
    sa.CheckConstraint("status = 'pending' OR state_before_id IS NOT NULL", name=op.f('ck_chunks_written_from_state')),
    sa.CheckConstraint("status IN ('pending','writing','done')", name=op.f('ck_chunks_status')),
    sa.CheckConstraint('max_words >= min_words AND min_words >= 1', name=op.f('ck_chunks_bounds')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_chunks_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['section_id'], ['sections.id'], name=op.f('fk_chunks_section_id_sections'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['state_after_id', 'job_id'], ['coherence_states.id', 'coherence_states.job_id'], name=op.f('fk_chunks_state_after_id_job_id_coherence_states')),
    sa.ForeignKeyConstraint(['state_before_id', 'job_id'], ['coherence_states.id', 'coherence_states.job_id'], name=op.f('fk_chunks_state_before_id_job_id_coherence_states')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chunks')),
    sa.UniqueConstraint('job_id', 'ordinal', name=op.f('uq_chunks_job_id_ordinal')),
    sa.UniqueConstraint('section_id', 'index_in_section', name=op.f('uq_chunks_section_id_index_in_section'))
    )
    op.create_index('ix_chunks_section_id', 'chunks', ['section_id'], unique=False)
    op.create_index('ix_chunks_state_after_id', 'chunks', ['state_after_id'], unique=False)
    op.create_index('ix_chunks_state_before_id', 'chunks', ['state_before_id'], unique=False)
    op.create_table('stitch_results',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('section_id', sa.BigInteger(), nullable=False),
    sa.Column('issues', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('repairs', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('words_before', sa.Integer(), nullable=False),
    sa.Column('words_after', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_stitch_results_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['section_id'], ['sections.id'], name=op.f('fk_stitch_results_section_id_sections'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stitch_results')),
    sa.UniqueConstraint('job_id', 'section_id', name=op.f('uq_stitch_results_job_id_section_id'))
    )
    op.create_index('ix_stitch_results_job_id', 'stitch_results', ['job_id'], unique=False)
    op.create_index('ix_stitch_results_section_id', 'stitch_results', ['section_id'], unique=False)
    op.create_table('length_checks',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('chunk_id', sa.BigInteger(), nullable=True),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('words', sa.Integer(), nullable=False),
    sa.Column('min_words', sa.Integer(), nullable=False),
    sa.Column('target_words', sa.Integer(), nullable=False),
    sa.Column('max_words', sa.Integer(), nullable=False),
    sa.Column('passed', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("scope IN ('chunk','final')", name=op.f('ck_length_checks_scope')),
    sa.CheckConstraint('passed = (words >= min_words)', name=op.f('ck_length_checks_passed_means_min_met')),
    sa.ForeignKeyConstraint(['chunk_id'], ['chunks.id'], name=op.f('fk_length_checks_chunk_id_chunks'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_length_checks_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_length_checks')),
    sa.UniqueConstraint('job_id', 'scope', 'chunk_id', 'round', name=op.f('uq_length_checks_job_id_scope_chunk_id_round'), postgresql_nulls_not_distinct=True)
    )
    op.create_index('ix_length_checks_chunk_id', 'length_checks', ['chunk_id'], unique=False)
    op.create_table('llm_calls',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('chunk_id', sa.BigInteger(), nullable=True),
    sa.Column('purpose', sa.Text(), nullable=False),
    sa.Column('request_key', sa.Text(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('model', sa.Text(), nullable=False),
    sa.Column('base_url', sa.Text(), nullable=False),
    sa.Column('messages', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('response', sa.Text(), nullable=True),
    sa.Column('finish_reason', sa.Text(), nullable=True),
    sa.Column('tokens_in', sa.Integer(), nullable=True),
    sa.Column('tokens_out', sa.Integer(), nullable=True),
    sa.Column('tokens_cached', sa.Integer(), nullable=True),
    sa.Column('tokens_estimated', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('ttft_ms', sa.Float(), nullable=True),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('ok','error')", name=op.f('ck_llm_calls_status')),
    sa.ForeignKeyConstraint(['chunk_id'], ['chunks.id'], name=op.f('fk_llm_calls_chunk_id_chunks'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_llm_calls_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_llm_calls'))
    )
    op.create_index(op.f('ix_llm_calls_chunk_id'), 'llm_calls', ['chunk_id'], unique=False)
    op.create_index('ix_llm_calls_job_id_request_key', 'llm_calls', ['job_id', 'request_key'], unique=False)
    op.create_index('ix_llm_calls_job_started', 'llm_calls', ['job_id', 'started_at'], unique=False)
    op.create_table('chunk_attempts',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('chunk_id', sa.BigInteger(), nullable=False),
    sa.Column('attempt_no', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('llm_call_id', sa.BigInteger(), nullable=True),
    sa.Column('words_asked', sa.Integer(), server_default='0', nullable=False),
    sa.Column('added_text', sa.Text(), nullable=False),
    sa.Column('text_after', sa.Text(), nullable=False),
    sa.Column('words_before', sa.Integer(), nullable=False),
    sa.Column('words_added', sa.Integer(), nullable=False),
    sa.Column('words_after', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("kind IN ('write','extend','trim')", name=op.f('ck_chunk_attempts_kind')),
    sa.ForeignKeyConstraint(['chunk_id'], ['chunks.id'], name=op.f('fk_chunk_attempts_chunk_id_chunks'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_chunk_attempts_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['llm_call_id'], ['llm_calls.id'], name=op.f('fk_chunk_attempts_llm_call_id_llm_calls'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chunk_attempts')),
    sa.UniqueConstraint('chunk_id', 'attempt_no', name=op.f('uq_chunk_attempts_chunk_id_attempt_no'))
    )
    op.create_index(op.f('ix_chunk_attempts_job_id'), 'chunk_attempts', ['job_id'], unique=False)
    op.create_index(op.f('ix_chunk_attempts_llm_call_id'), 'chunk_attempts', ['llm_call_id'], unique=False)
    # ### end Alembic commands ###
    for sql in DDL:
        op.execute(sql)


def downgrade() -> None:
    for sql in DROP:
        op.execute(sql)
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_index(op.f('ix_chunk_attempts_llm_call_id'), table_name='chunk_attempts')
    op.drop_index(op.f('ix_chunk_attempts_job_id'), table_name='chunk_attempts')
    op.drop_table('chunk_attempts')
    op.drop_index('ix_llm_calls_job_started', table_name='llm_calls')
    op.drop_index('ix_llm_calls_job_id_request_key', table_name='llm_calls')
    op.drop_index(op.f('ix_llm_calls_chunk_id'), table_name='llm_calls')
    op.drop_table('llm_calls')
    op.drop_index('ix_length_checks_chunk_id', table_name='length_checks')
    op.drop_table('length_checks')
    op.drop_index('ix_stitch_results_section_id', table_name='stitch_results')
    op.drop_index('ix_stitch_results_job_id', table_name='stitch_results')
    op.drop_table('stitch_results')
    op.drop_index('ix_chunks_state_before_id', table_name='chunks')
    op.drop_index('ix_chunks_state_after_id', table_name='chunks')
    op.drop_index('ix_chunks_section_id', table_name='chunks')
    op.drop_table('chunks')
    op.drop_index('ix_sections_job_id', table_name='sections')
    op.drop_table('sections')
    op.drop_index('ix_documents_job_id', table_name='documents')
    op.drop_table('documents')
    op.drop_index('ix_coherence_states_parent_id', table_name='coherence_states')
    op.drop_table('coherence_states')
    op.drop_index('ix_audit_events_job_kind_seq', table_name='audit_events')
    op.drop_table('audit_events')
    op.drop_index('ix_jobs_user_status_created', table_name='jobs')
    op.drop_index(op.f('ix_jobs_user_id'), table_name='jobs')
    op.drop_index('ix_jobs_user_created', table_name='jobs')
    op.drop_table('jobs')
    op.drop_index(op.f('ix_api_keys_user_id'), table_name='api_keys')
    op.drop_table('api_keys')
    op.drop_index('ix_account_events_user_ts', table_name='account_events')
    op.drop_table('account_events')
    op.drop_table('users')
    # ### end Alembic commands ###
