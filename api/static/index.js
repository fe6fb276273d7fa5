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
document.getElementById("job-form").addEventListener("submit", async e => {
  e.preventDefault();
  const err = document.getElementById("job-error"); err.textContent = "";
  const kind = document.getElementById("kind").value, file = document.getElementById("file").files[0];
  const target = document.getElementById("target").value, title = document.getElementById("title").value.trim();
  const brief = document.getElementById("brief").value;
  let opts;
  if (file) {
    const fd = new FormData();
    fd.append("kind", kind); fd.append("target_words", target); fd.append("file", file);
    if (brief.trim()) fd.append("prompt", brief); if (title) fd.append("title", title);
    opts = { method: "POST", body: fd };
  } else {
    const body = { kind, target_words: Number(target) };
    if (kind === "generate") body.prompt = brief; else body.input_text = brief;
    if (title) body.title = title;
    opts = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }
  document.getElementById("go").disabled = true;
  try {
    const job = await Quire.json("/v1/jobs", opts);
    location.href = "/jobs/" + job.id;
  } catch (ex) { err.textContent = ex.message; document.getElementById("go").disabled = false; }
});
