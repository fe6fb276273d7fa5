// The job page's coherence section: the report of GET /v1/jobs/{id}/coherence. Each finding links
// to the chunk it was found in (#chunk-N in the document) and to the audit event that recorded it
// (opened in the Audit Panel's raw view). Text from the API goes in as text nodes only.
"use strict";
const QuireCoherence = (() => {
  function mount(jobId, root, panel) {
    const $ = sel => root.querySelector(sel);
    let busy = false, again = false;
    // A key point not covered, an instruction not followed: what the author asked, found nowhere in the text.
    const asked = f => f.subtype === "key_point_not_covered" || f.subtype === "instruction_not_followed";
    function finding(f) {
      const there = f.contradicts || {};
      const fate = f.status === "repaired" ? "repaired (v" + f.repair_version + ")" : "open";
      const links = [Quire.el("a", { className: "to-chunk", href: "#chunk-" + (f.chunk + 1) }, "chunk " + (f.chunk + 1) + (f.version ? " v" + f.version : ""))];
      if (f.audit_seq) {
        const a = Quire.el("a", { href: "#", className: "to-seq" }, "audit #" + f.audit_seq);
        a.addEventListener("click", e => { e.preventDefault(); panel.show(f.audit_seq); });
        links.push(" · ", a);
      }
      return Quire.el("li", { className: "finding " + f.status, dataset: { finding: f.id } },
        Quire.el("div", {}, Quire.el("b", {}, f.category_name), " · " + f.severity + " · " + f.subtype + " at ", ...links,
          " · ", Quire.el("span", { className: f.status === "repaired" ? "pass" : "fail" }, fate)),
        Quire.el("div", {}, f.message),
        f.quote ? Quire.el("blockquote", {}, "here: “" + f.quote + "”") : null,
        there.quote ? Quire.el("blockquote", {}, (asked(f) ? "asked" : "established " + (there.chunk !== null && there.chunk !== undefined ? "in chunk " + (there.chunk + 1) : "by the plan")) + ": “" + there.quote + "”") : null);
    }
    function coverage(c) {
      if (!c || !c.checked) return "";
      return " · instructions and key points: " + c.checked + " checked, " + c.covered + " covered, " + c.missing +
        " not covered" + (c.unchecked ? ", " + c.unchecked + " unchecked (no valid answer from the judge)" : "");
    }
    async function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      try {
        const r = await Quire.json("/v1/jobs/" + jobId + "/coherence");
        $("#coherence-summary").textContent = r.summary;
        const cats = $("#coherence-categories");
        cats.replaceChildren(...Object.values(r.by_category).map(c =>
          Quire.el("div", {}, Quire.el("b", {}, String(c.found)), Quire.el("span", {}, c.name + (c.open ? " · " + c.open + " open" : "")))));
        const seams = Object.entries(r.seams).map(([k, n]) => n + " " + k).join(", ");
        $("#coherence-meta").textContent = "ledger: " + Quire.fmt(r.ledger.entries) + " entries, " + Quire.fmt(r.ledger.entities) +
          " entities · memory by the model in " + r.states.model + " of " + r.states.total + " states (fallback " +
          Math.round(100 * r.states.fallback_share) + "%)" + (seams ? " · seams: " + seams : "") + coverage(r.coverage);
        $("#coherence-list").replaceChildren(...r.items.map(finding));
        $("#coherence-empty").hidden = r.items.length > 0;
      } catch (ex) { $("#coherence-summary").textContent = ex.message; }
      busy = false;
      if (again) { again = false; refresh(); }
    }
    refresh();
    return { refresh };
  }
  return { mount };
})();
