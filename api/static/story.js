// The Audit Panel's story: the log grouped under the steps that wrote it, one line per step (what
// it did, its outcome, how long it took), each opening onto its own events (SQL, rows, model calls).
//
// Every event written inside an activity names the seq of that attempt's `activity start` event
// (data.activity_seq), and a retry (the same workflow and activity id, attempt > 1) joins the step
// of its first attempt. So grouping never relies on adjacency: chapters written in parallel
// interleave their steps in the log. An event written outside any activity (the submission, a
// workflow start, a user's view or download) is a step of its own, with the statements of its
// transaction, which come just before it.
"use strict";
const AuditStory = (() => {
  const NAMES = {
    plan_job: "plan", expand_node: "expand", unit_chunks: "list chunks", write_chunk: "chunk",
    stitch_section: "stitch", complete_unit: "seam", finalize: "finalize", add_continuation: "top-up",
    fail_job: "end job", await_review: "await plan review", apply_review: "apply plan",
    start_edit: "edit", edit_chunk: "edit chunk", recheck_edit: "edit: seams", publish_edit: "edit: document",
    fail_edit: "edit failed",
  };
  const PLAIN = ["sql", "row", "activity"];  // not what a step did, but how

  // A user's request the API refused (409, 422, 429...): its transaction rolled back, which is the
  // refusal working, not an error of the job's.
  const refusal = e => e.kind === "error" && e.action === "rollback" && (e.data || {}).error_type === "Refused";
  const reason = d => String(d.error || d.reason || "").replace(/^Refused: /, "").slice(0, 200);
  const fmt = n => (n === null || n === undefined) ? "–" : Number(n).toLocaleString("en-US");
  function secs(ms) { return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s"; }
  function chunkLink(n, text) {
    return Quire.el("a", { className: "to-chunk", href: "#chunk-" + (n + 1), title: "show chunk " + (n + 1) + " in the document" }, text);
  }
  const BELOW = { book: "part", part: "chapter", chapter: "section" };
  const plural = (n, word) => fmt(n) + " " + word + (n === 1 ? "" : "s");
  // What the step's telling event says, in a few words (without its kind where the label says it).
  function brief(e, withKind) {
    const d = e.data || {};
    const what = withKind ? e.kind + " " + e.action : e.action;
    switch (e.kind) {
      case "chunk": case "length":
        return what + " · " + fmt(d.words ?? d.words_out) + " / " + fmt(d.min_words ?? d.target_words) + " words" +
          (d.attempts ? " · " + plural(d.attempts, "attempt") : "") +
          (e.kind === "chunk" && d.passed !== undefined ? (d.passed ? " · PASS" : e.action === "done" ? " · accepted short" : " · FAIL") : "");
      case "llm": return what + " · " + (d.purpose || "") + " · " + fmt(d.tokens_in) + " → " + fmt(d.tokens_out) + " tokens";
      case "plan": return what + (d.children ? " · " + plural(d.children.length, BELOW[d.level] || "node")
        : d.chunks ? " · " + plural(d.units, "unit") + ", " + plural(d.chunks, "chunk") : "");
      case "stitch": return what + " · " + fmt(d.issues) + " issues, " + fmt(d.repairs) + " repairs";
      case "seam": return what + " · " + (d.mode || "") + ((d.conflicts || []).length ? " · " + d.conflicts.length + " conflicts" : "");
      case "user": return what + " · " + (d.user || "") + " · " + (d.ip || "?");
      case "workflow": return what + " · " + (d.workflow || d.workflow_id || "");
      case "job": return what + (d.words !== undefined ? " · " + fmt(d.words) + " words" : "");
      case "error":
        if (e.action === "rollback") return refusal(e) ? reason(d) : "rolled back · " + (d.error_type || "error") + ": " + reason(d);
        return what + (reason(d) ? " · " + reason(d) : "");
      default: return what;
    }
  }

  function mount(container, { render, matches, isError }) {
    const steps = [], bySeq = new Map(), byStart = new Map(), byActivity = new Map(), byReader = new Map();
    let pending = [];  // statements outside any activity, waiting for their transaction's event

    function newStep(id, activity) {
      const s = { id, activity, events: [], start: null, attempt: 0, ms: 0, running: false, outcome: "",
                  headline: null, passed: undefined, accepted: false, chunk: undefined, title: "", errors: 0,
                  refused: false, rendered: false };
      s.head = Quire.el("summary", { className: "line" });
      s.body = Quire.el("div", { className: "events" });
      s.el = Quire.el("details", { className: "step", dataset: { step: id, activity: activity || "" } }, s.head, s.body);
      s.el.addEventListener("toggle", () => {
        if (s.el.open && !s.rendered) { s.rendered = true; s.body.append(...s.events.map(render)); }
      });
      steps.push(s);
      container.appendChild(s.el);
      return s;
    }
    function stepOf(e) {
      const d = e.data || {};
      if (e.kind === "activity" && e.action === "start") {
        const key = d.workflow_id + " " + d.activity_id, first = byActivity.get(key);
        const s = first && d.attempt > 1 && first.el.isConnected ? first : newStep(e.seq, d.activity);
        byActivity.set(key, s); byStart.set(e.seq, s);
        return s;
      }
      if (d.activity_seq !== undefined) {
        let s = byStart.get(d.activity_seq);
        if (!s || !s.el.isConnected) { s = newStep(d.activity_seq, d.activity || null); byStart.set(d.activity_seq, s); }
        return s;
      }
      if (e.kind === "sql" || e.kind === "row") { pending.push(e); return null; }
      // A page keeps its document up to date with many small reads: one step per reader.
      const reader = e.kind === "user" && e.action === "read_draft" ? d.user_id + " " + d.user_agent : null;
      if (reader !== null && byReader.has(reader) && byReader.get(reader).el.isConnected) return byReader.get(reader);
      const s = newStep(e.seq, null);
      if (reader !== null) byReader.set(reader, s);
      for (const p of pending) take(s, p);
      pending = [];
      return s;
    }
    function take(s, e) {
      const d = e.data || {};
      s.events.push(e); bySeq.set(e.seq, s);
      if (s.rendered) s.body.appendChild(render(e));
      if (e.kind === "activity") {
        if (e.action === "start") { s.start = s.start || e; s.attempt = d.attempt; s.running = true; s.outcome = ""; }
        else { s.running = false; s.ms += d.duration_ms || 0; s.outcome = e.action === "end" ? "ok" : "error: " + (d.error_type || "failed"); }
      } else if (refusal(e)) s.refused = true;
      else if (isError(e)) s.errors++;
      if (d.chunk !== undefined && s.chunk === undefined && (e.kind === "chunk" || e.kind === "length")) s.chunk = d.chunk;
      if (typeof d.title === "string" && d.title && !s.title) s.title = d.title;  // the node (or document) it is about
      if (!PLAIN.includes(e.kind) && !(e.kind === "llm" && s.headline && s.headline.kind !== "llm")) s.headline = e;
      // The step's verdict is its last: a passage short at first and extended passes. One accepted
      // short (its chunk done, or a round of the document short) is topped up later: "short", not a failure.
      if (d.passed !== undefined) { s.passed = d.passed; s.accepted = e.kind === "chunk" && e.action === "done"; }
      if (e.action === "short" && (e.kind === "job" || e.kind === "edit")) { s.passed = false; s.accepted = true; }
      s.last = e;
    }
    function label(s) {
      if (!s.activity) {
        if (s.refused) return "request refused";
        if (!s.headline) return "sql";
        return s.headline.kind === "error" && s.headline.action === "rollback" ? "rolled back" : s.headline.kind;
      }
      const name = NAMES[s.activity] || s.activity;
      if (s.activity === "write_chunk" && s.chunk !== undefined) return chunkLink(s.chunk, "chunk " + (s.chunk + 1));
      if (s.activity === "finalize" && s.start) return "finalize round " + ((s.start.data.input || {}).round ?? "?");
      return s.title ? name + " “" + s.title + "”" : name;
    }
    function draw(s) {
      const verdict = s.running ? "running" : s.outcome.startsWith("error") ? s.outcome : s.refused ? "refused"
        : s.passed === undefined ? (s.outcome || (s.errors ? "error" : "")) : s.passed ? "PASS" : s.accepted ? "SHORT" : "FAIL";
      const first = s.events[0], ms = s.ms || Date.parse(s.last.ts) - Date.parse(first.ts);
      const facts = [s.headline ? brief(s.headline, Boolean(s.activity)) : ""];
      if (s.attempt > 1) facts.push("attempt " + s.attempt);
      if (s.errors) facts.push(plural(s.errors, "error"));
      if (s.activity) facts.push(secs(ms));
      facts.push(plural(s.events.length, "event"));
      s.head.replaceChildren(
        Quire.el("span", { className: "ts" }, String(first.ts).slice(11, 23)), "  ",
        Quire.el("span", { className: "label" }, label(s)), " ",
        verdict ? Quire.el("span", { className: "verdict " + verdict.split(":")[0].toLowerCase() }, verdict) : "", verdict ? " " : "",
        facts.filter(Boolean).join(" · "),
      );
      s.el.classList.toggle("err", Boolean(s.errors) || s.outcome.startsWith("error"));
      s.el.hidden = !s.events.some(matches);
    }

    return {
      add(e) {
        const s = stepOf(e);
        if (!s) return;
        take(s, e);
        draw(s);
      },
      // The oldest event leaves the panel (its whole log stays one download away).
      drop(e) {
        const s = bySeq.get(e.seq);
        if (!s) { pending = pending.filter(p => p !== e); return; }
        bySeq.delete(e.seq);
        s.events.shift();
        if (s.rendered && s.body.firstChild) s.body.firstChild.remove();
        if (s.events.length) draw(s); else { s.el.remove(); steps.splice(steps.indexOf(s), 1); }
      },
      // The stream ended: statements still waiting for an event of their own are a step too.
      flush() {
        if (!pending.length) return;
        const s = newStep(pending[0].seq, null);
        for (const p of pending) take(s, p);
        pending = [];
        draw(s);
      },
      refilter() {
        for (const s of steps) {
          s.el.hidden = !s.events.some(matches);
          if (s.rendered) for (const line of s.body.children) line.hidden = !matches(s.events.find(e => e.seq === Number(line.dataset.seq)));
        }
      },
      get steps() {
        return steps.map(s => ({ id: s.id, activity: s.activity, label: s.head.querySelector(".label").textContent,
                                 seqs: s.events.map(e => e.seq) }));
      },
    };
  }
  return { mount, brief };
})();
