// modelport's built-in page: the model list, a model's view, try-it, and tasks.
// Plain JS, no build step, no third-party code; it speaks only to this server:
// GET /v2 (server), GET /api/models (list, polled), GET /api/models/{m} (one model),
// POST /api/models/{m}/predict (try-it; asked with score_threshold=0 so the slider
// filters the boxes here, without asking again); the tasks view: POST /api/tasks,
// GET /api/tasks (polled while the view is open), GET /api/tasks/{id}/logs (streamed),
// DELETE /api/tasks/{id} (cancel), GET /api/tasks/{id}/output (a link to the zip).
"use strict";

const POLL_MS = 2000;
const TASK_POLL_MS = { active: 1000, idle: 2000 }; // faster while a task is queued or running
const TASK_PAGE = 20;
const TASK_ACTIVE = new Set(["queued", "running"]);
const COLOURS = ["#e6194b", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#d62728"];

const $ = (id) => document.getElementById(id);
const state = {
  models: [],
  previous: new Map(), // name -> {t, requests, success, success_ns}
  rates: new Map(), // name -> {rate, latencyMs, recent}
  current: null, // the model card shown
  image: null, // the picture on the canvas (an ImageBitmap or HTMLImageElement)
  detections: [], // every box of the last answer, best first
  threshold: 0.5,
  answer: null,
};

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// API keys: a server with keys answers 401. Ask for a key once (a prompt), keep it in
// this browser (localStorage) and send it as a Bearer token with every call after.
const KEY_STORE = "modelport.apiKey";
const keyAsk = { pending: null, declined: false };

async function apiFetch(url, options = {}) {
  let used = null; // the key this call was sent with
  const send = () => {
    const headers = new Headers(options.headers || {});
    used = localStorage.getItem(KEY_STORE);
    if (used) headers.set("Authorization", `Bearer ${used}`);
    return fetch(url, { ...options, headers });
  };
  let response = await send();
  if (response.status === 401) {
    // A call sent before the user gave a key (several start at once) just goes again
    // with it; only a refusal of the key now kept asks the user.
    const kept = localStorage.getItem(KEY_STORE);
    if ((kept && kept !== used) || (await askForKey(response))) response = await send();
  }
  return response;
}

function askForKey(response) {
  if (keyAsk.declined) return Promise.resolve(false);
  if (!keyAsk.pending) {
    keyAsk.pending = response.clone().json().catch(() => ({})).then((body) => {
      localStorage.removeItem(KEY_STORE); // missing, or no longer valid
      const key = window.prompt(`This server needs an API key.\n${(body && body.error) || ""}\n\nAPI key:`);
      keyAsk.pending = null;
      if (!key || !key.trim()) {
        keyAsk.declined = true; // asked once; a reload asks again
        return false;
      }
      localStorage.setItem(KEY_STORE, key.trim());
      return true;
    });
  }
  return keyAsk.pending;
}

// A link cannot carry the key: with one, download through fetch instead.
async function downloadWithKey(event, url, name) {
  if (!localStorage.getItem(KEY_STORE)) return;
  event.preventDefault();
  const response = await apiFetch(url);
  if (!response.ok) return;
  const link = el("a", { href: URL.createObjectURL(await response.blob()), download: name });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function getJSON(url, options) {
  const response = await apiFetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function showError(id, error) {
  const node = $(id);
  node.textContent = error ? String(error.message || error) : "";
  node.hidden = !error;
}

// -- the model list ---------------------------------------------------------------

function updateRates(models) {
  const now = performance.now();
  for (const model of models) {
    const s = model.stats;
    if (!s) continue;
    const requests = s.success + s.fail;
    const before = state.previous.get(model.name);
    let rate = 0;
    let latencyMs = s.success ? s.success_ns / s.success / 1e6 : null;
    let recent = false;
    if (before) {
      const seconds = (now - before.t) / 1000;
      const done = requests - before.requests;
      rate = seconds > 0 ? done / seconds : 0;
      const ok = s.success - before.success;
      if (ok > 0) {
        latencyMs = (s.success_ns - before.success_ns) / ok / 1e6;
        recent = true;
      }
    }
    state.previous.set(model.name, { t: now, requests, success: s.success, success_ns: s.success_ns });
    state.rates.set(model.name, { rate, latencyMs, recent });
  }
}

function formatMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms < 10 ? `${ms.toFixed(2)} ms` : `${Math.round(ms)} ms`;
}

function renderModels() {
  const body = $("models").tBodies[0];
  body.replaceChildren();
  for (const model of state.models) {
    const rates = state.rates.get(model.name) || { rate: 0, latencyMs: null, recent: false };
    const open = el("button", { type: "button", class: "link", onclick: () => go(model.name) }, model.name);
    const row = el(
      "tr",
      { class: state.current && state.current.name === model.name ? "selected" : "", dataset: { model: model.name } },
      el("td", { "data-title": "Model" }, open,
        model.description ? el("span", { class: "reason" }, model.description) : null),
      el("td", { "data-title": "Versions" }, model.versions.join(", ") || "–"),
      el("td", { "data-title": "State" }, el("span", { class: `state ${model.state}` }, model.state),
        model.reason ? el("span", { class: "reason" }, model.reason) : null),
      el("td", { "data-title": "Runtime" }, model.runtime || "–"),
      el("td", { "data-title": "Device" }, model.devices.join(", ") || "–"),
      el("td", { class: "num", "data-title": "Req/s" }, model.stats ? rates.rate.toFixed(1) : "–"),
      el("td", { class: "num", "data-title": "Latency", title: rates.recent ? "recent requests" : "all requests so far" },
        formatMs(rates.latencyMs)),
    );
    body.append(row);
  }
}

async function pollModels() {
  try {
    const data = await getJSON("/api/models");
    state.models = data.models;
    updateRates(state.models);
    renderModels();
    renderTaskModels();
    showError("models-error", null);
  } catch (error) {
    showError("models-error", `cannot list the models: ${error.message}`);
  }
}

async function loadServer() {
  try {
    const info = await getJSON("/v2");
    const ready = await apiFetch("/v2/health/ready");
    $("server").textContent = `${info.name} ${info.version} · ${ready.ok ? "ready" : "loading models…"}`;
  } catch (error) {
    $("server").textContent = `server not reachable: ${error.message}`;
  }
}

// -- one model --------------------------------------------------------------------

function go(name) {
  location.hash = `#/models/${encodeURIComponent(name)}`;
}

function route() {
  const onTasks = location.hash === "#/tasks";
  $("tasks-view").hidden = !onTasks;
  $("models-section").hidden = onTasks;
  for (const [id, active] of [["nav-models", !onTasks], ["nav-tasks", onTasks]]) {
    if (active) $(id).setAttribute("aria-current", "page");
    else $(id).removeAttribute("aria-current");
  }
  if (onTasks) {
    state.current = null;
    $("model-view").hidden = true;
    openTasks();
    return;
  }
  closeTasks();
  const match = location.hash.match(/^#\/models\/(.+)$/);
  if (match) {
    showModel(decodeURIComponent(match[1]));
  } else {
    state.current = null;
    $("model-view").hidden = true;
    renderModels();
  }
}

async function showModel(name) {
  $("model-view").hidden = false;
  $("model-title").textContent = name;
  $("model-description").textContent = "";
  showError("model-error", null);
  resetTry();
  let card;
  try {
    card = await getJSON(`/api/models/${encodeURIComponent(name)}`);
  } catch (error) {
    state.current = { name };
    renderModels();
    $("image-form").hidden = true;
    $("tensor-form").hidden = true;
    $("signature").tBodies[0].replaceChildren();
    $("labels").replaceChildren();
    $("details").replaceChildren();
    showError("model-error", error);
    return;
  }
  state.current = card;
  renderModels();
  $("model-title").textContent = `${card.name} (version ${card.version})`;
  $("model-description").textContent = card.description || "";
  renderSignature(card);
  const imageInput = card.inputs.find((t) => t.codec === "image");
  $("image-form").hidden = !imageInput;
  $("tensor-form").hidden = Boolean(imageInput);
  if (imageInput) setUpImageForm(card);
  else buildTensorForm(card);
  $("model-view").scrollIntoView({ block: "start" });
  $("model-title").setAttribute("tabindex", "-1");
  $("model-title").focus({ preventScroll: true });
}

function shapeText(shape) {
  return `[${shape.join(", ")}]`;
}

function renderSignature(card) {
  const body = $("signature").tBodies[0];
  body.replaceChildren();
  for (const [kind, tensors] of [["in", card.inputs], ["out", card.outputs]]) {
    for (const t of tensors) {
      body.append(el("tr", {},
        el("td", { class: "muted" }, kind),
        el("td", {}, t.name, t.description ? el("span", { class: "reason" }, t.description) : null),
        el("td", {}, t.datatype),
        el("td", {}, shapeText(t.shape)),
        el("td", {}, t.codec || "–")));
    }
  }
  const labels = $("labels");
  labels.replaceChildren();
  const shown = card.labels.slice(0, 200);
  if (!shown.length) labels.append(el("span", { class: "muted" }, "none"));
  for (const label of shown) labels.append(el("span", {}, label));
  if (card.labels.length > shown.length) labels.append(el("span", { class: "muted" }, `… ${card.labels.length - shown.length} more`));
  const details = $("details");
  details.replaceChildren();
  const rows = [
    ["Runtime", `${card.runtime} (${card.platform})`],
    ["Device", card.devices.join(", ") || "–"],
    ["Versions", card.versions.join(", ")],
    ["Max batch", String(card.max_batch_size)],
  ];
  for (const [k, v] of rows) details.append(el("dt", {}, k), el("dd", {}, v));
}

// -- try it: pictures -------------------------------------------------------------

function detectionsOutput(card) {
  return card.outputs.find((t) => t.codec === "detections");
}

function resetTry() {
  state.image = null;
  state.detections = [];
  state.answer = null;
  $("raw-json").textContent = "(no answer yet)";
  $("box-list").replaceChildren();
  $("class-list").replaceChildren();
  $("box-count").textContent = "";
  $("busy").textContent = "";
  const canvas = $("canvas");
  canvas.classList.add("empty");
  canvas.dataset.boxes = "[]";
  canvas.dataset.boxCount = "0";
  delete canvas.dataset.ready;
  $("stage-hint").hidden = false;
}

function setUpImageForm(card) {
  const samples = $("samples");
  samples.replaceChildren();
  for (const sample of card.samples) {
    samples.append(el("button", { type: "button", onclick: () => runSample(card, sample) }, `Sample: ${sample}`));
  }
  const output = detectionsOutput(card);
  const threshold = output && output.detections ? output.detections.score_threshold : 0.5;
  const slider = $("score");
  slider.value = String(threshold);
  state.threshold = threshold;
  $("score-value").textContent = threshold.toFixed(2);
  slider.parentElement.hidden = !output;
}

async function runSample(card, sample) {
  const response = await apiFetch(`/api/models/${encodeURIComponent(card.name)}/samples/${encodeURIComponent(sample)}`);
  if (!response.ok) {
    showError("model-error", `cannot fetch the sample: ${response.status}`);
    return;
  }
  const blob = await response.blob();
  await runImage(card, new File([blob], sample, { type: blob.type }));
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this file as a picture"));
    image.src = url;
  });
}

async function runImage(card, file) {
  showError("model-error", null);
  $("busy").textContent = `running ${card.name}…`;
  const form = new FormData();
  form.append("file", file, file.name || "upload");
  const started = performance.now();
  try {
    const [image, answer] = await Promise.all([
      loadImage(file).catch(() => null),
      getJSON(`/api/models/${encodeURIComponent(card.name)}/predict?score_threshold=0`, { method: "POST", body: form }),
    ]);
    if (state.current !== card) return; // another model was picked meanwhile
    state.image = image;
    state.answer = answer;
    state.detections = answer.detections || [];
    $("busy").textContent = `answered in ${Math.round(performance.now() - started)} ms`;
    $("raw-json").textContent = JSON.stringify(answer, null, 2);
    renderClasses(answer.classification || []);
    draw();
  } catch (error) {
    $("busy").textContent = "";
    showError("model-error", error);
  }
}

function visibleDetections() {
  return state.detections.filter((d) => d.score >= state.threshold);
}

function draw() {
  const canvas = $("canvas");
  const image = state.image;
  const shown = visibleDetections();
  if (image) {
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    canvas.classList.remove("empty");
    $("stage-hint").hidden = true;
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (image) ctx.drawImage(image, 0, 0);
  const scale = Math.max(1, Math.max(canvas.width, canvas.height) / 640);
  ctx.lineWidth = 2 * scale;
  ctx.font = `${Math.round(13 * scale)}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  const labels = (state.current && state.current.labels) || [];
  for (const d of shown) {
    const [x1, y1, x2, y2] = d.box;
    const index = Math.max(0, labels.indexOf(d.label));
    const colour = COLOURS[index % COLOURS.length];
    ctx.strokeStyle = colour;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${d.label} ${d.score.toFixed(2)}`;
    const width = ctx.measureText(text).width + 6 * scale;
    const height = 17 * scale;
    const top = y1 - height >= 0 ? y1 - height : y1;
    ctx.fillStyle = colour;
    ctx.fillRect(x1, top, width, height);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x1 + 3 * scale, top + 2 * scale);
  }
  // What is drawn, for people using a screen reader and for the browser tests.
  canvas.dataset.boxes = JSON.stringify(shown);
  canvas.dataset.boxCount = String(shown.length);
  canvas.dataset.ready = "1";
  canvas.setAttribute("aria-label", `the picture, with ${shown.length} boxes found`);
  const total = state.detections.length;
  $("box-count").textContent = state.answer && detectionsOutput(state.current) ? `${shown.length} of ${total} boxes` : "";
  const list = $("box-list");
  list.replaceChildren();
  for (const d of shown) {
    list.append(el("li", {}, `${d.label} ${d.score.toFixed(2)} at [${d.box.map((v) => Math.round(v)).join(", ")}]`));
  }
}

function renderClasses(classes) {
  const list = $("class-list");
  list.replaceChildren();
  for (const c of classes) {
    list.append(el("li", {}, `${c.label}: ${c.score.toFixed(3)}`,
      el("span", { class: "bar", style: `width:${Math.round(c.score * 120)}px` })));
  }
}

// -- try it: models without a picture input ---------------------------------------

function example(t) {
  const dims = t.shape.slice(t.shape.length && state.current.max_batch_size ? 1 : 0).map((d) => (d < 0 ? 1 : d));
  const count = dims.reduce((a, b) => a * b, 1);
  if (t.datatype === "BYTES") return count === 1 ? "" : JSON.stringify(new Array(count).fill(""));
  const zeros = new Array(Math.min(count, 4096)).fill(0);
  return JSON.stringify(count === 1 && dims.length === 0 ? 0 : zeros);
}

function buildTensorForm(card) {
  const fields = $("tensor-fields");
  fields.replaceChildren();
  for (const t of card.inputs) {
    const id = `input-${t.name}`;
    const hint = `${t.datatype} ${shapeText(t.shape)}${t.datatype === "BYTES" ? ": text" : ": a JSON number or list"}`;
    const control = t.datatype === "BYTES"
      ? el("input", { id, name: t.name, type: "text", value: example(t) })
      : el("textarea", { id, name: t.name, rows: "3", spellcheck: "false" });
    if (control.tagName === "TEXTAREA") control.value = example(t);
    fields.append(el("div", { class: "field" }, el("label", { for: id }, `${t.name} `, el("span", { class: "muted" }, hint)), control));
  }
}

async function runTensors(event) {
  event.preventDefault();
  const card = state.current;
  if (!card) return;
  const inputs = {};
  try {
    for (const t of card.inputs) {
      const raw = $(`input-${t.name}`).value;
      inputs[t.name] = t.datatype === "BYTES" ? raw : JSON.parse(raw);
    }
  } catch (error) {
    showError("model-error", `not valid JSON: ${error.message}`);
    return;
  }
  showError("model-error", null);
  $("busy").textContent = `running ${card.name}…`;
  try {
    const answer = await getJSON(`/api/models/${encodeURIComponent(card.name)}/predict`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ inputs }),
    });
    $("busy").textContent = "answered";
    $("raw-json").textContent = JSON.stringify(answer, null, 2);
    $("raw").open = true;
    renderClasses(answer.classification || []);
  } catch (error) {
    $("busy").textContent = "";
    showError("model-error", error);
  }
}

// -- tasks ------------------------------------------------------------------------

const tasks = {
  open: false,
  timer: null,
  limit: TASK_PAGE,
  rows: new Map(), // id -> {row, keys: [one per column]}
  seen: new Map(), // id -> the status last shown, to announce changes
  modelsKey: null, // the container models the form offers
  logs: null, // {id, controller, opener}
};

function shortId(id) {
  return id.length > 8 ? id.slice(0, 8) : id;
}

function timeCell(iso) {
  if (!iso) return "–";
  const when = new Date(iso);
  return el("time", { datetime: iso, title: when.toString() },
    when.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" }));
}

function progressCell(t) {
  const short = shortId(t.id);
  if (t.status === "queued") return el("span", { class: "muted" }, "waiting");
  const value = t.status === "succeeded" ? 1 : t.progress;
  if (value === null || value === undefined) {
    if (t.status !== "running") return "–";
    // Running without a /output/.progress file: an indeterminate bar.
    return el("progress", { max: "1", "aria-label": `progress of task ${short}` });
  }
  const fraction = Math.min(1, Math.max(0, value));
  const percent = `${Math.round(fraction * 100)}%`;
  return el("span", { class: "progress" },
    el("progress", { max: "1", value: String(fraction), "aria-label": `progress of task ${short}` }),
    el("span", { class: "percent" }, percent));
}

function errorCell(t) {
  if (!t.error) return null;
  // A failure is an error; why a task was cancelled or queued again is a note.
  const kind = t.status === "failed" ? "task-error" : "task-error note";
  const [first, ...rest] = t.error.split("\n");
  if (!rest.length) return el("span", { class: kind }, first);
  return el("details", { class: kind }, el("summary", {}, first), el("pre", {}, rest.join("\n")));
}

function actionsCell(t) {
  const short = shortId(t.id);
  const actions = el("span", { class: "actions" });
  if (t.status !== "queued" || t.attempts > 0) {
    actions.append(el("button", { type: "button", dataset: { action: "logs" }, "aria-label": `logs of task ${short}`,
      onclick: (event) => openLogs(t, event.currentTarget) }, "Logs"));
  }
  if (TASK_ACTIVE.has(t.status)) {
    actions.append(el("button", { type: "button", class: "danger", dataset: { action: "cancel" },
      "aria-label": `cancel task ${short}`, onclick: () => cancelTask(t) }, "Cancel"));
  }
  if (t.status === "succeeded" && !t.files_purged) {
    actions.append(el("a", { class: "button", href: t.links.output, download: `${t.id}-output.zip`,
      onclick: (event) => downloadWithKey(event, t.links.output, `${t.id}-output.zip`),
      dataset: { action: "download" }, "aria-label": `download the output of task ${short}` }, "Download output"));
  }
  return actions;
}

// Each column: a key that says when the cell must be redrawn, and how to draw it. A row is
// updated in place, a cell only when its key changes, so that focus stays where it was.
const TASK_COLUMNS = [
  ["Task", (t) => t.id, (t) => el("code", { title: t.id }, shortId(t.id))],
  ["Model", (t) => `${t.model}/${t.version}`, (t) => `${t.model} v${t.version}`],
  ["Status", (t) => `${t.status}|${t.error}|${t.exit_code}`, (t) => [
    el("span", { class: `task-status ${t.status}` }, t.status),
    t.exit_code !== null && t.exit_code !== 0 ? el("span", { class: "muted" }, ` exit ${t.exit_code}`) : null,
    errorCell(t)]],
  ["Progress", (t) => `${t.status}|${t.progress}`, progressCell],
  ["Attempts", (t) => String(t.attempts), (t) => String(t.attempts)],
  ["Created", (t) => t.created_at, (t) => timeCell(t.created_at)],
  ["Finished", (t) => String(t.finished_at), (t) => timeCell(t.finished_at)],
  ["Actions", (t) => `${t.status}|${t.attempts > 0}|${t.files_purged}`, actionsCell],
];

function fillCell(cell, content) {
  cell.replaceChildren(...[].concat(content).filter((c) => c !== null && c !== undefined));
}

function updateTaskRow(t) {
  let entry = tasks.rows.get(t.id);
  if (!entry) {
    const row = el("tr", { dataset: { task: t.id } });
    for (const [title, , ] of TASK_COLUMNS) {
      row.append(el("td", { "data-title": title, class: title === "Attempts" ? "num" : "" }));
    }
    entry = { row, keys: [] };
    tasks.rows.set(t.id, entry);
  }
  entry.row.dataset.status = t.status;
  TASK_COLUMNS.forEach(([, key, draw], i) => {
    const k = key(t);
    if (entry.keys[i] === k) return;
    const cell = entry.row.cells[i];
    const focused = cell.contains(document.activeElement) ? document.activeElement.dataset.action : null;
    fillCell(cell, draw(t));
    entry.keys[i] = k;
    if (focused) {
      // The focused button went with the old cell: keep focus on the same action, or the row's first.
      const again = cell.querySelector(`[data-action=${focused}]`) || cell.querySelector("button, a");
      if (again) again.focus();
    }
  });
  return entry.row;
}

function announce(changes) {
  if (changes.length) $("tasks-announce").textContent = changes.join("; ");
}

function renderTasks(page) {
  const body = $("tasks").tBodies[0];
  const changes = [];
  const wanted = new Set();
  page.tasks.forEach((t, i) => {
    wanted.add(t.id);
    const before = tasks.seen.get(t.id);
    if (before && before !== t.status) changes.push(`task ${shortId(t.id)} (${t.model}) ${t.status}`);
    tasks.seen.set(t.id, t.status);
    const row = updateTaskRow(t);
    // Move a row only when it is out of place: moving a node takes focus away from it.
    if (body.rows[i] !== row) body.insertBefore(row, body.rows[i] || null);
  });
  for (const [id, entry] of tasks.rows) {
    if (!wanted.has(id)) {
      entry.row.remove();
      tasks.rows.delete(id);
    }
  }
  announce(changes);
  $("tasks-empty").hidden = page.total > 0;
  $("tasks-count").textContent = page.total ? `${page.tasks.length} of ${page.total}` : "";
  $("tasks-more").hidden = !page.next;
}

async function pollTasks() {
  const query = new URLSearchParams({ limit: String(tasks.limit) });
  const status = $("task-filter").value;
  if (status) query.set("status", status);
  const page = await getJSON(`/api/tasks?${query}`);
  renderTasks(page);
  showError("tasks-error", null);
  return page.tasks.some((t) => TASK_ACTIVE.has(t.status));
}

async function taskLoop() {
  let active = false;
  try {
    active = await pollTasks();
  } catch (error) {
    showError("tasks-error", `cannot list the tasks: ${error.message}`);
  }
  if (tasks.open) tasks.timer = setTimeout(taskLoop, active ? TASK_POLL_MS.active : TASK_POLL_MS.idle);
}

function refreshTasks() {
  clearTimeout(tasks.timer);
  if (tasks.open) taskLoop();
}

function openTasks() {
  if (!tasks.open) {
    tasks.open = true;
    taskLoop();
  }
  $("tasks-title").focus({ preventScroll: true });
}

function closeTasks() {
  tasks.open = false;
  clearTimeout(tasks.timer);
  closeLogs();
}

function renderTaskModels() {
  const names = state.models.filter((m) => m.runtime === "container").map((m) => m.name);
  const key = names.join("\n");
  if (key === tasks.modelsKey) return;
  tasks.modelsKey = key;
  const select = $("task-model");
  const chosen = select.value;
  select.replaceChildren();
  if (!names.length) {
    select.append(el("option", { value: "" }, "no container models"));
  } else if (names.length > 1) {
    select.append(el("option", { value: "" }, "Pick a model…"));
  }
  for (const name of names) select.append(el("option", { value: name }, name));
  if (names.includes(chosen)) select.value = chosen;
  select.disabled = !names.length;
  $("task-submit").disabled = !names.length;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(1)} MiB`;
}

function parametersOrError(text) {
  if (!text) return null;
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new Error(`the parameters are not valid JSON: ${error.message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error("the parameters must be a JSON object, such as {\"threshold\": 0.5}");
  }
  return text;
}

async function submitTask(event) {
  event.preventDefault();
  showError("task-form-error", null);
  const model = $("task-model").value;
  const files = [...$("task-files").files];
  let parameters;
  try {
    if (!model) throw Object.assign(new Error("pick a container model"), { field: "task-model" });
    if (!files.length) throw Object.assign(new Error("choose one or more files, or a zip"), { field: "task-files" });
    parameters = parametersOrError($("task-parameters").value.trim());
  } catch (error) {
    showError("task-form-error", error);
    $(error.field || "task-parameters").focus();
    return;
  }
  const form = new FormData();
  form.append("model", model);
  if (parameters) form.append("parameters", parameters);
  for (const file of files) form.append("files", file, file.name);
  const size = files.reduce((sum, f) => sum + f.size, 0);
  const button = $("task-submit");
  button.disabled = true;
  $("task-form-status").textContent = `uploading ${files.length} file${files.length > 1 ? "s" : ""} (${formatBytes(size)})…`;
  try {
    const task = await getJSON("/api/tasks", { method: "POST", body: form });
    tasks.seen.set(task.id, task.status);
    $("task-form-status").textContent = `submitted task ${shortId(task.id)} to ${task.model}: ${task.status}`;
    $("task-files").value = "";
    refreshTasks();
  } catch (error) {
    $("task-form-status").textContent = "";
    showError("task-form-error", error);
  } finally {
    button.disabled = false;
  }
}

async function cancelTask(t) {
  try {
    const task = await getJSON(`/api/tasks/${encodeURIComponent(t.id)}`, { method: "DELETE" });
    $("tasks-announce").textContent = `task ${shortId(task.id)} ${task.status}`;
    tasks.seen.set(task.id, task.status);
    showError("tasks-error", null);
  } catch (error) {
    showError("tasks-error", `cannot cancel task ${shortId(t.id)}: ${error.message}`);
  }
  refreshTasks();
}

async function openLogs(t, opener) {
  closeLogs();
  const controller = new AbortController();
  tasks.logs = { id: t.id, controller, opener };
  const panel = $("task-logs");
  const text = $("task-logs-text");
  panel.hidden = false;
  panel.dataset.task = t.id;
  delete panel.dataset.done;
  $("task-logs-title").textContent = `Logs of task ${shortId(t.id)} (${t.model})`;
  text.textContent = "";
  $("task-logs-state").textContent = TASK_ACTIVE.has(t.status) ? "following the log while the task runs…" : "loading…";
  $("task-logs-title").focus();
  try {
    const response = await apiFetch(`/api/tasks/${encodeURIComponent(t.id)}/logs`, { signal: controller.signal });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const atEnd = text.scrollTop + text.clientHeight >= text.scrollHeight - 4;
      text.textContent += decoder.decode(value, { stream: true });
      if (atEnd) text.scrollTop = text.scrollHeight;
    }
    text.textContent += decoder.decode();
    if (!text.textContent) text.textContent = "(the log is empty)";
    $("task-logs-state").textContent = "end of the log";
    panel.dataset.done = "1";
  } catch (error) {
    if (error.name === "AbortError") return;
    $("task-logs-state").textContent = `cannot read the log: ${error.message}`;
  }
}

function closeLogs() {
  const open = tasks.logs;
  if (!open) return;
  tasks.logs = null;
  open.controller.abort();
  $("task-logs").hidden = true;
  if (open.opener && open.opener.isConnected) open.opener.focus();
}

// -- wiring -----------------------------------------------------------------------

function start() {
  $("image-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file && state.current) runImage(state.current, file);
    event.target.value = "";
  });
  $("score").addEventListener("input", (event) => {
    state.threshold = Number(event.target.value);
    $("score-value").textContent = state.threshold.toFixed(2);
    draw();
  });
  $("image-form").addEventListener("submit", (event) => event.preventDefault());
  $("tensor-form").addEventListener("submit", runTensors);
  // The upload label acts as a button for keyboard users too.
  const upload = document.querySelector("label[for=image-file]");
  upload.setAttribute("tabindex", "0");
  upload.setAttribute("role", "button");
  upload.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("image-file").click();
    }
  });
  $("task-form").addEventListener("submit", submitTask);
  $("task-logs-close").addEventListener("click", closeLogs);
  $("task-logs").addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeLogs();
  });
  $("task-filter").addEventListener("change", () => {
    tasks.limit = TASK_PAGE;
    refreshTasks();
  });
  $("tasks-more").addEventListener("click", () => {
    tasks.limit += TASK_PAGE;
    refreshTasks();
  });
  window.addEventListener("hashchange", route);
  loadServer();
  pollModels().then(route);
  setInterval(pollModels, POLL_MS);
  setInterval(loadServer, POLL_MS * 5);
}

start();
