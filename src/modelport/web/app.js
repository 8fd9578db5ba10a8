// modelport's built-in page: the model list, a model's view, and try-it.
// Plain JS, no build step, no third-party code; it speaks only to this server:
// GET /v2 (server), GET /api/models (list, polled), GET /api/models/{m} (one model),
// POST /api/models/{m}/predict (try-it; asked with score_threshold=0 so the slider
// filters the boxes here, without asking again).
"use strict";

const POLL_MS = 2000;
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

async function getJSON(url, options) {
  const response = await fetch(url, options);
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
    showError("models-error", null);
  } catch (error) {
    showError("models-error", `cannot list the models: ${error.message}`);
  }
}

async function loadServer() {
  try {
    const info = await getJSON("/v2");
    const ready = await fetch("/v2/health/ready");
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
  const response = await fetch(`/api/models/${encodeURIComponent(card.name)}/samples/${encodeURIComponent(sample)}`);
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
  window.addEventListener("hashchange", route);
  loadServer();
  pollModels().then(route);
  setInterval(pollModels, POLL_MS);
  setInterval(loadServer, POLL_MS * 5);
}

start();
