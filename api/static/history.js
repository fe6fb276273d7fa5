// The job history page: the caller's jobs, newest first, a page at a time. Rows are built from
// text nodes (Quire.el): a title is whatever the user or the model wrote, never markup.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  if (!Quire.requireKey()) return;
  const el = Quire.el;
  let cursor = null;
  const rows = document.getElementById("rows");
  function row(j) {
    const words = j.output_words ?? j.words_written;
    const links = el("td", {}, el("a", { href: "/jobs/" + encodeURIComponent(j.id) }, "job & audit log"));
    if (j.status === "succeeded") links.append(" · ", el("a", { href: "#", dataset: { out: j.id } }, "document"));
    return el("tr", { dataset: { jobId: j.id } },
      el("td", {}, Quire.when(j.created_at)),
      el("td", {}, j.title || "(untitled)"),
      el("td", {}, j.kind),
      el("td", {}, el("span", { className: "status " + j.status }, j.status)),
      el("td", { className: "num" }, Quire.fmt(j.target_words)),
      el("td", { className: "num" }, Quire.fmt(words)),
      el("td", {}, j.target_met ? "✓ yes" : "no"),
      el("td", { className: "num" }, Quire.fmt(j.audit_events)),
      links);
  }
  async function load(reset) {
    if (reset) { rows.replaceChildren(); cursor = null; }
    const p = new URLSearchParams({ limit: "25" });
    for (const f of ["status", "kind"]) { const v = document.getElementById(f).value; if (v) p.set(f, v); }
    if (cursor) p.set("cursor", cursor);
    try {
      const data = await Quire.json("/v1/jobs?" + p);
      for (const j of data.items) rows.appendChild(row(j));
      cursor = data.next_cursor;
      document.getElementById("more").hidden = !cursor;
    } catch (ex) { document.getElementById("err").textContent = ex.message; }
  }
  rows.addEventListener("click", e => {
    const id = e.target.dataset && e.target.dataset.out;
    if (id) { e.preventDefault(); Quire.download("/v1/jobs/" + encodeURIComponent(id) + "/output", "quire-" + id + ".md"); }
  });
  document.getElementById("more").addEventListener("click", () => load(false));
  for (const f of ["status", "kind"]) document.getElementById(f).addEventListener("change", () => load(true));
  load(true);
});
