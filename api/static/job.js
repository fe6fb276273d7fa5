// The job page: status, progress, the document growing as it is written (document.js), and the
// Audit Panel (audit.js).
"use strict";
if (Quire.requireKey()) {
  const jobId = location.pathname.split("/").pop();
  const panel = AuditPanel.mount(jobId, document.getElementById("audit"));
  const $ = id => document.getElementById(id);
  const doc = QuireDoc.mount(jobId, $("doc"), $("doc-empty"));
  const coherence = QuireCoherence.mount(jobId, $("coherence"), panel);
  const plan = QuirePlan.mount(jobId, $("plan-review"), () => { refresh(); book.refresh(); });
  // After an edit: the map while it runs; everything it changed once it has ended.
  const changed = ended => {
    book.refresh();
    if (ended) { refresh(); readDoc(true); coherence.refresh(); edits.versions(); }
  };
  const edits = QuireEdits.mount(jobId, $("node-panel"), $("versions"), changed);
  const book = QuireBook.mount(jobId, $("book"), (action, tile) => edits.open(action, tile));
  const TERMINAL = ["succeeded", "failed", "cancelled"];
  let last = null;
  const readDoc = full => doc.refresh(full).catch(ex => { $("failure").textContent = ex.message; });
  async function refresh() {
    let j;
    try { j = await Quire.json("/v1/jobs/" + jobId); } catch (ex) { $("failure").textContent = ex.message; return; }
    last = j;
    document.title = "Quire — " + (j.title || "job");
    $("title").textContent = j.title || ("Job " + j.id.slice(0, 8));
    $("status").textContent = j.status; $("status").className = "status " + j.status;
    $("step").textContent = j.progress.current_step || "";
    const pct = Math.min(100, 100 * (j.words_written || 0) / j.target_words);
    $("meter-fill").style.width = pct.toFixed(1) + "%";
    $("meter").setAttribute("aria-valuemax", j.target_words); $("meter").setAttribute("aria-valuenow", j.words_written || 0);
    $("words").textContent = Quire.fmt(j.words_written) + " / " + Quire.fmt(j.target_words);
    $("chunks").textContent = j.progress.chunks_done + " / " + j.progress.chunks_total;
    $("sections").textContent = j.progress.sections_done + " / " + j.progress.sections_total;
    $("tokens").textContent = Quire.fmt(j.tokens.in) + " / " + Quire.fmt(j.tokens.out);
    $("elapsed").textContent = Math.round(j.elapsed_seconds) + " s";
    // What the words are: the model's, what the gate cut as junk, chunks accepted short, top-ups.
    $("account").textContent = j.account && j.account.words_model ? j.account.summary : "";
    $("failure").textContent = j.error_code ? (j.error_code + ": " + j.failure_reason) : "";
    $("cancel").hidden = TERMINAL.includes(j.status);
    $("dl-output").hidden = j.status !== "succeeded";
    if (TERMINAL.includes(j.status) && !doc.complete) readDoc(true);  // the document as it stays
  }
  refresh();
  readDoc(true);
  const timer = setInterval(() => { if (!last || !TERMINAL.includes(last.status)) refresh(); }, 1000);
  panel.onEvent = e => {
    if (e.kind === "job" || e.kind === "chunk") refresh();
    if (e.kind === "plan") plan.refresh();
    if (["plan", "chunk", "unit", "seam", "job"].includes(e.kind) && e.action !== "start") book.refresh();
    if (e.kind === "continuity" || e.kind === "coverage" || (e.kind === "seam" && e.action !== "start")) coherence.refresh();
    // A chunk version committed after the document's last read: read what is new.
    // (The INSERT's sql event names the rows it wrote; a row event, one no statement could be shown to.)
    const inserted = e.kind === "row" ? e.action === "insert"
      : e.kind === "sql" && /^\s*INSERT\b/i.test(e.sql_text || "") && Array.isArray((e.data || {}).rows);
    if (inserted && e.table_name === "chunk_versions" && e.seq > doc.seq) readDoc(false);
  };
  panel.onEnd = () => { refresh(); coherence.refresh(); book.refresh(); edits.versions(); clearInterval(timer); };
  $("open-audit").addEventListener("click", () => { panel.open(); $("main").classList.add("with-panel"); });
  $("close-audit").addEventListener("click", () => { panel.close(); $("main").classList.remove("with-panel"); $("open-audit").focus(); });
  $("cancel").addEventListener("click", async () => {
    try { await Quire.json("/v1/jobs/" + jobId + "/cancel", { method: "POST" }); refresh(); } catch (ex) { $("failure").textContent = ex.message; }
  });
  $("dl-output").addEventListener("click", e => { e.preventDefault(); Quire.download("/v1/jobs/" + jobId + "/output", "quire-" + jobId + ".md"); });
}
