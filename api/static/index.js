// The sign-in and submit page.
"use strict";
const signin = document.getElementById("signin"), submit = document.getElementById("submit");
function show() { signin.hidden = !!Quire.key(); submit.hidden = !Quire.key(); Quire.showSignOut(); }
show();
document.getElementById("signin-form").addEventListener("submit", async e => {
  e.preventDefault();
  Quire.setKey(document.getElementById("key").value);
  const r = await fetch("/v1/jobs?limit=1", { headers: { Authorization: "Bearer " + Quire.key() } });
  if (!r.ok) { sessionStorage.removeItem("quire.key"); document.getElementById("signin-error").textContent = "That key was not accepted."; return; }
  const next = Quire.samePath(new URLSearchParams(location.search).get("next"));
  if (next) { location.href = next; return; }
  show(); document.getElementById("brief").focus();
});
// The request a submit (or an estimate) sends: JSON, or multipart with the file to rewrite.
function request() {
  const kind = document.getElementById("kind").value, file = document.getElementById("file").files[0];
  const target = document.getElementById("target").value, title = document.getElementById("title").value.trim();
  const brief = document.getElementById("brief").value;
  const options = document.getElementById("review").checked ? { review_plan: true } : null;
  if (file) {
    const fd = new FormData();
    fd.append("kind", kind); fd.append("target_words", target); fd.append("file", file);
    if (brief.trim()) fd.append("prompt", brief); if (title) fd.append("title", title);
    if (options) fd.append("options", JSON.stringify(options));
    return { method: "POST", body: fd };
  }
  const body = { kind, target_words: Number(target) };
  if (kind === "generate") body.prompt = brief; else body.input_text = brief;
  if (title) body.title = title;
  if (options) body.options = options;
  return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}
document.getElementById("estimate").addEventListener("click", async () => {
  const err = document.getElementById("job-error"); err.textContent = "";
  try {
    const e = await Quire.json("/v1/jobs/estimate", request());
    const fact = (k, label) => Quire.el("div", {}, Quire.el("b", {}, Quire.fmt(e[k].expected)),
      Quire.el("span", {}, label + " (" + Quire.fmt(e[k].low) + "–" + Quire.fmt(e[k].high) + ")"));
    const out = document.getElementById("estimate-out");
    out.replaceChildren(fact("calls", "model calls"), fact("tokens_in", "tokens in"), fact("tokens_out", "tokens out"),
      fact("wall_seconds", "seconds"), Quire.el("div", {}, Quire.el("b", {}, e.cost.priced ? "$" + e.cost.usd.expected : "–"),
        Quire.el("span", {}, e.cost.priced ? "cost ($" + e.cost.usd.low + "–$" + e.cost.usd.high + ")" : "cost: no price set")));
    out.hidden = false;
    document.getElementById("estimate-note").textContent = "Based on " + e.based_on +
      ". The story memory is " + Math.round(100 * e.memory_share) + "% of the tokens.";
  } catch (ex) { err.textContent = ex.message; }
});
document.getElementById("job-form").addEventListener("submit", async e => {
  e.preventDefault();
  const err = document.getElementById("job-error"); err.textContent = "";
  const opts = request();
  document.getElementById("go").disabled = true;
  try {
    const job = await Quire.json("/v1/jobs", opts);
    location.href = "/jobs/" + job.id;
  } catch (ex) { err.textContent = ex.message; document.getElementById("go").disabled = false; }
});
