// The job page's edits: a chapter's actions (regenerate with an instruction, edit its text by hand,
// lock, its history with rollbacks), each an edit followed until it ends; and the document's versions,
// each a diff away from the one before (a unified diff, line by line).
"use strict";
const QuireEdits = (() => {
  const JSONH = { "Content-Type": "application/json" };

  function mount(jobId, root, versionsRoot, changed) {
    const $ = sel => root.querySelector(sel);
    let node = null;

    function show(part) {
      for (const p of ["regen", "edit", "history"]) $("#np-" + p).hidden = p !== part;
    }
    async function open(action, tile) {
      if (action === "lock" || action === "unlock") {
        try { await Quire.json("/v1/jobs/" + jobId + "/nodes/" + tile.node + "/lock", { method: action === "lock" ? "PUT" : "DELETE" }); }
        catch (ex) { $("#np-error").textContent = ex.message; }
        changed(false);
        return;
      }
      $("#np-error").textContent = ""; $("#np-status").textContent = "";
      node = await Quire.json("/v1/jobs/" + jobId + "/nodes/" + tile.node);
      $("#np-title").textContent = node.level + ": " + (node.title || "");
      $("#np-meta").textContent = Quire.fmt(node.words) + " / " + Quire.fmt(node.budget_words) + " words" +
        (node.lock ? " · locked by " + node.lock.by : "");
      if (action === "edit") $("#np-text").value = node.text;
      if (action === "history") history();
      show(action === "regenerate" ? "regen" : action);
      root.hidden = false;
      root.scrollIntoView({ block: "nearest" });
    }
    function history() {
      const rows = node.edits.map(e => Quire.el("li", {},
        Quire.el("b", {}, "edit " + e.number), " · " + e.kind + " by " + e.by + " · " + e.status +
        (e.document_version ? " → document v" + e.document_version : "") + (e.instruction ? " · “" + e.instruction + "”" : "") +
        (e.reason ? " · " + e.reason : "")));
      const back = node.versions.map(v => {
        const b = Quire.el("button", { type: "button", className: "secondary small", dataset: { to: v } }, v === 0 ? "as first written" : "as edit " + v + " left it");
        b.addEventListener("click", () => start("rollback", { to: v }));
        return b;
      });
      $("#np-edits").replaceChildren(...(rows.length ? rows : [Quire.el("li", { className: "muted" }, "No edit yet.")]));
      $("#np-rollback").replaceChildren(...back);
    }
    // Start an edit and follow it to its end; then everything it changed is read again.
    async function start(kind, body) {
      const err = $("#np-error"); err.textContent = "";
      const path = { regenerate: "regenerate", edit: "text", rollback: "rollback" }[kind];
      let r;
      try {
        r = await Quire.json("/v1/jobs/" + jobId + "/nodes/" + node.node + "/" + path,
          { method: kind === "edit" ? "PUT" : "POST", headers: JSONH, body: JSON.stringify(body) });
      } catch (ex) { err.textContent = ex.message; return; }
      const status = $("#np-status");
      status.textContent = "edit " + r.number + " (" + kind + ") running…";
      changed(false);
      for (;;) {
        await new Promise(res => setTimeout(res, 700));
        const e = await Quire.json(r.link).catch(() => null);
        if (!e || e.status === "running") { changed(false); continue; }
        status.textContent = e.status === "done" ? "edit " + e.number + " done: document version " + e.document_version +
          " (" + e.llm_calls + " model calls" + (e.flagged ? ", " + e.flagged + " later passage(s) flagged" : "") + ")"
          : "edit " + e.number + " failed: " + e.reason;
        status.className = e.status === "done" ? "pass" : "fail";
        changed(true);
        return;
      }
    }
    $("#np-go").addEventListener("click", () => {
      const instruction = $("#np-instruction").value.trim();
      start("regenerate", instruction ? { instruction } : {});
    });
    $("#np-save").addEventListener("click", () => start("edit", { text: $("#np-text").value }));
    $("#np-close").addEventListener("click", () => { root.hidden = true; });

    // The document's versions, each with its diff from the one before.
    async function versions() {
      let v;
      try { v = await Quire.json("/v1/jobs/" + jobId + "/versions"); } catch (ex) { return; }
      versionsRoot.hidden = v.items.length < 2;
      const list = versionsRoot.querySelector("#versions-list");
      list.replaceChildren(...v.items.map(d => {
        const who = d.edit ? "edit " + d.edit.number + ": " + d.edit.kind + " by " + d.edit.by : "written by the job";
        const li = Quire.el("li", { dataset: { version: d.version } }, Quire.el("b", {}, "v" + d.version), " · " + Quire.fmt(d.words) + " words · " + who + " · " + Quire.when(d.created_at) + " ");
        if (d.version > 1) {
          const b = Quire.el("button", { type: "button", className: "secondary small" }, "Diff with v" + (d.version - 1));
          b.addEventListener("click", () => diff(d.version - 1, d.version));
          li.append(b);
        }
        return li;
      }));
    }
    async function diff(a, b) {
      const d = await Quire.json("/v1/jobs/" + jobId + "/diff?from=" + a + "&to=" + b);
      const lines = d.diff.split("\n").filter(Boolean).map(line => Quire.el("div", {
        className: line.startsWith("@@") ? "hunk" : line.startsWith("+") && !line.startsWith("+++") ? "add" : line.startsWith("-") && !line.startsWith("---") ? "del" : "ctx",
      }, line));
      const pre = versionsRoot.querySelector("#diff");
      pre.replaceChildren(...lines);
      pre.hidden = false;
      versionsRoot.querySelector("#diff-title").textContent = "v" + a + " → v" + b + ": +" + d.lines_added + " −" + d.lines_removed + " lines, " +
        Quire.fmt(d.words.from) + " → " + Quire.fmt(d.words.to) + " words";
    }
    versions();
    return { open, versions, diff };
  }
  return { mount };
})();
