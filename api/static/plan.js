// The job page's plan review: while a job waits for its plan to be approved (options.review_plan),
// its outline as a list to edit (titles, summaries, key points, word budgets, order, chapters added
// or removed), the budgets' total against the target, and Approve (POST /v1/jobs/{id}/plan).
"use strict";
const QuirePlan = (() => {
  function mount(jobId, root, onApproved) {
    const $ = sel => root.querySelector(sel);
    let items = [], target = 0, max = 0, level = "chapter", shown = false, busy = false;

    function row(it, i) {
      const title = Quire.el("input", { type: "text", value: it.title, className: "o-title", ariaLabel: "Title of " + level + " " + (i + 1) });
      const budget = Quire.el("input", { type: "number", min: 50, value: it.budget_words, className: "o-budget", ariaLabel: "Words of " + level + " " + (i + 1) });
      const summary = Quire.el("textarea", { className: "o-summary", value: it.summary, ariaLabel: "Summary of " + level + " " + (i + 1) });
      const points = Quire.el("textarea", { className: "o-points", value: it.key_points.join("\n"), ariaLabel: "Key points of " + level + " " + (i + 1) + ", one a line" });
      title.addEventListener("input", () => { it.title = title.value; });
      summary.addEventListener("input", () => { it.summary = summary.value; });
      points.addEventListener("input", () => { it.key_points = points.value.split("\n").map(s => s.trim()).filter(Boolean); });
      budget.addEventListener("input", () => { it.budget_words = Number(budget.value) || 0; total(); });
      const move = (d, label) => {
        const b = Quire.el("button", { type: "button", className: "secondary small", ariaLabel: label + " " + (i + 1) }, d < 0 ? "↑" : "↓");
        b.disabled = d < 0 ? i === 0 : i === items.length - 1;
        b.addEventListener("click", () => { items.splice(i + d, 0, items.splice(i, 1)[0]); render(); });
        return b;
      };
      const remove = Quire.el("button", { type: "button", className: "secondary small", ariaLabel: "Remove " + level + " " + (i + 1) }, "Remove");
      remove.disabled = items.length === 1;
      remove.addEventListener("click", () => { items.splice(i, 1); render(); });
      return Quire.el("li", { className: "outline-item" + (it.node ? "" : " added"), dataset: { node: it.node || "" } },
        Quire.el("div", { className: "o-head" }, Quire.el("b", {}, (i + 1) + "."), title, budget, Quire.el("span", { className: "muted" }, "words"),
          move(-1, "Move up"), move(1, "Move down"), remove),
        Quire.el("label", { className: "o-field" }, Quire.el("span", { className: "o-label" }, "Summary"), summary),
        Quire.el("label", { className: "o-field" }, Quire.el("span", { className: "o-label" }, "Key points, one a line"), points));
    }
    function total() {
      const sum = items.reduce((n, it) => n + (it.budget_words || 0), 0);
      const el = $("#plan-total");
      el.textContent = Quire.fmt(sum) + " words planned for a target of " + Quire.fmt(target) +
        (sum < target ? " — " + Quire.fmt(target - sum) + " short" : sum > max ? " — over the maximum of " + Quire.fmt(max) : "");
      el.className = sum < target || sum > max ? "fail" : "pass";
    }
    function render() {
      $("#outline").replaceChildren(...items.map(row));
      total();
    }
    async function refresh() {
      if (busy) return;
      let p;
      try { p = await Quire.json("/v1/jobs/" + jobId + "/plan"); } catch (ex) { return; }
      root.hidden = !p.awaiting_review;
      if (!p.awaiting_review || shown) return;
      shown = true;
      target = p.target_words; max = p.max_words; level = (p.items[0] || {}).level || "chapter";
      items = p.items.map(it => ({ node: it.node, title: it.title, summary: it.summary, key_points: it.key_points, budget_words: it.budget_words }));
      $("#plan-level").textContent = level + "s";
      render();
    }
    $("#plan-add").addEventListener("click", () => {
      items.push({ node: null, title: "New " + level + " " + (items.length + 1), summary: "", key_points: [], budget_words: 2000 });
      render();
      root.querySelectorAll(".o-title")[items.length - 1].focus();
    });
    $("#plan-approve").addEventListener("click", async () => {
      const err = $("#plan-error"); err.textContent = "";
      busy = true; $("#plan-approve").disabled = true;
      const body = { items: items.map(it => Object.assign(it.node ? { node: it.node } : {}, { title: it.title, summary: it.summary, key_points: it.key_points, budget_words: it.budget_words })) };
      try {
        const r = await Quire.json("/v1/jobs/" + jobId + "/plan", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
        root.hidden = true;
        onApproved(r);
      } catch (ex) { err.textContent = ex.message; }
      busy = false; $("#plan-approve").disabled = false;
    });
    refresh();
    return { refresh };
  }
  return { mount };
})();
