// Shared by Quire's pages: the API key (this browser session only), authenticated fetch, and el(),
// the one way the pages build DOM. Everything that came from the API (model output, model names,
// titles, errors, numbers) goes in as text nodes, never as markup: there is no innerHTML here, and
// the pages' CSP (Trusted Types) makes any such assignment throw.
"use strict";
const Quire = {
  key() { return sessionStorage.getItem("quire.key") || ""; },
  setKey(k) { sessionStorage.setItem("quire.key", k.trim()); },
  signOut() { sessionStorage.removeItem("quire.key"); location.href = "/"; },
  async api(path, opts = {}) {
    const headers = Object.assign({}, opts.headers || {}, { Authorization: "Bearer " + Quire.key() });
    const r = await fetch(path, Object.assign({}, opts, { headers }));
    if (r.status === 401) { Quire.signOut(); throw new Error("signed out: invalid key"); }
    return r;
  },
  async json(path, opts) {
    const r = await Quire.api(path, opts);
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(Quire.detail(body) || ("HTTP " + r.status));
    return body;
  },
  detail(body) {
    const d = body && body.detail;
    if (Array.isArray(d)) return d.map(e => (e.loc ? e.loc.filter(x => x !== "body").join(".") + ": " : "") + e.msg).join("\n");
    return typeof d === "string" ? d : "";
  },
  async download(path, filename) {
    const r = await Quire.api(path);
    if (!r.ok) throw new Error("download failed: HTTP " + r.status);
    const url = URL.createObjectURL(await r.blob());
    const a = document.createElement("a");
    a.href = url; a.download = filename; document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  },
  fmt(n) { return (n === null || n === undefined) ? "–" : Number(n).toLocaleString("en-US"); },
  when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; },
  // el("a", { href, className, dataset: {...} }, "text", child, ...): strings become text nodes.
  el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "dataset") Object.assign(node.dataset, v); else node[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  },
  // svg("rect", { x, y, width, class }, child, ...): an SVG element, attributes set one by one.
  svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  },
  requireKey() {
    if (!Quire.key()) { location.href = "/?next=" + encodeURIComponent(location.pathname); return false; }
    return true;
  },
  // A path of this site to go to after signing in, or null (no open redirect): it must be a path
  // ("/..."), with no backslash or control character, and still one once the URL parser has
  // normalised it: "//evil.example", "/\\evil.example", "/.//evil.example", "/..//evil.example" and
  // "/%2e//evil.example" all normalise to "//evil.example", which a browser reads as another site.
  samePath(next) {
    if (typeof next !== "string" || !next.startsWith("/") || /[\\\u0000-\u001f\u007f]/.test(next)) return null;
    let u;
    try { u = new URL(next, location.origin); } catch (e) { return null; }
    const path = u.pathname + u.search + u.hash;
    if (u.origin !== location.origin || !path.startsWith("/") || path.startsWith("//") || path.includes("\\")) return null;
    return path;
  },
  // "Sign out" only for someone signed in.
  showSignOut() { const out = document.getElementById("signout"); if (out) out.hidden = !Quire.key(); },
};
document.addEventListener("DOMContentLoaded", () => {
  const out = document.getElementById("signout");
  if (out) out.addEventListener("click", e => { e.preventDefault(); Quire.signOut(); });
  Quire.showSignOut();
});
