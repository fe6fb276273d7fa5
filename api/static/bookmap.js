// The job page's book map: the book at a glance (GET /v1/jobs/{id}/map). Parts and chapters as tiles
// in plan order, coloured by state (planned, writing, done, locked, regenerated), each with its words
// against its budget and its coherence findings, and its actions; a timeline of the chapters in flight
// (an SVG built element by element); and, once the job has ended, its estimate beside what it used.
"use strict";
const QuireBook = (() => {
  const ROW = 18, LABEL = 150, WIDTH = 760;

  function mount(jobId, root, onAction) {
    const $ = sel => root.querySelector(sel);
    let last = null, busy = false, again = false, estimated = false;

    function tile(t, status) {
      const pct = Math.min(100, 100 * t.words / Math.max(1, t.budget_words));
      const fill = Quire.el("div", { className: "fill" });
      fill.style.width = pct.toFixed(1) + "%";
      const acts = [];
      const written = t.chunks_total > 0 && t.chunks_done === t.chunks_total;
      const act = (name, label) => {
        const b = Quire.el("button", { type: "button", className: "secondary small", dataset: { action: name }, ariaLabel: label + " " + t.title }, label);
        b.addEventListener("click", () => onAction(name, t));
        acts.push(b);
      };
      if (status === "succeeded" && written && t.state !== "locked") { act("regenerate", "Regenerate"); act("edit", "Edit"); }
      if (written && (status === "succeeded" || status === "running")) act(t.state === "locked" ? "unlock" : "lock", t.state === "locked" ? "Unlock" : "Lock");
      if (status === "succeeded" && written) act("history", "History");
      return Quire.el("div", { className: "tile state-" + t.state, dataset: { node: t.node, state: t.state }, tabIndex: 0 },
        Quire.el("div", { className: "t-title" }, t.title),
        Quire.el("div", { className: "t-state" }, t.state),
        Quire.el("div", { className: "t-meter", title: Quire.fmt(t.words) + " of " + Quire.fmt(t.budget_words) + " words" }, fill),
        Quire.el("div", { className: "t-words" }, Quire.fmt(t.words) + " / " + Quire.fmt(t.budget_words) + " words"),
        Quire.el("div", { className: "t-findings" + (t.open_findings ? " open" : "") },
          t.findings ? t.findings + " finding" + (t.findings === 1 ? "" : "s") + (t.open_findings ? ", " + t.open_findings + " open" : "") : "no findings"),
        acts.length ? Quire.el("div", { className: "t-actions" }, ...acts) : null);
    }
    function tiles(m) {
      const out = [];
      let group = null, part = undefined;
      for (const t of m.tiles) {
        if (t.part !== part) {
          part = t.part;
          group = t.part ? Quire.el("div", { className: "part" }, Quire.el("div", { className: "part-title" }, t.part_title || "Part")) : null;
          if (group) out.push(group);
        }
        const el = tile(t, m.status);
        if (group) group.append(el); else out.push(el);
      }
      return out;
    }
    // The chapters in flight: one row each, a bar from its first attempt to its end (or now).
    function timeline(m) {
      const t0 = Date.parse(m.started_at || m.now), t1 = Date.parse(m.completed_at || m.now);
      const span = Math.max(1, t1 - t0), rows = m.tiles.filter(t => t.started_at);
      const h = Math.max(1, rows.length) * ROW + 24, x = ms => LABEL + (WIDTH - LABEL - 10) * (ms - t0) / span;
      const kids = [Quire.svg("line", { x1: LABEL, y1: h - 18, x2: WIDTH - 10, y2: h - 18, class: "axis" }),
        Quire.svg("text", { x: LABEL, y: h - 4, class: "tick" }, "0 s"),
        Quire.svg("text", { x: WIDTH - 10, y: h - 4, class: "tick end" }, Math.round(span / 1000) + " s")];
      rows.forEach((t, i) => {
        const a = Date.parse(t.started_at), b = t.ended_at ? Date.parse(t.ended_at) : t1;
        const y = i * ROW + 2;
        kids.push(Quire.svg("text", { x: LABEL - 6, y: y + 12, class: "label" }, t.title.slice(0, 22)));
        kids.push(Quire.svg("rect", { x: x(a).toFixed(1), y, width: Math.max(2, x(b) - x(a)).toFixed(1), height: ROW - 5, rx: 3,
          class: "bar state-" + t.state + (t.ended_at ? "" : " live"), "data-node": t.node },
          Quire.svg("title", {}, t.title + ": " + t.state + ", " + Math.round((b - a) / 1000) + " s")));
      });
      return Quire.svg("svg", { viewBox: "0 0 " + WIDTH + " " + h, width: "100%", role: "img", "aria-label": "Timeline of the chapters as they were written" }, ...kids);
    }
    async function estimate() {
      let e;
      try { e = await Quire.json("/v1/jobs/" + jobId + "/estimate"); } catch (ex) { return; }
      const est = e.estimate, act = e.actual;
      const fact = (label, k, unit) => Quire.el("div", {}, Quire.el("b", {}, Quire.fmt(act[k]) + (unit || "") + " / " + Quire.fmt(est[k].expected) + (unit || "")),
        Quire.el("span", {}, label + " used / estimated (" + Quire.fmt(est[k].low) + "–" + Quire.fmt(est[k].high) + ")"));
      $("#estimate").replaceChildren(fact("model calls", "calls"), fact("tokens in", "tokens_in"), fact("tokens out", "tokens_out"),
        fact("seconds", "wall_seconds", " s"));
      $("#estimate-basis").textContent = "Estimated before this job from " + est.based_on + ".";
      root.querySelector("#estimate-box").hidden = false;
    }
    async function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      try {
        const m = await Quire.json("/v1/jobs/" + jobId + "/map");
        last = m;
        $("#map").replaceChildren(...tiles(m));
        $("#timeline").replaceChildren(timeline(m));
        root.hidden = m.tiles.length === 0;
        if (["succeeded", "failed", "cancelled"].includes(m.status) && !estimated) { estimated = true; estimate(); }
      } catch (ex) { /* the next event refreshes it */ }
      busy = false;
      if (again) { again = false; refresh(); }
    }
    refresh();
    return { refresh, get last() { return last; } };
  }
  return { mount };
})();
