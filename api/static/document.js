// The job page's document: Markdown rendered as DOM, kept up to date from /v1/jobs/{id}/draft.
//
// A small renderer instead of a Markdown library: the documents hold headings, paragraphs and lists,
// and every library of the field renders to an HTML string, which the pages' CSP (Trusted Types,
// no policy) refuses and which would make model text markup. This one only creates elements and
// text nodes (Quire.el): "<img onerror=...>" in a chunk stays those characters. Inline markup
// (emphasis, links) stays literal text.
"use strict";
const QuireDoc = (() => {
  const HEADING = /^(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/;
  const ITEM = /^[ \t]{0,3}(?:([-*+])|(\d{1,9})[.)])[ \t]+(.*)$/;

  // Markdown blocks as elements; a heading of level n becomes h(n + shift), at most h6.
  function render(text, shift) {
    const out = [];
    let para = null, list = null, item = null;
    const end = () => { para = null; list = null; item = null; };
    for (const line of String(text).split(/\r\n|\r|\n/)) {
      let m;
      if (!line.trim()) { end(); continue; }
      if ((m = HEADING.exec(line))) {
        end();
        out.push(Quire.el("h" + Math.min(6, m[1].length + shift), {}, m[2]));
      } else if ((m = ITEM.exec(line))) {
        para = null;
        const ordered = m[2] !== undefined;
        if (!list || list.ordered !== ordered) {
          list = { ordered, el: Quire.el(ordered ? "ol" : "ul") };
          if (ordered && m[2] !== "1") list.el.start = Number(m[2]);
          out.push(list.el);
        }
        item = Quire.el("li", {}, m[3]);
        list.el.append(item);
      } else if (item && /^[ \t]/.test(line)) {
        item.append("\n" + line.trim());  // a list item's continuation line
      } else if (para) {
        para.append("\n" + line.trim());  // one paragraph: shown as a space, kept in the text
      } else {
        list = null; item = null;
        para = Quire.el("p", {}, line.trim());
        out.push(para);
      }
    }
    return out;
  }

  // The document in #doc: one element per piece (title, heading, chunk), kept by key so a refresh
  // replaces only the chunks that changed and the reader's place stays put. Chunk N (1-based, as the
  // Audit Panel counts) is the element #chunk-N.
  function mount(jobId, root, placeholder) {
    const shown = new Map();  // key -> { el, text }
    const state = { seq: 0, busy: false, again: null, complete: false, reads: 0 };

    function element(p) {
      if (p.heading) return Quire.el("h" + Math.min(6, p.heading + 2), {}, p.text);  // # -> h3 ... #### -> h6
      return Quire.el("div", { className: "chunk", id: "chunk-" + (p.chunk + 1), dataset: { chunk: p.chunk + 1 } },
        ...render(p.text, 2));
    }
    function apply(d) {
      let lost = false;
      const keep = new Set();
      let prev = null;
      for (const p of d.pieces) {
        let cur = shown.get(p.key);
        if (p.text !== null && (!cur || cur.text !== p.text)) {
          const el = element(p);
          if (cur) cur.el.replaceWith(el);
          cur = { el, text: p.text };
          shown.set(p.key, cur);
        }
        if (!cur) { lost = true; continue; }  // unchanged, but never seen here: read it all again
        keep.add(p.key);
        const want = prev ? prev.nextSibling : root.firstChild;
        if (want !== cur.el) root.insertBefore(cur.el, want);
        prev = cur.el;
      }
      for (const [k, cur] of shown) if (!keep.has(k)) { cur.el.remove(); shown.delete(k); }
      placeholder.hidden = shown.size > 0;
      if (!placeholder.hidden && placeholder.parentNode !== root) root.append(placeholder);
      state.seq = lost ? 0 : d.seq;
      state.complete = d.complete;
      return lost;
    }
    // One read at a time; asks made meanwhile are folded into one more read after it.
    async function refresh(full) {
      if (state.busy) { state.again = state.again === "full" || full ? "full" : "more"; return; }
      state.busy = true;
      try {
        let all = full;
        for (;;) {
          const d = await Quire.json("/v1/jobs/" + jobId + "/draft?after=" + (all ? 0 : state.seq));
          state.reads++;
          const lost = apply(d);
          if (state.complete) state.again = null;  // an ended job's document changes no more
          if (!lost && !state.again) break;
          all = lost || state.again === "full";
          state.again = null;
        }
      } finally { state.busy = false; }
    }
    return {
      refresh,
      get seq() { return state.seq; },
      get complete() { return state.complete; },
      get reads() { return state.reads; },
    };
  }
  return { render, mount };
})();
