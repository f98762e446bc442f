// minigpt playground: plain JavaScript, no libraries, nothing loaded from the network.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], limits: {}, columns: {}, controller: null, attn: null };

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v);
  }
  if (text !== undefined) e.textContent = text;
  return e;
}

// The banner shows each distinct message once; when only some of the columns hit it, it
// names them. Columns that did not start say so in a word and point at the banner.
const errors = new Map();  // message -> the models it came from ("" for the page itself)
function showError(message, model) {
  if (!message) errors.clear();
  else errors.set(message, [...(errors.get(message) || []), model || ""]);
  const box = $("error");
  box.textContent = "";
  const all = Object.keys(state.columns);
  for (const [msg, models] of errors) {
    const named = models.filter((m) => m);
    const some = named.length && named.length < all.length ? `${named.join(", ")}: ` : "";
    box.append(el("div", {}, some + msg));
  }
  box.hidden = errors.size === 0;
}

function shade(p) { return `hsl(${Math.round(120 * p)}, 75%, 82%)`; }
function fmtP(p) { return p >= 0.001 ? p.toFixed(3) : p.toExponential(1); }
function visible(s) { return s.replace(/\n/g, "\\n").replace(/\t/g, "\\t").replace(/^ $/, "␣") || "·"; }

function label(m) {
  const bits = [m.pos, m.step === null ? "step ?" : `step ${m.step}`];
  bits.push(m.val_loss === null ? "val loss n/a" : `val loss ${m.val_loss.toFixed(3)}`);
  return bits.join(" · ");
}

// --- tabs -------------------------------------------------------------------------------
for (const b of document.querySelectorAll("nav button")) {
  b.addEventListener("click", () => openTab(b.dataset.tab));
}
function openTab(name) {
  for (const b of document.querySelectorAll("nav button")) {
    b.setAttribute("aria-selected", String(b.dataset.tab === name));
    $("tab-" + b.dataset.tab).hidden = b.dataset.tab !== name;
  }
  if (name === "attention") fillAttentionModels();
  if (name === "encoding") loadViz();
}

// --- the models and the knobs --------------------------------------------------------------
async function init() {
  const r = await fetch("/api/models");
  const info = await r.json();
  state.models = info.models;
  state.limits = info.limits;
  const box = $("models");
  info.models.forEach((m, i) => {
    const id = "use-" + i;
    const lab = el("label", { for: id, title: `${m.pos}: ${m.description}; ${m.n_layer} layers, ${m.n_head} heads, d_model ${m.d_model}, context ${m.block_size}, ${m.tokenizer} tokens` });
    const cb = el("input", { type: "checkbox", id, value: m.name });
    cb.checked = i < 4;
    lab.append(cb, ` ${m.name} `, el("small", {}, `(${label(m)})`));
    box.append(lab);
  });
  $("prompt").maxLength = info.limits.max_prompt_chars;
  $("max_new_tokens").max = info.limits.max_new_tokens;
  // the knobs start at the server's defaults (minigpt.config.SamplingSettings)
  $("max_new_tokens").value = info.defaults.max_new_tokens;
  $("temperature").value = $("temperature-range").value = info.defaults.temperature;
  $("seed").value = info.defaults.seed;
  $("prompt").placeholder = `up to ${info.limits.max_prompt_chars} characters; max new tokens up to ${info.limits.max_new_tokens}`;
}

$("temperature-range").addEventListener("input", (e) => { $("temperature").value = e.target.value; });
$("temperature").addEventListener("input", (e) => { $("temperature-range").value = e.target.value; });

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function params() {
  return {
    prompt: $("prompt").value,
    temperature: numberOrNull("temperature"),
    top_k: numberOrNull("top_k"),
    top_p: numberOrNull("top_p"),
    max_new_tokens: numberOrNull("max_new_tokens"),
    seed: numberOrNull("seed"),
  };
}

// --- generating: one column per ticked model, all streaming at once ------------------------
$("generate").addEventListener("click", generateAll);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generateAll();
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });

function generateAll() {
  const names = [...document.querySelectorAll("#models input:checked")].map((c) => c.value);
  showError("");
  if (!names.length) { showError("Tick at least one model."); return; }
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  const cols = $("columns");
  cols.textContent = "";
  state.columns = {};
  const p = params();
  $("stop").disabled = false;
  $("generate").disabled = true;
  let left = names.length;
  for (const name of names) {
    const col = makeColumn(name);
    cols.append(col.el);
    state.columns[name] = col;
    stream(col, p, controller.signal).finally(() => {
      left -= 1;
      if (left === 0 && state.controller === controller) {  // this batch is over
        state.controller = null;
        $("stop").disabled = true;
        $("generate").disabled = false;
      }
    });
  }
}

function makeColumn(name) {
  const m = state.models.find((x) => x.name === name);
  const e = el("div", { class: "column", "data-model": name });
  const out = el("div", { class: "out" });
  const status = el("div", { class: "status" }, "waiting…");
  e.append(el("h3", {}, name), el("div", { class: "meta" }, label(m)), out, status);
  return { name, el: e, out, status, prompt: [], tokens: [], L: m.block_size, done: false };
}

async function stream(col, p, signal) {
  let resp;
  try {
    resp = await fetch("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...p, model: col.name }), signal,
    });
  } catch (err) {
    setStatus(col, err.name === "AbortError" ? "stopped" : "the server cannot be reached", true);
    return;
  }
  if (!resp.ok) {
    let msg = `error ${resp.status}`;
    try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
    showError(msg, col.name);
    setStatus(col, "not started: see the message above", true);
    col.done = true;
    return;
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let k;
      while ((k = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, k);
        buf = buf.slice(k + 2);
        for (const line of chunk.split("\n")) {
          if (line.startsWith("data: ")) handle(col, JSON.parse(line.slice(6)));
        }
      }
    }
  } catch (err) {
    setStatus(col, err.name === "AbortError" ? `stopped after ${col.tokens.length} tokens` : `stream broken: ${err.message}`, err.name !== "AbortError");
    return;
  }
  if (!col.done) setStatus(col, "the server closed the stream", true);
}

function setStatus(col, text, isError) {
  col.status.textContent = text;
  col.status.classList.toggle("error", !!isError);
}

function handle(col, ev) {
  if (ev.type === "start") {
    col.prompt = ev.prompt;
    col.L = ev.L;
    col.extrapolates = ev.extrapolates;
    col.out.append(el("span", { class: "prompt" }, ev.prompt_text));
    if (ev.note) col.el.querySelector(".meta").append(el("div", { class: "note" }, ev.note));
    setStatus(col, "generating…");
  } else if (ev.type === "token") {
    const i = col.tokens.length;
    col.tokens.push(ev);
    const span = el("span", { class: "tok", "data-i": String(i), style: `background:${shade(ev.p)}` }, ev.text);
    if (col.prompt.length + i === col.L) {  // the first token past the trained length L
      span.classList.add("boundary");
      span.dataset.l = String(col.L);
      const meta = col.el.querySelector(".meta");
      meta.append(el("div", { class: "lnote" }, `L=${col.L}: the trained length. Text after the blue mark is past it` +
        (col.extrapolates ? "." : `; this model sees only the last ${col.L} tokens there.`)));
    }
    if (ev.text.includes("\n")) span.classList.add("nl");  // a visible ↵ to hover and click
    span.title = "";
    col.out.append(span);
    setStatus(col, `${col.tokens.length} tokens…`);
  } else if (ev.type === "done") {
    col.done = true;
    const rate = ev.seconds > 0 ? ` (${(ev.tokens / ev.seconds).toFixed(1)} tokens/s)` : "";
    setStatus(col, `done: ${ev.tokens} tokens in ${ev.seconds.toFixed(2)} s${rate}`);
  } else if (ev.type === "error") {
    col.done = true;
    showError(ev.message, col.name);
    setStatus(col, "stopped: see the message above", true);
  }
}

// hover: the five most likely alternatives; click: the attention view of that token
$("columns").addEventListener("mouseover", (e) => {
  const t = e.target.closest(".tok");
  if (!t) { $("tip").hidden = true; return; }
  const ev = state.columns[t.closest(".column").dataset.model].tokens[Number(t.dataset.i)];
  const tip = $("tip");
  tip.textContent = "";
  tip.append(el("div", {}, `“${visible(ev.text || "")}” p = ${fmtP(ev.p)}`));
  const table = el("table");
  for (const [id, text, p] of ev.top) {
    const tr = el("tr", { class: id === ev.id ? "chosen" : "" });
    tr.append(el("td", {}, visible(text)), el("td", {}, fmtP(p)));
    table.append(tr);
  }
  tip.append(table);
  const r = t.getBoundingClientRect();
  tip.style.left = `${Math.min(r.left, window.innerWidth - 220)}px`;
  tip.style.top = `${r.bottom + 6}px`;
  tip.hidden = false;
});
$("columns").addEventListener("mouseleave", () => { $("tip").hidden = true; });

$("columns").addEventListener("click", (e) => {
  const t = e.target.closest(".tok");
  if (!t) return;
  const col = state.columns[t.closest(".column").dataset.model];
  openTab("attention");
  $("attn-model").value = col.name;
  showAttention(col.prompt.length + Number(t.dataset.i));
});

// --- attention ------------------------------------------------------------------------------
function fillAttentionModels() {
  const sel = $("attn-model");
  const keep = sel.value;
  sel.textContent = "";
  for (const name of Object.keys(state.columns)) sel.append(el("option", { value: name }, name));
  if (keep && state.columns[keep]) sel.value = keep;
}
$("attn-show").addEventListener("click", () => showAttention(null));
$("attn-layer").addEventListener("change", () => { if (state.attn && state.attn.query !== null) tokenView(state.attn.query); });

async function showAttention(query) {
  const col = state.columns[$("attn-model").value];
  if (!col) { showError("Generate some text first: attention is shown for the text on screen."); return; }
  showError("");
  const ids = col.prompt.map((x) => x[0]).concat(col.tokens.map((t) => t.id));
  const r = await fetch("/api/attention", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: col.name, ids }),
  });
  const a = await r.json();
  if (!r.ok) { showError(a.error); return; }
  const raw = atob(a.weights);
  a.w = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) a.w[i] = raw.charCodeAt(i);
  a.query = null;
  state.attn = a;
  const past = a.T > a.L;
  $("attn-note").textContent = `${col.name}: ${a.T} tokens` +
    (a.offset ? ` (the last ${a.T}; positions counted from the first shown)` : "") +
    `, trained length L = ${a.L}` + (past ? "; blue dashed lines mark L: queries below them are past the trained length." : ".");
  const layerSel = $("attn-layer");
  layerSel.textContent = "";
  for (let l = 0; l < a.n_layer; l++) layerSel.append(el("option", { value: String(l) }, `layer ${l}`));
  drawGrid(a);
  drawTokens(a);
  if (query !== null) tokenView(query - a.offset);
}

function weight(a, l, h, q, k) { return a.w[((l * a.n_head + h) * a.T + q) * a.T + k] / 255; }

// colour of a map cell: v in [0, 1] is sqrt(weight / the map's largest weight)
function mapColour(v) { return [255 - 230 * v, 255 - 250 * v, 255 - 120 * v]; }

function drawScale() {
  const c = $("attn-scale-bar");
  const ctx = c.getContext("2d");
  for (let x = 0; x < c.width; x++) {
    const [r, g, b] = mapColour(x / (c.width - 1));
    ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
    ctx.fillRect(x, 0, 1, c.height);
  }
  $("attn-scale").hidden = false;
}

function drawGrid(a) {
  const grid = $("attn-grid");
  grid.textContent = "";
  grid.style.gridTemplateColumns = `repeat(${a.n_head}, 180px)`;
  drawScale();
  for (let l = 0; l < a.n_layer; l++) {
    for (let h = 0; h < a.n_head; h++) {
      const c = el("canvas", { width: String(a.T), height: String(a.T), "data-layer": String(l), "data-head": String(h) });
      const ctx = c.getContext("2d");
      const img = ctx.createImageData(a.T, a.T);
      let top = 1e-6;  // each map scaled to its own largest weight
      for (let q = 0; q < a.T; q++) for (let k = 0; k <= q; k++) top = Math.max(top, weight(a, l, h, q, k));
      for (let q = 0; q < a.T; q++) {
        for (let k = 0; k < a.T; k++) {
          const o = (q * a.T + k) * 4;
          if (k > q) { img.data.set([217, 217, 217, 255], o); continue; }  // the masked future
          const v = Math.sqrt(weight(a, l, h, q, k) / top);  // small weights stay visible
          img.data.set([255 - 230 * v, 255 - 250 * v, 255 - 120 * v, 255], o);
        }
      }
      ctx.putImageData(img, 0, 0);
      if (a.T > a.L) {  // the trained-length boundary
        ctx.strokeStyle = "#1f6feb"; ctx.setLineDash([2, 2]); ctx.lineWidth = Math.max(1, a.T / 150);
        ctx.beginPath(); ctx.moveTo(0, a.L); ctx.lineTo(a.T, a.L); ctx.moveTo(a.L, 0); ctx.lineTo(a.L, a.T); ctx.stroke();
      }
      c.addEventListener("click", (e) => {
        const r = c.getBoundingClientRect();
        $("attn-layer").value = String(l);
        tokenView(Math.min(a.T - 1, Math.floor((e.clientY - r.top) / r.height * a.T)));
      });
      const fig = el("figure");
      const map = el("div", { class: "map" });
      map.append(el("span", { class: "ylab" }, "query (row)"), c);
      fig.append(map, el("div", { class: "xlab" }, "key (column)"),
                 el("figcaption", {}, `layer ${l} · head ${h}`));
      grid.append(fig);
    }
  }
}

function drawTokens(a) {
  const box = $("attn-tokens");
  box.textContent = "";
  $("attn-heads").textContent = "";
  $("attn-token-title").hidden = false;
  a.tokens.forEach((t, i) => {
    if (i === a.L) box.append(el("span", { class: "mark", title: `trained length L = ${a.L}` }, `| L=${a.L}`));
    const chip = el("span", { class: "chip" + (i >= a.L ? " past" : ""), "data-q": String(i) }, visible(t));
    chip.addEventListener("click", () => tokenView(i));
    box.append(chip);
  });
}

function tokenView(q) {
  const a = state.attn;
  if (!a || q < 0 || q >= a.T) return;
  a.query = q;
  for (const c of document.querySelectorAll("#attn-tokens .chip")) c.classList.toggle("selected", Number(c.dataset.q) === q);
  const l = Number($("attn-layer").value || 0);
  const heads = $("attn-heads");
  heads.textContent = "";
  heads.append(el("p", { class: "hint" }, `layer ${l}: the weights token ${q} (“${visible(a.tokens[q])}”) puts on the tokens up to it` + (q >= a.L ? `; it is past the trained length ${a.L}` : "")));
  for (let h = 0; h < a.n_head; h++) {
    const row = el("div", { class: "headrow", "data-head": String(h) });
    row.append(el("b", {}, `head ${h}`));
    for (let k = 0; k <= q; k++) {
      const w = weight(a, l, h, q, k);
      if (k === a.L) row.append(el("span", { class: "mark" }, "|"));
      row.append(el("span", { style: `background:rgba(31,111,235,${Math.sqrt(w).toFixed(3)})`, title: `${visible(a.tokens[k])}: ${w.toFixed(3)}` }, visible(a.tokens[k])));
    }
    heads.append(row);
  }
}

// --- the encoding's pictures --------------------------------------------------------------
const vizLoaded = new Set();
async function loadViz() {
  const box = $("viz");
  for (const m of state.models) {
    if (vizLoaded.has(m.name)) continue;
    vizLoaded.add(m.name);
    const sec = el("section", { "data-model": m.name });
    sec.append(el("h3", {}, `${m.name} (${label(m)})`));
    const note = el("p", { class: "hint" }, "drawing…");
    sec.append(note);
    box.append(sec);
    const r = await fetch(`/api/viz/${encodeURIComponent(m.name)}`);
    const v = await r.json();
    if (!r.ok) { note.textContent = v.error; continue; }
    note.textContent = v.note || "";
    const pics = el("div", { class: "pics" });
    for (const name of v.images) {
      const fig = el("figure");
      const src = `/api/viz/${encodeURIComponent(m.name)}/${encodeURIComponent(name)}`;
      const link = el("a", { href: src, target: "_blank" });
      const img = el("img", { src, alt: name });
      img.addEventListener("load", () => {  // a wide picture (two panels) takes two cells
        fig.classList.toggle("wide", img.naturalWidth > 1.8 * img.naturalHeight);
      });
      link.append(img);
      fig.append(link, el("figcaption", {}, name));
      pics.append(fig);
    }
    sec.append(pics);
  }
}

init().catch((err) => showError(`cannot load the models: ${err.message}`));
