// The Audit Panel: a live, resumable view of a job's audit log, as a story (events grouped under
// the step that wrote them, story.js) or raw (one line per event).
// The stream is read with fetch() (so the API key travels in a header, never in a URL),
// parsed as server-sent events, and resumed with Last-Event-ID after any drop: every seq
// appears exactly once, in order. The DOM keeps the newest MAX_LINES events; the whole log
// is always one click away as a JSON or TXT download.
"use strict";
const AuditPanel = (() => {
  const MAX_LINES = 5000;
  const TERMINAL = ["succeeded", "failed", "cancelled"];

  function summary(e) {
    const d = e.data || {};
    switch (e.kind) {
      case "sql": return (e.sql_text || "").replace(/\s+/g, " ").slice(0, 220) + (d.rowcount !== undefined ? "  → " + d.rowcount + " row(s), " + d.duration_ms + " ms" : "");
      case "row": return e.table_name + " #" + e.row_id + (d.changes ? " " + Object.keys(d.changes).map(k => k + ": " + short(d.changes[k].old) + " → " + short(d.changes[k].new)).join(", ") : "");
      case "llm": return (d.purpose || "") + " · " + (d.model || "") + " · tokens " + (d.tokens_in ?? "?") + " in / " + (d.tokens_out ?? "?") + " out · " + (d.latency_ms ?? "?") + " ms" + (d.status === "error" ? " · ERROR " + (d.error || "") : "");
      case "chunk": return "chunk " + (d.chunk + 1) + " " + e.action + (d.attempt ? " attempt " + d.attempt : "") + " · words " + (d.words_in != null ? d.words_in + " → " : "") + (d.words_out ?? d.words ?? "–") + " / target " + d.target_words + (d.passed === undefined ? "" : d.passed ? " · PASS" : " · FAIL");
      case "length": return (d.chunk !== undefined ? "chunk " + (d.chunk + 1) : d.scope) + " · " + d.words + " / " + (d.min_words ?? d.target_words) + " words · " + (d.passed ? "PASS" : "FAIL");
      case "activity": return (d.activity || "") + " (attempt " + d.attempt + ")" + (d.duration_ms !== undefined ? " " + d.duration_ms + " ms" : "") + (d.error ? " · " + d.error : "");
      case "user": return (d.user || "") + " · " + e.action + " · " + (d.ip || "?") + " · " + (d.user_agent || "");
      default: return JSON.stringify(d).slice(0, 240);
    }
  }
  // What one written row was: its id, and old → new for each changed column (or the values inserted).
  function rowText(r) {
    return "#" + r.id + (r.changes ? " " + Object.keys(r.changes).map(k => k + ": " + short(r.changes[k].old) + " → " + short(r.changes[k].new)).join(", ")
      : r.values ? " " + JSON.stringify(r.values) : "");
  }
  function short(v) { const s = typeof v === "string" ? v : JSON.stringify(v); return s && s.length > 40 ? s.slice(0, 40) + "…" : s; }
  function isError(e) { const d = e.data || {}; return e.kind === "error" || e.action === "error" || d.status === "error" || e.action === "failed"; }
  function lineText(e) { return String(e.seq).padStart(6) + "  " + e.ts + "  " + e.kind.padEnd(8) + " " + e.action.padEnd(9) + " " + summary(e); }

  function mount(jobId, root) {
    const lines = root.querySelector("#lines"), live = root.querySelector("#live"), foot = root.querySelector("#foot");
    const storyPane = root.querySelector("#story"), viewBtns = root.querySelectorAll("[data-view]");
    let pane = storyPane;  // the visible one of #story and #lines
    const newbar = root.querySelector("#newbar"), newcount = root.querySelector("#newcount");
    const kindSel = root.querySelector("#kind-filter"), textIn = root.querySelector("#text-filter");
    const state = { jobId, lastSeq: 0, seqs: [], follow: true, unseen: 0, ended: false, count: 0, trimmed: 0,
                    onEvent: null, onEnd: null, events: [] };
    const api = {
      get lastSeq() { return state.lastSeq; }, get seqs() { return state.seqs.slice(); }, get following() { return state.follow; },
      get steps() { return story.steps; }, get view() { return pane === storyPane ? "story" : "raw"; },
      set onEvent(f) { state.onEvent = f; }, set onEnd(f) { state.onEnd = f; },
      open() { root.hidden = false; }, close() { root.hidden = true; },
      // Show one event (a coherence finding's): the raw view, no filter, the line in view and marked.
      show(seq) {
        root.hidden = false; document.getElementById("main").classList.add("with-panel");
        kindSel.value = ""; textIn.value = ""; refilter();
        root.querySelector('[data-view="raw"]').click();
        const el = lines.querySelector('[data-seq="' + Number(seq) + '"]');
        for (const o of lines.querySelectorAll(".focus")) o.classList.remove("focus");
        if (el) { state.follow = false; el.classList.add("focus"); el.scrollIntoView({ block: "center" }); }
        else foot.textContent = "event " + seq + " is not loaded here (the downloads have it)";
      },
    };
    window.quireAudit = api;  // for tests and the curious

    function matches(e) {
      const k = kindSel.value, t = textIn.value.trim().toLowerCase();
      return (!k || e.kind === k || (k === "error" && isError(e))) && (!t || lineText(e).toLowerCase().includes(t));
    }
    // One event as a line of text nodes: nothing from the event is ever parsed as HTML.
    function render(e) {
      const d = e.data || {}, kind = String(e.kind);
      const head = [
        Quire.el("span", { className: "seq" }, String(e.seq).padStart(6)), "  ",
        Quire.el("span", { className: "ts" }, String(e.ts).slice(11, 23)), "  ",
        Quire.el("span", { className: "k k-" + kind.replace(/[^a-z_]/g, "") }, kind.padEnd(8)), " ",
        String(e.action).padEnd(9) + " ",
      ];
      const text = summary(e), verdict = / · (PASS|FAIL)$/.exec(text);
      const body = verdict
        ? [text.slice(0, verdict.index) + " · ", Quire.el("span", { className: verdict[1].toLowerCase() }, verdict[1])]
        : [text];
      const named = "chunk " + (d.chunk + 1);  // a chunk or length event links to its chunk in the document
      if ((kind === "chunk" || kind === "length") && Number.isInteger(d.chunk) && String(body[0]).startsWith(named)) {
        body.splice(0, 1, Quire.el("a", { className: "to-chunk", href: "#chunk-" + (d.chunk + 1) }, named), String(body[0]).slice(named.length));
      }
      let el;
      if (kind === "llm" || kind === "sql" || kind === "row") {
        const more = kind === "llm"
          ? "prompt: " + (d.prompt_summary || "") + "\nresponse: " + (d.response_summary || "") +
            "\ntokens in " + (d.tokens_in ?? "?") + ", out " + (d.tokens_out ?? "?") + (d.tokens_cached ? ", cached " + d.tokens_cached : "") +
            " · latency " + (d.latency_ms ?? "?") + " ms · finish " + (d.finish_reason || "–") + " · attempt " + (d.attempt ?? "–")
          : kind === "sql" ? (e.sql_text || "") + "\nparams: " + JSON.stringify(d.params) + "\ntables: " + (d.tables || []).join(", ") + " (" + e.action + ")" +
            (Array.isArray(d.rows) ? "\nrows: " + d.rows.map(rowText).join("\n      ") : "")
          : JSON.stringify(d, null, 1);
        el = Quire.el("details", {}, Quire.el("summary", {}, ...head, ...body), Quire.el("div", { className: "more" }, more));
      } else {
        el = Quire.el("div", {}, ...head, ...body);
      }
      el.className = "line" + (isError(e) ? " err" : "");
      el.dataset.seq = e.seq; el.dataset.kind = kind;
      el.hidden = !matches(e);
      return el;
    }
    function atBottom() { return pane.scrollHeight - pane.scrollTop - pane.clientHeight < 24; }
    for (const p of [lines, storyPane]) p.addEventListener("scroll", () => {
      if (p !== pane) return;
      const b = atBottom();
      if (b && !state.follow) { state.follow = true; state.unseen = 0; newbar.classList.remove("show"); }
      else if (!b && state.follow) { state.follow = false; }
    });
    root.querySelector("#jump").addEventListener("click", () => {
      state.follow = true; state.unseen = 0; newbar.classList.remove("show"); pane.scrollTop = pane.scrollHeight;
    });
    for (const b of viewBtns) b.addEventListener("click", () => {
      pane = b.dataset.view === "raw" ? lines : storyPane;
      lines.hidden = pane !== lines; storyPane.hidden = pane !== storyPane;
      for (const o of viewBtns) o.setAttribute("aria-pressed", String(o === b));
      state.follow = true; state.unseen = 0; newbar.classList.remove("show"); pane.scrollTop = pane.scrollHeight;
    });
    function refilter() {
      const following = state.follow;
      for (const el of lines.children) { const e = state.bySeq.get(Number(el.dataset.seq)); if (e) el.hidden = !matches(e); }
      story.refilter();
      if (following) { state.follow = true; pane.scrollTop = pane.scrollHeight; }
    }
    state.bySeq = new Map();
    const story = AuditStory.mount(storyPane, { render, matches, isError });
    kindSel.addEventListener("change", refilter);
    textIn.addEventListener("input", refilter);
    root.querySelector("#copy-all").addEventListener("click", async () => {
      const text = state.events.filter(matches).map(lineText).join("\n") + "\n";
      await navigator.clipboard.writeText(text);
      foot.textContent = "copied " + state.events.filter(matches).length + " lines";
    });
    root.querySelector("#dl-json").addEventListener("click", () => Quire.download("/v1/jobs/" + jobId + "/audit?format=json&download=1", "quire-audit-" + jobId + ".json"));
    root.querySelector("#dl-txt").addEventListener("click", () => Quire.download("/v1/jobs/" + jobId + "/audit?format=txt&download=1", "quire-audit-" + jobId + ".txt"));

    function add(e) {
      if (e.seq <= state.lastSeq) return;  // resumed streams never show a line twice
      state.lastSeq = e.seq; state.seqs.push(e.seq); state.count++;
      state.events.push(e); state.bySeq.set(e.seq, e);
      lines.appendChild(render(e));
      story.add(e);
      while (lines.children.length > MAX_LINES) {
        const first = lines.firstElementChild; state.bySeq.delete(Number(first.dataset.seq)); first.remove(); state.trimmed++;
        story.drop(state.events.shift());
      }
      if (state.follow) pane.scrollTop = pane.scrollHeight;
      else { state.unseen++; newcount.textContent = state.unseen + " new event" + (state.unseen === 1 ? "" : "s"); newbar.classList.add("show"); }
      foot.textContent = state.count + " events" + (state.trimmed ? " (oldest " + state.trimmed + " hidden here; downloads have them all)" : "") + (state.ended ? " · complete" : "");
      if (state.onEvent) state.onEvent(e);
    }

    async function connect() {
      while (!state.ended) {
        try {
          const r = await Quire.api("/v1/jobs/" + jobId + "/audit/stream", { headers: { "Last-Event-ID": String(state.lastSeq), Accept: "text/event-stream" } });
          if (!r.ok) { live.textContent = "error " + r.status; live.classList.add("off"); return; }
          live.textContent = "live"; live.classList.remove("off");
          const reader = r.body.getReader(), dec = new TextDecoder();
          let buf = "", ev = { event: "message", data: [] };
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += dec.decode(value, { stream: true });
            let i;
            while ((i = buf.indexOf("\n")) >= 0) {
              let line = buf.slice(0, i); buf = buf.slice(i + 1);
              if (line.endsWith("\r")) line = line.slice(0, -1);
              if (line === "") {
                if (ev.data.length) {
                  if (ev.event === "end") {
                    state.ended = true;
                    if (JSON.parse(ev.data.join("\n")).reason === "revoked") Quire.signOut();  // the key no longer works
                  }
                  else if (ev.event === "message") add(JSON.parse(ev.data.join("\n")));
                }
                ev = { event: "message", data: [] };
              } else if (line.startsWith("event:")) ev.event = line.slice(6).trim();
              else if (line.startsWith("data:")) ev.data.push(line.slice(5).replace(/^ /, ""));
            }
          }
        } catch (ex) { /* dropped: reconnect below */ }
        if (state.ended) break;
        live.textContent = "reconnecting"; live.classList.add("off");
        await new Promise(res => setTimeout(res, 1000));
      }
      story.flush();
      live.textContent = "complete"; live.classList.add("off");
      foot.textContent = state.count + " events · complete";
      if (state.onEnd) state.onEnd();
    }
    // A view of the job is a user action in its log: reported (and committed) before the log is
    // read, so this page's own view is in what it shows.
    Quire.api("/v1/jobs/" + jobId + "/views", { method: "POST" }).catch(() => {}).finally(connect);
    return api;
  }
  return { mount, lineText };
})();
