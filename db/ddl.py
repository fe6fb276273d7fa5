"""Database-side rules that the models cannot express: triggers, NOTIFY, the job-history view.

Applied by the migrations (``db/migrations/versions``); ``quire db check`` verifies they exist.
"""

from __future__ import annotations

NOTIFY_CHANNEL = "quire_audit"

FUNCTIONS_AND_TRIGGERS: list[tuple[str, str]] = [
    (
        "audit_events_append_only",
        """
CREATE OR REPLACE FUNCTION quire_audit_append_only() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    RAISE EXCEPTION 'audit_events is append-only: UPDATE of job % seq % rejected', OLD.job_id, OLD.seq
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  -- A DELETE is the cascade of deleting the job; its row is already gone by then.
  IF EXISTS (SELECT 1 FROM jobs WHERE id = OLD.job_id) THEN
    RAISE EXCEPTION 'audit_events rows go only with their job: DELETE of job % seq % rejected',
      OLD.job_id, OLD.seq USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN OLD;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
  FOR EACH ROW EXECUTE FUNCTION quire_audit_append_only();
""",
    ),
    (
        "audit_events_notify",
        f"""
CREATE OR REPLACE FUNCTION quire_audit_notify() RETURNS trigger AS $$
DECLARE r record;
BEGIN
  -- One notification per job per statement, carrying the highest seq; delivered at commit.
  FOR r IN SELECT job_id, max(seq) AS seq FROM new_rows GROUP BY job_id LOOP
    PERFORM pg_notify('{NOTIFY_CHANNEL}', r.job_id::text || ':' || r.seq::text);
  END LOOP;
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_events_notify AFTER INSERT ON audit_events
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION quire_audit_notify();
""",
    ),
    (
        "coherence_states_chain",
        """
CREATE OR REPLACE FUNCTION quire_state_chain() RETURNS trigger AS $$
DECLARE parent_ordinal int;
BEGIN
  IF NEW.parent_id IS NOT NULL THEN
    SELECT ordinal INTO parent_ordinal FROM coherence_states WHERE id = NEW.parent_id;
    IF parent_ordinal IS DISTINCT FROM NEW.ordinal - 1 THEN
      RAISE EXCEPTION 'coherence state % of job %: parent % has ordinal %, expected %',
        NEW.ordinal, NEW.job_id, NEW.parent_id, parent_ordinal, NEW.ordinal - 1
        USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER coherence_states_chain BEFORE INSERT OR UPDATE ON coherence_states
  FOR EACH ROW EXECUTE FUNCTION quire_state_chain();
""",
    ),
    (
        "chunks_chain",
        """
CREATE OR REPLACE FUNCTION quire_chunk_chain() RETURNS trigger AS $$
DECLARE expected bigint; after_parent bigint;
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.status = 'done'
     AND (NEW.state_before_id IS DISTINCT FROM OLD.state_before_id
          OR NEW.state_after_id IS DISTINCT FROM OLD.state_after_id) THEN
    RAISE EXCEPTION 'chunk % of job % is done: its coherence states cannot change', NEW.ordinal, NEW.job_id
      USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.state_before_id IS NULL THEN
    RETURN NEW;
  END IF;
  IF NEW.ordinal = 0 THEN
    SELECT id INTO expected FROM coherence_states WHERE job_id = NEW.job_id AND ordinal = 0;
  ELSE
    SELECT state_after_id INTO expected FROM chunks
     WHERE job_id = NEW.job_id AND ordinal = NEW.ordinal - 1 AND status = 'done';
  END IF;
  IF expected IS DISTINCT FROM NEW.state_before_id THEN
    RAISE EXCEPTION 'chunk % of job %: state_before % is not the state left by its predecessor (%)',
      NEW.ordinal, NEW.job_id, NEW.state_before_id, expected USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.state_after_id IS NOT NULL THEN
    SELECT parent_id INTO after_parent FROM coherence_states WHERE id = NEW.state_after_id;
    IF after_parent IS DISTINCT FROM NEW.state_before_id THEN
      RAISE EXCEPTION 'chunk % of job %: state_after % does not follow state_before %',
        NEW.ordinal, NEW.job_id, NEW.state_after_id, NEW.state_before_id USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER chunks_chain BEFORE INSERT OR UPDATE ON chunks
  FOR EACH ROW EXECUTE FUNCTION quire_chunk_chain();
""",
    ),
]

JOB_HISTORY_VIEW = """
CREATE OR REPLACE VIEW job_history AS
SELECT j.id, j.user_id, j.kind, j.status, j.title, j.target_words, j.max_words,
       j.created_at, j.started_at, j.completed_at, j.error_code, j.failure_reason,
       j.words_written, o.word_count AS output_words,
       COALESCE(o.word_count >= j.target_words, false) AS target_met,
       j.sections_total, j.chunks_total, j.chunks_done, j.audit_seq AS audit_events,
       (SELECT count(*) FROM llm_calls c WHERE c.job_id = j.id) AS llm_calls,
       (SELECT COALESCE(sum(c.tokens_in), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_in,
       (SELECT COALESCE(sum(c.tokens_out), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_out
  FROM jobs j
  LEFT JOIN documents o ON o.job_id = j.id AND o.role = 'output' AND o.version = 1
"""

TRIGGER_NAMES = [name for name, _ in FUNCTIONS_AND_TRIGGERS]
VIEW_NAMES = ["job_history"]


def drop_sql() -> list[str]:
    out = ["DROP VIEW IF EXISTS job_history"]
    tables = {
        "audit_events_append_only": "audit_events",
        "audit_events_notify": "audit_events",
        "coherence_states_chain": "coherence_states",
        "chunks_chain": "chunks",
    }
    for name, table in tables.items():
        out.append(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    for fn in ("quire_audit_append_only", "quire_audit_notify", "quire_state_chain", "quire_chunk_chain"):
        out.append(f"DROP FUNCTION IF EXISTS {fn}()")
    return out
