// The rnnlm-serve page: predictive typing, ranking, streamed generation and training jobs, on the public
// HTTP API of the server that serves this file. Plain browser JavaScript, no build step, no dependency.
"use strict";

const $ = (id) => document.getElementById(id);
const DEBOUNCE_MS = 25;       // a keystroke's request waits this long for the next keystroke
const HEALTH_EVERY_MS = 5000;
const MODELS_EVERY_MS = 15000;

// ---- the API --------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(message, status, type, param) {
    super(message);
    this.status = status;
    this.type = type;
    this.param = param;
  }
}

async function errorOf(res) {
  let message = `${res.status} ${res.statusText}`, type = "http_error", param = null;
  try {
    const body = await res.json();
    if (body && body.error) {
      message = body.error.message || message;
      type = body.error.type || type;
      param = body.error.param ?? null;
    }
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(message, res.status, type, param);
}

/** fetch() that turns an unreachable server and the API's error body into an ApiError. */
async function api(path, { method = "GET", body, signal, key } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (key) headers["Authorization"] = `Bearer ${key}`;
  let res;
  try {
    res = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    setServer(false);
    throw new ApiError(`Cannot reach the server at ${location.host}: is it running?`, 0, "network_error", null);
  }
  setServer(true);
  if (!res.ok) throw await errorOf(res);
  return res;
}

const getJSON = async (path, opts) => (await api(path, opts)).json();
const postJSON = async (path, body, opts = {}) => (await api(path, { ...opts, method: "POST", body })).json();

function showError(el, err) {
  el.textContent = err instanceof ApiError || !(err instanceof Error) ? String(err.message ?? err)
    : `Unexpected error: ${err.message}`;
  el.hidden = false;
}

function clearError(el) {
  el.hidden = true;
  el.textContent = "";
}

function setServer(ok) {
  const el = $("server-status");
  if (ok === server.ok) return;
  server.ok = ok;
  el.textContent = ok ? "server connected" : "cannot reach the server";
  el.dataset.state = ok ? "ok" : "down";
}

const server = { ok: null };

// ---- models and topic -----------------------------------------------------------------------
const models = { list: [] };

function fmtCount(n) {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : String(n);
}

function currentModel() {
  return $("model").value || undefined;
}

/** The fields every model call shares: the chosen model and the topic, when one is set. */
function common() {
  const topic = $("topic").value.trim();
  return { model: currentModel(), ...(topic ? { context: topic } : {}) };
}

async function refreshModels() {
  let data;
  try {
    data = (await getJSON("/v1/models")).data;
  } catch (err) {
    $("model-info").textContent = `Models: ${err.message}`;
    return;
  }
  const select = $("model");
  const names = data.map((m) => m.name);
  models.list = data;
  if (names.join() !== [...select.options].map((o) => o.value).join()) {
    const keep = select.value;
    select.replaceChildren(...data.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = `${m.name}${m.aliases.includes("default") ? " (default)" : ""} · ${fmtCount(m.parameters)}`;
      return option;
    }));
    const fallback = data.find((m) => m.aliases.includes("default")) || data[0];
    select.value = names.includes(keep) ? keep : fallback ? fallback.name : "";
  }
  describeModel();
}

function describeModel() {
  const m = models.list.find((x) => x.name === currentModel());
  $("model-info").textContent = !m ? "No model is loaded yet."
    : `${m.arch.toUpperCase()}${m.layers ? ` ${m.layers}×${m.hidden}` : ""}, ${fmtCount(m.parameters)} parameters, ` +
      `${fmtCount(m.vocab_size)} words; ${m.context ? "uses the topic" : "ignores the topic"}.`;
}

// ---- tabs -----------------------------------------------------------------------------------
const TABS = ["type", "rank", "generate", "train"];

function selectTab(name, focus = false) {
  for (const t of TABS) {
    const tab = $(`tab-${t}`), on = t === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`panel-${t}`).hidden = !on;
    if (on && focus) tab.focus();
  }
  history.replaceState(null, "", `#${name}`);
  if (name === "train") refreshJobs();
}

function setupTabs() {
  const list = document.querySelector("[role=tablist]");
  for (const t of TABS) $(`tab-${t}`).addEventListener("click", () => selectTab(t));
  list.addEventListener("keydown", (e) => {
    const i = TABS.findIndex((t) => $(`tab-${t}`) === document.activeElement);
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: TABS.length - 1 }[e.key];
    if (i < 0 || next === undefined) return;
    e.preventDefault();
    selectTab(TABS[(next + TABS.length) % TABS.length], true);
  });
  const start = location.hash.slice(1);
  selectTab(TABS.includes(start) ? start : "type");
}

// ---- predictive typing ----------------------------------------------------------------------
const typing = {
  seq: 0, timer: null, controller: null, keyAt: 0,
  items: [], active: 0, completing: null, forText: null,
  typed: 0, saved: 0, acceptWhenReady: false, dismissed: false,
};

const MIRRORED = ["boxSizing", "width", "borderTopWidth", "borderRightWidth", "borderBottomWidth", "borderLeftWidth",
  "paddingTop", "paddingRight", "paddingBottom", "paddingLeft", "fontStyle", "fontVariant", "fontWeight",
  "fontStretch", "fontSize", "lineHeight", "fontFamily", "textAlign", "textTransform", "textIndent",
  "letterSpacing", "wordSpacing", "tabSize"];

/** Pixel position of the caret inside a textarea: lay the text out again in a hidden copy. */
function caretPosition(area, pos) {
  const style = getComputedStyle(area);
  const copy = document.createElement("div");
  for (const p of MIRRORED) copy.style[p] = style[p];
  Object.assign(copy.style, { position: "absolute", visibility: "hidden", top: "0", left: "-9999px",
    whiteSpace: "pre-wrap", overflowWrap: "break-word" });
  copy.textContent = area.value.slice(0, pos);
  const mark = document.createElement("span");
  mark.textContent = area.value.slice(pos) || ".";
  copy.appendChild(mark);
  document.body.appendChild(copy);
  const line = parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.4;
  const at = { x: mark.offsetLeft - area.scrollLeft, y: mark.offsetTop - area.scrollTop + line };
  copy.remove();
  return at;
}

function textBeforeCaret() {
  const editor = $("editor");
  return editor.value.slice(0, editor.selectionStart);
}

function scheduleSuggest(delay = DEBOUNCE_MS) {
  clearTimeout(typing.timer);
  typing.timer = setTimeout(suggest, delay);
}

async function suggest() {
  const text = textBeforeCaret();
  const seq = ++typing.seq;
  if (typing.controller) typing.controller.abort();  // a newer keystroke makes the pending answer stale
  const controller = typing.controller = new AbortController();
  const keyAt = typing.keyAt || performance.now();
  if (!text.trim()) {  // nothing to predict from yet
    typing.forText = text;
    hideSuggestions();
    return;
  }
  const k = Math.min(10, Math.max(1, Number($("k").value) || 3));
  let answer;
  try {
    answer = await postJSON("/v1/next-word", { text, k, ...common() }, { signal: controller.signal });
  } catch (err) {
    if (err.name === "AbortError" || seq !== typing.seq) return;
    hideSuggestions();
    showError($("type-error"), err);
    return;
  }
  if (seq !== typing.seq) return;  // stale: the text changed while this answer was on its way
  clearError($("type-error"));
  const ms = performance.now() - keyAt;
  performance.measure("suggestion", { start: keyAt, duration: ms, detail: { text } });
  const latency = $("latency");
  latency.textContent = `${Math.round(ms)} ms`;
  latency.dataset.ms = ms.toFixed(1);
  typing.items = answer.predictions;
  typing.completing = answer.completing;
  typing.forText = text;
  typing.active = 0;
  renderSuggestions();
  if (typing.acceptWhenReady) {
    typing.acceptWhenReady = false;
    if (typing.items.length) accept(0);
  }
}

function renderSuggestions() {
  const list = $("suggestions"), editor = $("editor");
  list.dataset.for = typing.forText ?? "";
  if (!typing.items.length || typing.dismissed || document.activeElement !== editor) {
    list.hidden = true;
    editor.removeAttribute("aria-activedescendant");
    return;
  }
  const done = typing.completing ? typing.completing.length : 0;
  list.replaceChildren(...typing.items.map((p, i) => {
    const li = document.createElement("li");
    li.id = `suggestion-${i}`;
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", String(i === typing.active));
    li.dataset.word = p.word;
    const word = document.createElement("span");
    word.className = "word";
    if (done && p.word.toLowerCase().startsWith(typing.completing.toLowerCase())) {
      const typed = document.createElement("b");
      typed.textContent = p.word.slice(0, done);
      word.append(typed, p.word.slice(done));
    } else {
      word.textContent = p.word;
    }
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = `${(100 * p.prob).toFixed(p.prob < 0.1 ? 1 : 0)}%`;
    li.append(word, prob);
    li.addEventListener("mousedown", (e) => e.preventDefault());  // keep the focus in the editor
    li.addEventListener("click", () => accept(i));
    return li;
  }));
  list.hidden = false;
  editor.setAttribute("aria-activedescendant", `suggestion-${typing.active}`);
  const at = caretPosition(editor, editor.selectionStart);
  const left = Math.max(0, Math.min(editor.offsetLeft + at.x, editor.offsetLeft + editor.clientWidth - list.offsetWidth));
  list.style.left = `${left}px`;
  list.style.top = `${editor.offsetTop + Math.min(at.y, editor.clientHeight) + 4}px`;
}

function hideSuggestions() {
  typing.items = [];
  renderSuggestions();
}

function setActive(i) {
  typing.active = (i + typing.items.length) % typing.items.length;
  renderSuggestions();
}

/** Put suggestion i in the text: it replaces the half-typed word, or follows a finished one. */
function accept(i) {
  const editor = $("editor"), p = typing.items[i];
  if (!p) return;
  const caret = editor.selectionStart, before = editor.value.slice(0, caret);
  let partial = "";  // the half-typed word the suggestion replaces
  if (typing.completing !== null) {
    const last = before.match(/\S*$/)[0], done = typing.completing;
    partial = last.toLowerCase().endsWith(done.toLowerCase()) ? last.slice(last.length - done.length)
      : last.match(/\w*$/)[0];  // typed on since this answer: the word as it is now
  }
  const start = caret - partial.length;
  const needsSpace = !partial && start > 0 && !/\s/.test(editor.value[start - 1]);  // "London," + next word
  const insert = `${needsSpace ? " " : ""}${p.word} `;
  editor.setRangeText(insert, start, caret, "end");
  typing.typed += 1;  // the Tab or click
  typing.saved += Math.max(0, insert.length - partial.length - 1);
  updateCounts();
  typing.items = [];
  typing.keyAt = performance.now();
  renderSuggestions();
  scheduleSuggest(0);
}

function updateCounts() {
  const total = typing.typed + typing.saved;
  $("typed").textContent = String(typing.typed);
  const saved = $("saved");
  saved.textContent = total ? `${typing.saved} (${Math.round((100 * typing.saved) / total)}%)` : "0";
  saved.dataset.count = String(typing.saved);
}

function setupTyping() {
  const editor = $("editor");
  editor.addEventListener("input", () => {
    typing.typed += 1;
    typing.dismissed = false;
    typing.acceptWhenReady = false;  // a Tab pressed before the answer came is overtaken by this key
    typing.keyAt = performance.now();
    updateCounts();
    scheduleSuggest();
  });
  editor.addEventListener("keydown", (e) => {
    const open = !$("suggestions").hidden && typing.items.length > 0;
    if (e.key === "Tab" && !e.shiftKey && !e.altKey && !e.ctrlKey && !e.metaKey) {
      if (!open) return;  // nothing offered: Tab moves the focus as usual
      e.preventDefault();
      if (typing.forText === textBeforeCaret()) accept(typing.active);
      else { typing.acceptWhenReady = true; scheduleSuggest(0); }  // take the first answer for this text
    } else if (open && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
      e.preventDefault();
      setActive(typing.active + (e.key === "ArrowDown" ? 1 : -1));
    } else if (open && e.key === "Escape") {
      e.preventDefault();
      typing.dismissed = true;
      renderSuggestions();
    }
  });
  const caretMoved = (e) => {
    if (e.type === "click" || ["ArrowLeft", "ArrowRight", "Home", "End"].includes(e.key)) {
      typing.keyAt = performance.now();
      scheduleSuggest();
    }
  };
  editor.addEventListener("keyup", caretMoved);
  editor.addEventListener("click", caretMoved);
  editor.addEventListener("blur", () => renderSuggestions());
  editor.addEventListener("focus", () => renderSuggestions());
  $("clear-editor").addEventListener("click", () => {
    editor.value = "";
    Object.assign(typing, { typed: 0, saved: 0, forText: "" });
    updateCounts();
    hideSuggestions();
    $("latency").textContent = "–";
    editor.focus();
  });
  const again = () => { if (textBeforeCaret().trim()) { typing.keyAt = performance.now(); scheduleSuggest(); } };
  $("model").addEventListener("change", () => { describeModel(); again(); });
  $("topic").addEventListener("change", again);
  $("k").addEventListener("change", again);
}

// ---- which is more likely? ------------------------------------------------------------------
function surpriseClass(logprob) {
  const nats = -logprob;  // 0 = certain; every nat is a factor e less likely
  return `s${[1.5, 3, 4.5, 6, 7.5, 9].filter((edge) => nats >= edge).length}`;
}

async function rank(e) {
  e.preventDefault();
  const error = $("rank-error"), out = $("rank-results");
  clearError(error);
  const lines = $("rank-input").value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (!lines.length) {
    showError(error, "Enter at least one sentence, one per line.");
    return;
  }
  out.setAttribute("aria-busy", "true");
  try {
    const [ranked, scored] = await Promise.all([
      postJSON("/v1/rank", { candidates: lines, ...common() }),
      postJSON("/v1/score", { texts: lines, details: true, ...common() }),
    ]);
    const details = new Map(scored.results.map((r) => [r.text, r]));
    out.replaceChildren(...ranked.results.map((r) => rankedItem(r, details.get(r.text))));
    if (ranked.warnings.length) showError(error, ranked.warnings.join("; "));
  } catch (err) {
    showError(error, err);
  } finally {
    out.setAttribute("aria-busy", "false");
  }
}

function rankedItem(r, scored) {
  const li = document.createElement("li");
  li.className = "ranked-item";
  const head = document.createElement("div");
  head.className = "ranked-head";
  const badge = document.createElement("span");
  badge.className = "rank";
  badge.textContent = `#${r.rank}`;
  const text = document.createElement("span");
  text.className = "sentence";
  text.textContent = r.text;
  const numbers = document.createElement("span");
  numbers.className = "hint";
  numbers.textContent = `log p ${r.logprob.toFixed(2)} · perplexity ${r.perplexity.toFixed(1)}` +
    (r.oov_count ? ` · ${r.oov_count} unknown` : "");
  head.append(badge, text, numbers);
  const tokens = document.createElement("div");
  tokens.className = "tokens";
  for (const t of scored ? scored.tokens : []) {
    const span = document.createElement("span");
    span.className = `token ${surpriseClass(t.logprob)}${t.oov ? " oov" : ""}`;
    span.title = `${t.token}: log p = ${t.logprob.toFixed(2)}${t.oov ? " (not in the vocabulary)" : ""}`;
    const word = document.createElement("span");
    word.textContent = t.token === "<eos>" ? "⏎" : t.token;
    const lp = document.createElement("small");
    lp.textContent = t.logprob.toFixed(1);
    span.append(word, lp);
    tokens.appendChild(span);
  }
  li.append(head, tokens);
  return li;
}

// ---- generation -----------------------------------------------------------------------------
const gen = { controller: null };

/** Read a POSTed server-sent-event stream: one callback per `data:` payload. */
async function readEvents(res, onData) {
  const reader = res.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = events.pop();
    for (const event of events) {
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data && onData(data) === false) return;
    }
  }
}

async function generate(e) {
  e.preventDefault();
  const error = $("gen-error"), out = $("gen-output"), status = $("gen-status");
  clearError(error);
  const seed = $("gen-seed").value;
  const body = {
    prompt: $("gen-prompt").value, max_tokens: Number($("gen-max").value) || 60,
    temperature: Number($("gen-temp").value), top_p: Number($("gen-topp").value), stream: true,
    ...(seed !== "" ? { seed: Number(seed) } : {}), ...common(),
  };
  const controller = gen.controller = new AbortController();
  const prompt = document.createElement("span"), text = document.createElement("span");
  prompt.className = "prompt";
  prompt.textContent = body.prompt;
  text.className = "generated";
  out.replaceChildren(prompt, text);
  out.setAttribute("aria-busy", "true");
  $("gen-start").disabled = true;
  $("gen-stop").disabled = false;
  status.textContent = "generating…";
  status.dataset.state = "running";
  const started = performance.now();
  let tokens = 0, reason = null;
  const rate = () => `${tokens} tokens, ${(tokens / ((performance.now() - started) / 1000)).toFixed(0)} tokens/s`;
  try {
    const res = await api("/v1/generate", { method: "POST", body, signal: controller.signal });
    await readEvents(res, (data) => {
      if (data === "[DONE]") return false;
      const chunk = JSON.parse(data);
      if (chunk.token !== null) tokens += 1;
      text.textContent = (body.prompt && chunk.text ? " " : "") + chunk.text;
      if (chunk.finish_reason) reason = chunk.finish_reason;
      status.textContent = `generating… ${tokens} tokens`;
      return true;
    });
    status.textContent = `done: ${rate()} (${{ length: "max tokens reached", stop: "stop string", eos: "end of text" }[reason] || reason})`;
    status.dataset.state = "done";
  } catch (err) {
    if (err.name === "AbortError") {
      status.textContent = `stopped: ${rate()}`;
      status.dataset.state = "stopped";
    } else {
      status.textContent = "";
      status.dataset.state = "error";
      showError(error, err);
    }
  } finally {
    gen.controller = null;
    out.setAttribute("aria-busy", "false");
    const stopHadFocus = document.activeElement === $("gen-stop");
    $("gen-start").disabled = false;
    $("gen-stop").disabled = true;
    if (stopHadFocus) $("gen-start").focus();  // a disabled button would drop the keyboard focus
  }
}

function setupGenerate() {
  $("gen-form").addEventListener("submit", generate);
  $("gen-stop").addEventListener("click", () => {
    if (gen.controller) gen.controller.abort();
  });
  for (const id of ["gen-temp", "gen-topp"]) {
    $(id).addEventListener("input", () => { $(`${id}-out`).textContent = $(id).value; });
  }
}

// ---- training jobs --------------------------------------------------------------------------
const jobs = { timer: null, seen: new Map(), history: new Map(), items: new Map() };
const SVG = "http://www.w3.org/2000/svg";

function apiKey() {
  return $("job-key").value.trim() || undefined;
}

function fmtSeconds(s) {
  if (s == null) return "";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`
    : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

/** Share of the job done: by optimiser step when the total is known, else by finished epoch. */
function jobFraction(job) {
  const p = job.progress || {};
  if (job.status === "succeeded") return 1;
  const total = p.total_steps ?? p.steps_total ?? (p.steps_per_epoch && p.epochs ? p.steps_per_epoch * p.epochs : null);
  if (p.step != null && total) return Math.min(1, p.step / total);
  if (p.epoch != null && p.epochs) return Math.min(1, p.epoch / p.epochs);
  return 0;
}

/** Per-epoch loss and validation perplexity: the job's own history when it has one, else what polling saw. */
function jobHistory(job) {
  const p = job.progress || {};
  if (Array.isArray(p.history) && p.history.length) {
    return p.history.map((h) => ({ epoch: h.epoch, loss: h.train_loss ?? h.loss, ppl: h.valid_ppl }));
  }
  const seen = jobs.history.get(job.id) || new Map();
  if (p.epoch && (p.loss != null || p.valid_ppl != null)) seen.set(p.epoch, { epoch: p.epoch, loss: p.loss, ppl: p.valid_ppl });
  jobs.history.set(job.id, seen);
  return [...seen.values()].sort((a, b) => a.epoch - b.epoch);
}

function progressText(job) {
  const p = job.progress || {}, parts = [];
  if (p.epochs) parts.push(`epoch ${p.epoch ?? 0}/${p.epochs}`);
  const total = p.total_steps ?? p.steps_total;
  if (p.step != null) parts.push(total ? `step ${p.step}/${total}` : `step ${p.step}`);
  if (p.loss != null) parts.push(`loss ${p.loss.toFixed(3)}`);
  if (p.valid_ppl != null) parts.push(`valid ppl ${p.valid_ppl.toFixed(1)}`);
  if (job.status === "running" && p.eta_s != null) parts.push(`ETA ${fmtSeconds(p.eta_s)}`);
  if (job.status === "succeeded" && job.result) {
    const r = job.result;
    if (r.test_ppl != null) parts.push(`test ppl ${r.test_ppl.toFixed(1)}`);
    if (r.seconds != null) parts.push(`took ${fmtSeconds(r.seconds)}`);
  }
  if (job.status === "failed" && job.error) parts.push(job.error);
  return parts.join(" · ") || (job.status === "queued" ? "waiting for a worker" : "");
}

/** Training loss and validation perplexity per epoch: two small line charts side by side, as inline SVG. */
function drawChart(svg, points) {
  const w = 360, h = 120, panel = w / 2, left = 36, right = 10, top = 18, bottom = 18;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.appendChild(el);
    return el;
  };
  const series = [["loss", "training loss", "series-loss", 3], ["ppl", "validation perplexity", "series-ppl", 1]];
  series.forEach(([key, label, cls, digits], i) => {
    const x0 = i * panel + left, x1 = (i + 1) * panel - right, y0 = top, y1 = h - bottom;
    const pts = points.filter((p) => p[key] != null && Number.isFinite(p[key]));
    add("text", { x: i * panel + 4, y: 11, class: `title ${cls}` }, label);
    add("line", { x1: x0, y1: y1, x2: x1, y2: y1, class: "axis-line" });
    add("line", { x1: x0, y1: y0, x2: x0, y2: y1, class: "axis-line" });
    if (!pts.length) return;
    const es = pts.map((p) => p.epoch), vs = pts.map((p) => p[key]);
    const e0 = Math.min(...es), e1 = Math.max(...es), lo = Math.min(...vs), hi = Math.max(...vs);
    const x = (e) => (e1 === e0 ? (x0 + x1) / 2 : x0 + ((e - e0) / (e1 - e0)) * (x1 - x0));
    const y = (v) => (hi === lo ? (y0 + y1) / 2 : y0 + (1 - (v - lo) / (hi - lo)) * (y1 - y0));
    add("text", { x: x0 - 4, y: y0 + 4, class: "axis", "text-anchor": "end" }, hi.toFixed(digits > 1 ? 2 : 0));
    if (hi !== lo) add("text", { x: x0 - 4, y: y1, class: "axis", "text-anchor": "end" }, lo.toFixed(digits > 1 ? 2 : 0));
    add("text", { x: x0, y: h - 4, class: "axis" }, `epoch ${e0}`);
    if (e1 !== e0) add("text", { x: x1, y: h - 4, class: "axis", "text-anchor": "end" }, String(e1));
    if (pts.length > 1) add("polyline", { points: pts.map((p) => `${x(p.epoch)},${y(p[key])}`).join(" "), class: cls });
    for (const p of pts) {
      const dot = add("circle", { cx: x(p.epoch), cy: y(p[key]), r: 3, class: cls });
      const tip = document.createElementNS(SVG, "title");
      tip.textContent = `epoch ${p.epoch}: ${label} ${p[key].toFixed(digits)}`;
      dot.appendChild(tip);
    }
  });
}

function jobItem(job) {
  let item = jobs.items.get(job.id);
  if (!item) {
    const li = document.createElement("li");
    li.className = "job";
    li.dataset.id = job.id;
    li.innerHTML = `<div class="job-head"><strong class="job-name"></strong><span class="badge"></span>
      <span class="hint job-kind"></span><span class="job-actions"></span></div>
      <div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100"><div class="fill"></div></div>
      <p class="job-text hint"></p><svg class="chart" role="img"></svg>`;
    item = { li, cancel: null };
    jobs.items.set(job.id, item);
  }
  const { li } = item;
  li.dataset.status = job.status;
  li.querySelector(".job-name").textContent = job.name;
  const badge = li.querySelector(".badge");
  badge.textContent = job.cancel_requested && job.status === "running" ? "cancelling" : job.status;
  badge.dataset.status = job.status;
  const params = job.params || {};
  li.querySelector(".job-kind").textContent = `${job.type} · ${params.arch || ""} ${params.layers || ""}×${params.hidden || ""}`;
  const pct = Math.round(100 * jobFraction(job));
  const bar = li.querySelector(".bar");
  bar.setAttribute("aria-valuenow", String(pct));
  bar.setAttribute("aria-label", `${job.name}: ${pct}% done`);
  li.querySelector(".fill").style.width = `${pct}%`;
  li.querySelector(".job-text").textContent = progressText(job);
  const points = jobHistory(job);
  const chart = li.querySelector(".chart");
  chart.setAttribute("aria-label", `${job.name}: training loss and validation perplexity per epoch`);
  chart.hidden = points.length === 0;
  drawChart(chart, points);
  const actions = li.querySelector(".job-actions");
  const active = job.status === "queued" || job.status === "running";
  if (active && !item.cancel) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "ghost";
    button.textContent = "Cancel";
    button.setAttribute("aria-label", `Cancel job ${job.name}`);
    button.addEventListener("click", () => cancelJob(job.id));
    actions.replaceChildren(button);
    item.cancel = button;
  } else if (!active && item.cancel !== "done") {
    actions.replaceChildren();
    if (job.status === "succeeded" && job.model) {
      const use = document.createElement("button");
      use.type = "button";
      use.className = "ghost";
      use.textContent = "Use model";
      use.setAttribute("aria-label", `Use model ${job.model}`);
      use.addEventListener("click", async () => {
        await refreshModels();
        if ([...$("model").options].some((o) => o.value === job.model)) {
          $("model").value = job.model;
          describeModel();
          selectTab("type", true);
        } else {
          showError($("job-error"), `Model ${job.model} is not served yet; try again in a moment.`);
        }
      });
      actions.appendChild(use);
    }
    item.cancel = "done";
  }
  return li;
}

async function refreshJobs() {
  clearTimeout(jobs.timer);
  let list = null;
  try {
    list = (await getJSON("/v1/jobs?limit=20", { key: apiKey() })).data;
    $("jobs-note").textContent = list.length ? "" : "No jobs yet.";
  } catch (err) {
    $("jobs-note").textContent = err.status === 401 || err.status === 403
      ? "This server needs an API key to show its jobs: enter it in the form." : `Jobs: ${err.message}`;
  }
  if (list) {
    let finished = false;
    for (const job of list) {
      const before = jobs.seen.get(job.id);
      if (job.status === "succeeded" && before && before !== "succeeded") finished = true;
      jobs.seen.set(job.id, job.status);
    }
    const items = list.map(jobItem), ul = $("jobs");
    // replace the children only when the list changed, so a focused Cancel button keeps the focus
    if (items.length !== ul.children.length || items.some((li, i) => ul.children[i] !== li)) ul.replaceChildren(...items);
    if (finished) refreshModels();  // a finished job's model joins the picker
  }
  const busy = list && list.some((j) => j.status === "queued" || j.status === "running");
  const visible = !$("panel-train").hidden;
  jobs.timer = setTimeout(refreshJobs, busy || visible ? 1000 : 10000);
}

async function submitJob(e) {
  e.preventDefault();
  const error = $("job-error");
  clearError(error);
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const trainTokens = number("job-train-tokens");
  const body = {
    type: "train", name: $("job-name").value.trim(), arch: $("job-arch").value, data: $("job-data").value.trim(),
    epochs: number("job-epochs"), emb: number("job-emb"), hidden: number("job-hidden"), layers: number("job-layers"),
    ...(trainTokens ? { train_tokens: trainTokens, valid_tokens: Math.max(1000, Math.round(trainTokens / 10)) } : {}),
  };
  try {
    const created = await postJSON("/v1/jobs", body, { key: apiKey() });
    jobs.seen.set(created.id, created.status);
    $("jobs-note").textContent = `Job ${body.name} ${created.status}.`;
    await refreshJobs();
  } catch (err) {
    showError(error, err);
  }
}

async function cancelJob(id) {
  const error = $("job-error");
  clearError(error);
  try {
    await postJSON(`/v1/jobs/${encodeURIComponent(id)}/cancel`, undefined, { key: apiKey() });
  } catch (err) {
    showError(error, err);
  }
  await refreshJobs();
}

// ---- start ----------------------------------------------------------------------------------
async function checkHealth() {
  try {
    await api("/health");
  } catch (_) { /* setServer(false) already says so in the header */ }
  setTimeout(checkHealth, HEALTH_EVERY_MS);
}

async function pollModels() {
  await refreshModels();
  setTimeout(pollModels, MODELS_EVERY_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  setupTabs();
  setupTyping();
  setupGenerate();
  $("rank-form").addEventListener("submit", rank);
  $("job-form").addEventListener("submit", submitJob);
  checkHealth();
  pollModels();
  refreshJobs();
});
