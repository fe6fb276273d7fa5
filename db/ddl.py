"""Database-side rules that the models cannot express: triggers, NOTIFY, the job-history view.

Applied by the migrations (``db/migrations/versions``); ``quire db check`` verifies they exist.
"""

from __future__ import annotations

NOTIFY_CHANNEL = "quire_audit"

# A job's status moves only forward: queued -> running -> succeeded | failed | cancelled (queued may
# also end failed or cancelled before it ran), and a failed or cancelled job back to running only
# when it is resumed, which is a new run: a new workflow id. A succeeded job never changes again.
# Steps that change the status read it under the row lock first (activities.base.load_job): this
# rejects whatever would slip past them, such as a cancel overwriting a success.
JOBS_STATUS_RULES = """
CREATE OR REPLACE FUNCTION quire_job_status_rules() RETURNS trigger AS $$
BEGIN
  IF NEW.workflow_id IS DISTINCT FROM OLD.workflow_id
     AND NOT (OLD.status IN ('failed', 'cancelled') AND NEW.status = 'running') THEN
    RAISE EXCEPTION 'job %: its workflow changes only when a failed or cancelled job is resumed (% -> %)',
      OLD.id, OLD.status, NEW.status USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.status IS NOT DISTINCT FROM OLD.status
     OR (OLD.status = 'queued' AND NEW.status IN ('running', 'failed', 'cancelled'))
     OR (OLD.status = 'running' AND NEW.status IN ('succeeded', 'failed', 'cancelled'))
     OR (OLD.status IN ('failed', 'cancelled') AND NEW.status = 'running'
         AND NEW.workflow_id IS DISTINCT FROM OLD.workflow_id) THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'job %: % -> % is not an allowed status change%', OLD.id, OLD.status, NEW.status,
    CASE WHEN NEW.status = 'running' AND OLD.status IN ('failed', 'cancelled') THEN ' (only a resume, a new run)'
         ELSE '' END
    USING ERRCODE = 'check_violation';
END $$ LANGUAGE plpgsql;
CREATE TRIGGER jobs_status_rules BEFORE UPDATE OF status, workflow_id ON jobs
  FOR EACH ROW EXECUTE FUNCTION quire_job_status_rules();
"""

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
  IF TG_OP = 'UPDATE' THEN
    RAISE EXCEPTION 'coherence state % of job % is immutable: UPDATE rejected', OLD.id, OLD.job_id
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NEW.kind = 'chunk' THEN
    SELECT ordinal INTO parent_ordinal FROM coherence_states WHERE id = NEW.parent_id;
    IF parent_ordinal IS DISTINCT FROM NEW.ordinal - 1 THEN
      RAISE EXCEPTION 'coherence state % of job %: parent % has ordinal %, expected %',
        NEW.ordinal, NEW.job_id, NEW.parent_id, parent_ordinal, NEW.ordinal - 1
        USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.chunk_version_id IS NULL THEN
      RAISE EXCEPTION 'coherence state % of job %: a chunk state names the version it was derived from',
        NEW.ordinal, NEW.job_id USING ERRCODE = 'check_violation';
    END IF;
  ELSIF NEW.kind = 'handoff' AND NEW.unit_id IS NULL THEN
    RAISE EXCEPTION 'handoff state % of job %: it names the unit it was made for', NEW.ordinal, NEW.job_id
      USING ERRCODE = 'check_violation';
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
DECLARE b record; expected bigint; pred_unit bigint; after_parent bigint; after_chunk bigint;
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.status = 'done' THEN
    IF NEW.state_before_id IS DISTINCT FROM OLD.state_before_id
       OR NEW.state_after_id IS DISTINCT FROM OLD.state_after_id THEN
      RAISE EXCEPTION 'chunk % of job % is done: its coherence states cannot change', NEW.ordinal, NEW.job_id
        USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.text IS DISTINCT FROM OLD.text THEN
      RAISE EXCEPTION 'chunk % of job % is done: its text cannot change (a change is a new version)',
        NEW.ordinal, NEW.job_id USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  IF NEW.state_before_id IS NULL THEN
    RETURN NEW;
  END IF;
  SELECT kind, ordinal, unit_id INTO b FROM coherence_states WHERE id = NEW.state_before_id;
  IF NEW.ordinal = 0 THEN
    IF b.kind IS DISTINCT FROM 'root' THEN
      RAISE EXCEPTION 'chunk 0 of job %: state_before % is not the state left by its predecessor (the plan''s root)',
        NEW.job_id, NEW.state_before_id USING ERRCODE = 'check_violation';
    END IF;
  ELSIF b.kind = 'handoff' THEN
    -- Only a unit's first chunk may start from a handoff, one made for it, at its place.
    SELECT unit_id INTO pred_unit FROM chunks WHERE job_id = NEW.job_id AND ordinal = NEW.ordinal - 1;
    IF NEW.unit_id IS NULL OR b.unit_id IS DISTINCT FROM NEW.unit_id OR b.ordinal <> NEW.ordinal
       OR pred_unit IS NOT DISTINCT FROM NEW.unit_id THEN
      RAISE EXCEPTION 'chunk % of job %: handoff state % is not one made for the start of its unit',
        NEW.ordinal, NEW.job_id, NEW.state_before_id USING ERRCODE = 'check_violation';
    END IF;
  ELSE
    SELECT state_after_id INTO expected FROM chunks
     WHERE job_id = NEW.job_id AND ordinal = NEW.ordinal - 1 AND status = 'done';
    IF expected IS DISTINCT FROM NEW.state_before_id THEN
      RAISE EXCEPTION 'chunk % of job %: state_before % is not the state left by its predecessor (%)',
        NEW.ordinal, NEW.job_id, NEW.state_before_id, expected USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  IF NEW.state_after_id IS NOT NULL THEN
    SELECT s.parent_id, v.chunk_id INTO after_parent, after_chunk
      FROM coherence_states s LEFT JOIN chunk_versions v ON v.id = s.chunk_version_id
     WHERE s.id = NEW.state_after_id;
    IF after_parent IS DISTINCT FROM NEW.state_before_id OR after_chunk IS DISTINCT FROM NEW.id THEN
      RAISE EXCEPTION 'chunk % of job %: state_after % does not follow state_before % from a version of this chunk',
        NEW.ordinal, NEW.job_id, NEW.state_after_id, NEW.state_before_id USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER chunks_chain BEFORE INSERT OR UPDATE ON chunks
  FOR EACH ROW EXECUTE FUNCTION quire_chunk_chain();
""",
    ),
    (
        "plan_nodes_rules",
        """
CREATE OR REPLACE FUNCTION quire_plan_node_rules() RETURNS trigger AS $$
DECLARE children bigint; first record; pred_state bigint;
BEGIN
  IF NEW.status IS NOT DISTINCT FROM OLD.status THEN
    RETURN NEW;
  END IF;
  IF NEW.status IN ('expanded', 'done') AND NEW.level <> 'section' THEN
    SELECT sum(budget_words) INTO children FROM plan_nodes WHERE parent_id = NEW.id;
    IF children < NEW.budget_words THEN
      RAISE EXCEPTION '% % of job %: its children budget % words, less than its own %',
        NEW.level, NEW.id, NEW.job_id, children, NEW.budget_words USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  IF NEW.status = 'done' THEN
    SELECT id, ordinal, state_before_id INTO first FROM chunks WHERE unit_id = NEW.id ORDER BY ordinal LIMIT 1;
    IF FOUND THEN  -- a unit: complete only with all its chunks and a validated seam
      IF EXISTS (SELECT 1 FROM chunks WHERE unit_id = NEW.id AND status <> 'done') THEN
        RAISE EXCEPTION 'unit % of job % cannot be complete: not all its chunks are done', NEW.id, NEW.job_id
          USING ERRCODE = 'check_violation';
      END IF;
      IF first.ordinal > 0 THEN
        SELECT state_after_id INTO pred_state FROM chunks
         WHERE job_id = NEW.job_id AND ordinal = first.ordinal - 1 AND status = 'done';
        -- Its seam was checked against the predecessor's real end state and passed (or its repair
        -- did), or what the check found could not be repaired and is reported as open findings.
        IF NOT EXISTS (SELECT 1 FROM seam_checks s
                        WHERE s.unit_id = NEW.id AND s.chunk_id = first.id
                          AND s.predecessor_state_id = pred_state AND s.successor_state_id = first.state_before_id
                          AND (s.validated OR (s.status = 'flagged' AND EXISTS (
                                 SELECT 1 FROM continuity_findings f
                                  WHERE f.status = 'open' AND f.severity = 'major'
                                    AND (f.seam_check_id = s.id OR (s.mode = 'strict' AND f.chunk_id = s.chunk_id
                                                                    AND f.seam_check_id IS NULL)))))) THEN
          RAISE EXCEPTION 'unit % of job % cannot be complete: its seam is not validated against %',
            NEW.id, NEW.job_id, 'its predecessor''s real end state' USING ERRCODE = 'check_violation';
        END IF;
      END IF;
    END IF;
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER plan_nodes_rules BEFORE UPDATE ON plan_nodes
  FOR EACH ROW EXECUTE FUNCTION quire_plan_node_rules();
""",
    ),
    (
        "chunk_versions_immutable",
        """
CREATE OR REPLACE FUNCTION quire_reject_update() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION '% row % of job % is immutable: UPDATE rejected', TG_TABLE_NAME, OLD.id, OLD.job_id
    USING ERRCODE = 'insufficient_privilege';
END $$ LANGUAGE plpgsql;
CREATE TRIGGER chunk_versions_immutable BEFORE UPDATE ON chunk_versions
  FOR EACH ROW EXECUTE FUNCTION quire_reject_update();
""",
    ),
    (
        "seam_checks_immutable",
        """
CREATE TRIGGER seam_checks_immutable BEFORE UPDATE ON seam_checks
  FOR EACH ROW EXECUTE FUNCTION quire_reject_update();
""",
    ),
    (
        "ledger_entries_immutable",
        """
CREATE TRIGGER ledger_entries_immutable BEFORE UPDATE ON ledger_entries
  FOR EACH ROW EXECUTE FUNCTION quire_reject_update();
""",
    ),
    (
        "node_summaries_immutable",
        """
CREATE TRIGGER node_summaries_immutable BEFORE UPDATE ON node_summaries
  FOR EACH ROW EXECUTE FUNCTION quire_reject_update();
""",
    ),
    (
        "continuity_findings_immutable",
        """
CREATE TRIGGER continuity_findings_immutable BEFORE UPDATE ON continuity_findings
  FOR EACH ROW EXECUTE FUNCTION quire_reject_update();
""",
    ),
    (
        "jobs_status_rules",
        JOBS_STATUS_RULES,
    ),
    (
        "audit_checkpoints_immutable",
        """
CREATE TRIGGER audit_checkpoints_immutable BEFORE UPDATE ON audit_checkpoints
  FOR EACH ROW EXECUTE FUNCTION quire_reject_update();
""",
    ),
]

# A job's output is its latest version (an author's edits make new ones: db.loop.Edit).
JOB_HISTORY_VIEW = """
CREATE OR REPLACE VIEW job_history AS
SELECT j.id, j.user_id, j.kind, j.status, j.title, j.target_words, j.max_words,
       j.created_at, j.started_at, j.completed_at, j.error_code, j.failure_reason,
       j.words_written, o.word_count AS output_words,
       COALESCE(o.word_count >= j.target_words, false) AS target_met,
       j.sections_total, j.chunks_total, j.chunks_done, j.audit_seq AS audit_events,
       (SELECT count(*) FROM llm_calls c WHERE c.job_id = j.id) AS llm_calls,
       (SELECT COALESCE(sum(c.tokens_in), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_in,
       (SELECT COALESCE(sum(c.tokens_out), 0) FROM llm_calls c WHERE c.job_id = j.id) AS tokens_out,
       (SELECT COALESCE(sum(c.cost_micro_usd), 0) FROM llm_calls c WHERE c.job_id = j.id) AS cost_micro_usd
  FROM jobs j
  LEFT JOIN LATERAL (SELECT d.word_count FROM documents d WHERE d.job_id = j.id AND d.role = 'output'
                      ORDER BY d.version DESC LIMIT 1) o ON true
"""

TRIGGER_NAMES = [name for name, _ in FUNCTIONS_AND_TRIGGERS]
VIEW_NAMES = ["job_history"]


# The chain, proved from the tables alone: the chunks of a job that are NOT linked as they must
# be. Zero rows (and every chunk done) proves that each chunk was written from the state its
# predecessor really left (strict), or from a handoff validated against that real state at its
# unit's seam, and that each chunk's state follows from the one it was written from, derived from
# a version of that chunk. The README quotes this query.
CHAIN_PROOF = """
SELECT c.ordinal
  FROM chunks c
  JOIN coherence_states sb ON sb.id = c.state_before_id
  JOIN coherence_states sa ON sa.id = c.state_after_id
  JOIN chunk_versions v ON v.id = sa.chunk_version_id AND v.chunk_id = c.id
  LEFT JOIN chunks p ON p.job_id = c.job_id AND p.ordinal = c.ordinal - 1
 WHERE c.job_id = :job_id
   AND NOT (sa.kind = 'chunk' AND sa.parent_id = sb.id AND sa.ordinal = c.ordinal + 1
            AND CASE
                  WHEN p.id IS NULL THEN sb.kind = 'root'
                  WHEN c.state_before_id = p.state_after_id THEN true
                  ELSE sb.kind = 'handoff' AND EXISTS (
                         SELECT 1 FROM seam_checks s
                          WHERE s.chunk_id = c.id AND (s.validated OR s.status = 'flagged')
                            AND s.successor_state_id = c.state_before_id
                            AND s.predecessor_state_id = p.state_after_id)
                END)
UNION ALL
SELECT c.ordinal FROM chunks c
 WHERE c.job_id = :job_id AND (c.status <> 'done' OR c.state_after_id IS NULL)
"""

# Document order, proved from the tables: the ledger entries a chunk's prompt was given
# (``chunk_attempts.memory``) that were NOT set before it in the document. Zero rows proves that
# no chunk was told what a later chapter, written at the same time, established.
MEMORY_PROOF = """
SELECT c.ordinal, e.id, e.doc_order
  FROM chunk_attempts a
  JOIN chunks c ON c.id = a.chunk_id
 CROSS JOIN LATERAL jsonb_array_elements_text(COALESCE(a.memory -> 'entries', '[]'::jsonb)) AS m(entry_id)
  JOIN ledger_entries e ON e.id = m.entry_id::bigint
 WHERE a.job_id = :job_id AND e.doc_order >= c.ordinal
"""
