// lorafit's dashboard and playground: a static page over the JSON API (no build step, no framework).
// Every server string is inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "lorafit-api-key";
const REFRESH_MS = 5000; // runs list and curves while a run is training
const COMPARE_POLL_MS = 2000;
const MAX_SEED = 2 ** 31; // below the server's bound for images (2**32 - max_num_images)

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function apiHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { "X-API-Key": key } : {};
}

async function send(path, options = {}) {
  try {
    return await fetch(path, options);
  } catch (err) {
    throw new ApiError(`cannot reach the server (${err.message}) — is serve.py still running?`, 0);
  }
}

async function failure(response) {
  if (response.status === 401) showKeyBox();
  let body = null;
  try {
    body = await response.json();
  } catch (_) { /* not JSON: fall back to the status line */ }
  // the API's one line: `message` (validation) or `detail` (everything else)
  const line = (body && typeof body.message === "string" && body.message)
    || (body && typeof body.detail === "string" && body.detail)
    || `${response.status} ${response.statusText}`;
  return new ApiError(line, response.status);
}

async function api(path, { method = "GET", body } = {}) {
  const headers = apiHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await send(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// POST /api/generate_text with stream: true: onText(the text so far) as tokens arrive; resolves to the response
async function streamText(body, onText) {
  const headers = { ...apiHeaders(), "Content-Type": "application/json" };
  const response = await send("/api/generate_text",
    { method: "POST", headers, body: JSON.stringify({ ...body, stream: true }) });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {  // server-sent events: "data: <json>" and a blank line
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ")) continue;
      const data = JSON.parse(event.slice(6));
      if (data.error) throw new ApiError(data.error, 500);
      if (data.done) return data.done;
      text += data.text;
      onText(text);
    }
  }
  throw new ApiError("the answer's stream ended early — is serve.py still running?", 0);
}

// an image behind the API key: <img src> cannot send the header, so fetch it and hand the img an object URL
async function apiObjectUrl(path) {
  const response = await send(path, { headers: apiHeaders() });
  if (!response.ok) throw await failure(response);
  return URL.createObjectURL(await response.blob());
}

// run names contain slashes (train/runs/<time>): encode each segment, keep the slashes
const runPath = (name) => `/api/runs/${name.split("/").map(encodeURIComponent).join("/")}`;

// ---------------------------------------------------------------- small helpers

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && !key.includes("-")) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child); // strings become text nodes
  }
  return node;
}

function showError(node, err) {
  node.textContent = err instanceof Error ? err.message : String(err);
  node.hidden = false;
}

function clearError(node) {
  node.textContent = "";
  node.hidden = true;
}

function errorLine(message) {
  return el("p", { className: "error", role: "alert", dataset: { testid: "card-error" } }, message);
}

const finite = (v) => typeof v === "number" && Number.isFinite(v);
const fmt = (v) => (finite(v) ? String(Number(v.toPrecision(4))) : "–");
const fmtSigned = (v) => (finite(v) ? (v > 0 ? "+" : "") + fmt(v) : "–");

function fmtTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

const randomSeed = () => Math.floor(Math.random() * MAX_SEED);

// a number field's value, or undefined when empty (the model's configured value applies)
function numberField(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

// "generating… 12 s" beside a disabled button until the returned function is called
function startBusy(button, label, text) {
  const started = performance.now();
  button.disabled = true;
  label.hidden = false;
  const tick = () => { label.textContent = `${text}… ${Math.floor((performance.now() - started) / 1000)} s`; };
  tick();
  const timer = setInterval(tick, 1000);
  return () => {
    clearInterval(timer);
    button.disabled = false;
    label.hidden = true;
    return (performance.now() - started) / 1000;
  };
}

// ---------------------------------------------------------------- tabs and API key

const PANELS = ["runs", "compare", "text", "image"];

function showTab(name) {
  if (!PANELS.includes(name)) name = "runs";
  for (const panel of PANELS) {
    $(`panel-${panel}`).hidden = panel !== name;
    $(`tab-${panel}`).setAttribute("aria-selected", String(panel === name));
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (name === "runs" && chart) resizeChart();
}

function showKeyBox() {
  $("api-key-box").hidden = false;
  $("api-key").focus();
}

function saveKey(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  $("api-key-box").hidden = true;
  loadRuns();
  loadModels();
}

// ---------------------------------------------------------------- Runs

let runs = [];
let selectedRun = null;
let runsTimer = null;
let chart = null;

async function loadRuns() {
  clearTimeout(runsTimer);
  $("runs-refresh").disabled = true;
  try {
    runs = (await api("/api/runs")).runs;
    clearError($("runs-error"));
    renderRuns();
    fillCompareRuns();
    if (selectedRun && runByName(selectedRun)) {
      paintRunDetail(runByName(selectedRun));
      await loadCurves(selectedRun);
    }
  } catch (err) {
    showError($("runs-error"), err);
  } finally {
    $("runs-refresh").disabled = false;
  }
  const training = runs.filter((r) => r.status === "running").length;
  $("runs-status").textContent = training
    ? `${training} run(s) training — refreshing every ${REFRESH_MS / 1000} s` : "";
  if (training) runsTimer = setTimeout(loadRuns, REFRESH_MS);
}

function runByName(name) {
  return runs.find((r) => r.name === name) || null;
}

function renderRuns() {
  const body = $("runs-body");
  body.replaceChildren(...runs.map((run) => {
    const score = finite(run.best_score) ? `${fmt(run.best_score)} (${run.monitor || "score"})` : "";
    const row = el("tr", { tabIndex: 0, dataset: { run: run.name, testid: "run-row" } },
      el("td", { className: "mono" }, run.name),
      el("td", {}, run.experiment || ""),
      el("td", {}, run.model || ""),
      el("td", {}, run.data || ""),
      el("td", {}, el("span", { className: `badge status-${run.status}` }, run.status)),
      el("td", { className: "clip", title: run.stop_reason || "" }, run.stop_reason || ""),
      el("td", { className: "mono" }, run.best_checkpoint ? run.best_checkpoint.split("/").pop() : ""),
      el("td", {}, score),
      el("td", {}, fmtTime(run.started)));
    row.setAttribute("aria-selected", String(run.name === selectedRun));
    row.addEventListener("click", () => selectRun(run.name));
    row.addEventListener("keydown", (e) => { if (e.key === "Enter") selectRun(run.name); });
    return row;
  }));
  $("runs-empty").hidden = runs.length > 0;
}

async function selectRun(name) {
  selectedRun = name;
  for (const row of $("runs-body").rows) row.setAttribute("aria-selected", String(row.dataset.run === name));
  paintRunDetail(runByName(name));
  await loadCurves(name);
}

function paintRunDetail(run) {
  $("run-detail").hidden = false;
  $("run-detail-title").textContent = selectedRun;
  $("run-detail-status").textContent = run ? run.status : "";
  $("run-detail-status").className = `badge status-${run ? run.status : "unknown"}`;
  $("run-try-best").disabled = !(run && run.best_checkpoint);
}

async function loadCurves(name) {
  try {
    const curves = await api(`${runPath(name)}/curves`);
    if (name !== selectedRun) return; // another run was clicked meanwhile
    clearError($("curves-error"));
    drawChart(curves);
  } catch (err) {
    showError($("curves-error"), err);
  }
}

// series names -> uPlot's aligned data: one x array (steps), one y array per series (null where not logged)
function alignedSeries(series, names) {
  const tables = names.map((n) => {
    const points = [...series[n]].sort((a, b) => a[0] - b[0]);
    return [points.map((p) => p[0]), points.map((p) => p[1])];
  });
  return window.uPlot.join(tables);
}

function drawChart(curves) {
  const container = $("curves-chart");
  const series = curves.series || {};
  const names = ["train/loss", curves.monitor, ...Object.keys(series)]
    .filter((n, i, all) => n && series[n] && series[n].length && all.indexOf(n) === i);
  const better = curves.mode === "min" ? "lower" : "higher";
  const steps = names.reduce((sum, n) => sum + series[n].length, 0);
  const source = { tensorboard: " (from its TensorBoard logs)", csv: " (from its CSV log)" }[curves.source] || "";
  $("curves-note").textContent = names.length
    ? `${names.join(" and ")} by step${source} — ${curves.monitor} (${better} is better) on the right axis`
    : "No logged steps yet: curves appear after the first logged training steps.";
  if (chart) { chart.destroy(); chart = null; }
  container.dataset.points = String(steps);
  if (!names.length) return;
  const colors = ["#2563eb", "#dc2626", "#059669", "#9333ea", "#d97706"];
  const isLoss = (n) => n.endsWith("loss");
  chart = new window.uPlot({
    width: Math.max(320, container.clientWidth),
    height: 320,
    scales: { x: { time: false } },
    axes: [
      { label: "step" },
      { scale: "loss", label: "loss" },
      { scale: "metric", side: 1, label: curves.monitor || "metric", grid: { show: false } },
    ],
    series: [
      { label: "step" },
      ...names.map((n, i) => ({
        label: n, scale: isLoss(n) ? "loss" : "metric", stroke: colors[i % colors.length], width: 2,
        spanGaps: true, points: { show: !isLoss(n) },
      })),
    ],
  }, alignedSeries(series, names), container);
}

function resizeChart() {
  const width = $("curves-chart").clientWidth;
  if (chart && width) chart.setSize({ width, height: 320 });
}

// ---------------------------------------------------------------- Compare

let comparePoll = null;
let computeStarted = null; // when this page first saw the job running: for the elapsed seconds
let progressTicker = null;

function fillCompareRuns() {
  const select = $("compare-run");
  const current = select.value || selectedRun;
  select.replaceChildren(el("option", { value: "" }, "— pick a run —"),
    ...runs.map((r) => el("option", { value: r.name },
      `${r.name} — ${[r.experiment, r.model].filter(Boolean).join(", ")}${r.has_compare ? " (report)" : ""}`)));
  if (current && runs.some((r) => r.name === current)) select.value = current;
}

function openCompare(name) {
  fillCompareRuns();
  $("compare-run").value = name;
  showTab("compare");
  loadCompare(name);
}

async function loadCompare(name) {
  clearTimeout(comparePoll);
  stopProgress();
  clearError($("compare-error"));
  for (const id of ["compare-missing", "compare-progress", "compare-report"]) $(id).hidden = true;
  if (!name) return;
  try {
    renderCompare(name, await api(`${runPath(name)}/compare`));
  } catch (err) {
    if ($("compare-run").value === name) showError($("compare-error"), err);
  }
}

async function computeReport() {
  const name = $("compare-run").value;
  if (!name) return;
  const button = $("compare-compute");
  button.disabled = true;
  clearError($("compare-error"));
  try {
    computeStarted = performance.now();
    renderCompare(name, await api(`${runPath(name)}/compare`, { method: "POST", body: { split: "val" } }));
  } catch (err) {
    showError($("compare-error"), err);
  } finally {
    button.disabled = false;
  }
}

function renderCompare(name, state) {
  if ($("compare-run").value !== name) return; // the user moved on to another run
  $("compare-missing").hidden = !(state.status === "missing" || state.status === "failed");
  $("compare-progress").hidden = state.status !== "running";
  // a failed job still hands back the newest earlier report, if there is one: keep showing it under the error
  $("compare-report").hidden = !(state.status === "done" || (state.status === "failed" && state.report));
  $("compare-compute").textContent = state.status === "failed" ? "Compute again" : "Compute report";
  if (state.status === "failed") showError($("compare-error"), state.error || "computing the report failed");
  if (state.status === "running") {
    showProgress(state.progress || {});
    comparePoll = setTimeout(() => pollCompare(name), COMPARE_POLL_MS);
    return;
  }
  stopProgress();
  if (state.report && !$("compare-report").hidden) renderReport(name, state);
  if (state.status === "done") {
    const run = runByName(name);
    if (run && !run.has_compare) { run.has_compare = true; fillCompareRuns(); }
  }
}

// "computing… 12 s — <the job's message> (2/5)": the seconds tick between polls
function showProgress(progress) {
  if (computeStarted === null) computeStarted = performance.now(); // first seen running (maybe started elsewhere)
  const counts = finite(progress.total) && progress.total > 0 ? ` (${progress.done}/${progress.total})` : "";
  const paint = () => {
    const seconds = Math.floor((performance.now() - computeStarted) / 1000);
    $("compare-progress-text").textContent =
      `computing… ${seconds} s${progress.message ? ` — ${progress.message}` : ""}${counts}`;
  };
  paint();
  clearInterval(progressTicker);
  progressTicker = setInterval(paint, 1000);
  const bar = $("compare-progress-bar");
  if (finite(progress.total) && progress.total > 0) {
    bar.max = progress.total;
    bar.value = progress.done || 0;
  } else {
    bar.removeAttribute("value"); // indeterminate
  }
}

function stopProgress() {
  clearInterval(progressTicker);
  computeStarted = null;
}

async function pollCompare(name) {
  try {
    renderCompare(name, await api(`${runPath(name)}/compare`));
  } catch (err) {
    if ($("compare-run").value !== name) return;
    stopProgress();
    showError($("compare-error"), err);
  }
}

function rowLabel(row) {
  const name = row.baseline ? `${row.name} (base model)` : row.name;
  return row.step === null || row.step === undefined ? name : `${name} (step ${row.step})`;
}

function intervalText(interval) {
  return `${fmtSigned(interval.estimate)} [${fmtSigned(interval.low)}, ${fmtSigned(interval.high)}]`;
}

function renderReport(name, state) {
  const report = state.report;
  const key = (report.monitor || "").split("/").slice(1).join("/");
  const better = report.mode === "min" ? "lower" : "higher";
  const boot = report.bootstrap || {};
  $("compare-summary").textContent = [
    `${report.split} split, ${report.samples} samples`,
    `selected by ${report.selected_by} (${better} is better)`,
    boot.n_resamples ? `${boot.n_resamples} bootstrap resamples, ${Math.round((boot.confidence || 0.95) * 100)}% `
      + "intervals" : null,
    state.report_dir ? `report in ${state.report_dir}` : null,
  ].filter(Boolean).join(" · ");

  const rec = report.recommended || {};
  $("compare-recommended").textContent = rowLabel({ name: rec.name, step: rec.step });
  $("compare-reason").textContent = rec.reason || "";
  const model = rec.name ? `${name}/${rec.name}` : null;
  const tryButton = $("compare-try");
  tryButton.hidden = !(model && models.some((m) => m.name === model));
  tryButton.onclick = () => tryInPlayground(model);

  const metrics = report.metrics || [];
  const table = $("compare-table");
  table.tHead.replaceChildren(el("tr", {}, el("th", {}, "Checkpoint"),
    ...metrics.map((m) => el("th", {}, `${report.split}/${m}`)),
    el("th", {}, `${report.split}/${key} vs best`), el("th", {}, "Verdict")));
  table.tBodies[0].replaceChildren(...(report.rows || []).map((row) => {
    const cells = metrics.map((m) => {
      const interval = (row.intervals || {})[m];
      return el("td", {}, el("span", { className: "value" }, fmt((row.metrics || {})[m])),
        interval ? el("span", { className: "interval" }, ` [${fmt(interval.low)}, ${fmt(interval.high)}]`) : null);
    });
    const diff = (row.difference || {})[key];
    const change = (row.change || {})[key];
    let versus = "—";
    if (!row.recommended && diff) versus = `${intervalText(diff)} ${diff.significant ? "significant" : "not significant"}`;
    else if (!row.recommended && finite(change)) versus = fmtSigned(change);
    const classes = [row.recommended ? "recommended" : "", row.baseline ? "baseline" : ""].join(" ").trim();
    return el("tr", { className: classes, dataset: { testid: "compare-row" } },
      el("td", { className: "mono" }, rowLabel(row)), ...cells, el("td", {}, versus),
      el("td", { className: `verdict ${row.recommended ? "best" : ""}` }, row.verdict || "no verdict"));
  }));

  $("compare-notes").replaceChildren(...(report.notes || []).map((n) => el("li", {}, n)));
  $("compare-markdown").textContent = state.markdown || "";
  const img = $("compare-plot");
  img.hidden = true;
  if (state.plot) {
    apiObjectUrl(state.plot).then((url) => {
      if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
      img.src = url;
      img.hidden = false;
    }).catch((err) => showError($("compare-error"), err));
  }
}

// ---------------------------------------------------------------- models (both playgrounds)

let models = [];

// recommended checkpoints first (newest run first), then other checkpoints and adapters, then base models
function modelGroup(m) {
  if (m.recommended) return 0;
  return m.source === "base" ? 2 : 1;
}

function sortedModels(kind) {
  return models.filter((m) => m.kind === kind).sort((a, b) =>
    modelGroup(a) - modelGroup(b)
    || (b.run || "").localeCompare(a.run || "")
    || (a.step ?? Infinity) - (b.step ?? Infinity)
    || a.name.localeCompare(b.name));
}

const GROUP_NAMES = ["Recommended checkpoints", "Other checkpoints and adapters", "Base models"];

function modelLabel(m) {
  const parts = [m.name];
  if (m.recommended) parts.push("★ best");
  if (m.source === "base" && !m.run) parts.push(`— ${m.base}`);
  return parts.join(" ");
}

function fillModelSelect(select, list, { none = null } = {}) {
  const groups = GROUP_NAMES.map((label, i) => {
    const options = list.filter((m) => modelGroup(m) === i).map((m) => el("option", { value: m.name }, modelLabel(m)));
    return options.length ? el("optgroup", { label }, ...options) : null;
  }).filter(Boolean);
  select.replaceChildren(...(none ? [el("option", { value: "" }, none)] : []), ...groups);
}

async function loadModels() {
  try {
    models = (await api("/api/models")).models;
  } catch (err) {
    showError($("text-error"), err);
    showError($("image-error"), err);
    return;
  }
  clearError($("text-error"));
  clearError($("image-error"));
  fillTextPickers();
  fillImageModels();
}

// the run's base model (<run>/base) is the natural "compare with" for a checkpoint
function defaultCompareWith(name) {
  const model = models.find((m) => m.name === name);
  if (!model || !model.run || model.source === "base") return "";
  const base = `${model.run}/base`;
  return models.some((m) => m.name === base) ? base : "";
}

function fillTextPickers() {
  const list = sortedModels("text");
  const primary = $("text-model");
  const previous = primary.value;
  fillModelSelect(primary, list);
  fillModelSelect($("text-compare-model"), list, { none: "(none)" });
  if (previous && list.some((m) => m.name === previous)) primary.value = previous;
  $("text-compare-model").value = defaultCompareWith(primary.value);
  if (primary.value !== previous) modelChanged();
  $("text-generate").disabled = !list.length;
  if (!list.length) showError($("text-error"), "no text model to serve — train one or list base models");
}

function fillImageModels() {
  const list = sortedModels("image");
  const checked = new Set([...document.querySelectorAll("#image-models input:checked")].map((i) => i.value));
  if (!checked.size && list.length) { // default: the newest best checkpoint beside its run's base model
    checked.add(list[0].name);
    const base = defaultCompareWith(list[0].name);
    if (base) checked.add(base);
  }
  $("image-models").replaceChildren(...list.map((m) => el("label", { className: "check" },
    el("input", { type: "checkbox", value: m.name, checked: checked.has(m.name), dataset: { testid: "image-model" } }),
    ` ${modelLabel(m)}`)));
  $("image-generate").disabled = !list.length;
  if (!list.length) $("image-models").replaceChildren(el("p", { className: "muted" }, "no image model to serve"));
}

async function tryInPlayground(name) {
  if (!models.some((m) => m.name === name)) await loadModels(); // a checkpoint newer than the page's listing
  const model = models.find((m) => m.name === name);
  if (!model) return showError($("runs-error"), `${name} is not among the served models — press Refresh`);
  if (model.kind === "text") {
    $("text-model").value = name;
    $("text-compare-model").value = defaultCompareWith(name);
    modelChanged();
    showTab("text");
    $("text-input").focus();
  } else {
    for (const box of document.querySelectorAll("#image-models input")) box.checked = box.value === name;
    const base = defaultCompareWith(name);
    for (const box of document.querySelectorAll("#image-models input")) if (box.value === base) box.checked = true;
    showTab("image");
    $("image-prompt").focus();
  }
}

// ---------------------------------------------------------------- Text playground

const REFERENCE_PRESET = {
  "text-num-beams": 2, "text-do-sample": "true", "text-temperature": 0.9, "text-top-p": 0.9,
  "text-repetition-penalty": 1.8, "text-no-repeat": 3, "text-max-new-tokens": 224,
};

function applyPreset(preset) {
  for (const id of Object.keys(REFERENCE_PRESET)) $(id).value = preset ? String(preset[id]) : "";
  $("text-preset-note").hidden = !preset;
}

function textSettings() {
  const doSample = $("text-do-sample").value;
  const settings = {
    num_beams: numberField("text-num-beams"),
    do_sample: doSample === "" ? undefined : doSample === "true",
    temperature: numberField("text-temperature"),
    top_p: numberField("text-top-p"),
    repetition_penalty: numberField("text-repetition-penalty"),
    no_repeat_ngram_size: numberField("text-no-repeat"),
    max_new_tokens: numberField("text-max-new-tokens"),
  };
  return Object.fromEntries(Object.entries(settings).filter(([, v]) => v !== undefined));
}

// ---- chat mode: the conversation so far, with the primary model only; each answer becomes its next turn

let conversation = [];

function textMode() {
  return document.querySelector("input[name=text-mode]:checked").value;
}

function renderConversation(turns = conversation) {
  $("chat-transcript").replaceChildren(...turns.map((m) => el("li",
    { className: `turn ${m.role}`, dataset: { testid: "chat-turn", role: m.role } },
    el("span", { className: "role" }, m.role === "user" ? "You" : "Model"), " ", m.content)));
}

function newConversation() {
  conversation = [];
  renderConversation();
}

function showMode() {
  const chat = textMode() === "messages";
  $("chat").hidden = !chat;
  $("text-compare-model").disabled = chat;
  $("text-input").placeholder = chat ? "Your message" : "Stainless Steel Insulated Water Bottle";
}

// a chat model opens in chat mode; another model is a new conversation
function modelChanged() {
  const model = models.find((m) => m.name === $("text-model").value);
  if (model && model.family === "chat") document.querySelector("input[name=text-mode][value=messages]").checked = true;
  newConversation();
  showMode();
}

async function chatTurn(name, input, seed) {
  const errorBox = $("text-error");
  const messages = [...conversation, { role: "user", content: input }];
  const stop = startBusy($("text-generate"), $("text-busy"), "generating");
  $("text-input").value = "";  // sent: the next message can be typed while this answer streams
  try {
    const answer = await generateOne({ model_name: name, messages, ...textSettings(), seed },
      (text) => renderConversation([...messages, { role: "assistant", content: text }]));
    conversation = [...messages, { role: "assistant", content: answer.text }];
    renderConversation();
    $("text-results").replaceChildren(textCard(name, 0, { status: "fulfilled", value: answer }, stop()));
  } catch (err) {
    stop();
    renderConversation();
    if (!$("text-input").value) $("text-input").value = input;  // not answered: the message comes back
    showError(errorBox, err);
  }
}

async function generateText(event) {
  event.preventDefault();
  const errorBox = $("text-error");
  clearError(errorBox);
  const input = $("text-input").value.trim();
  const primary = $("text-model").value;
  if (!primary) return showError(errorBox, "pick a model first");
  if (!input) return showError(errorBox, "enter a title, a prompt or a message");
  const mode = textMode();
  const seed = numberField("text-seed") ?? randomSeed();
  if (mode === "messages") return chatTurn(primary, input, seed);
  // one seed for both sides
  const names = [primary, $("text-compare-model").value].filter((n, i, all) => n && all.indexOf(n) === i);
  const stop = startBusy($("text-generate"), $("text-busy"), "generating");
  const live = names.map((name, i) => textCard(name, i, { status: "pending" }));
  $("text-results").replaceChildren(...live);
  const results = await Promise.allSettled(names.map((name, i) =>
    generateOne({ model_name: name, [mode]: input, ...textSettings(), seed },
      (text) => { live[i].querySelector("[data-testid=text-output]").textContent = text; })));
  const seconds = stop();
  if (results.every((r) => r.status === "rejected")) {
    $("text-results").replaceChildren();
    return showError(errorBox, results[0].reason);
  }
  $("text-results").replaceChildren(...results.map((result, i) => textCard(names[i], i, result, seconds)));
}

// streamed when the box is ticked and one beam is asked for (tokens cannot stream from a beam search)
function streaming() {
  return $("text-stream").checked && !(numberField("text-num-beams") > 1);
}

async function generateOne(body, onText) {
  return streaming() ? streamText(body, onText) : api("/api/generate_text", { method: "POST", body });
}

function textCard(name, index, result, seconds) {
  const card = el("article", { className: "card", dataset: { testid: "text-card", model: name } },
    el("h3", {}, el("span", { className: "role" }, index === 0 ? "Model" : "Compare with"), " ",
      el("span", { className: "mono" }, name)));
  if (result.status === "pending") {  // filled in as the tokens arrive
    card.dataset.streaming = "true";
    card.append(el("p", { className: "generated-text", dataset: { testid: "text-output" } }, ""));
    return card;
  }
  if (result.status === "rejected") {
    card.append(errorLine(result.reason.message));
    return card;
  }
  const answer = result.value;
  const used = Object.entries(answer.settings || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  card.append(...[
    el("p", { className: "generated-text", dataset: { testid: "text-output" } }, answer.text),
    answer.text ? null : el("p", { className: "muted" }, "(the model generated an empty text)"),
    el("p", { className: "muted" }, `seed ${answer.seed ?? "–"} · ${seconds.toFixed(1)} s for both`),
    el("details", {}, el("summary", {}, "Input the model saw"), el("pre", {}, answer.input)),
    el("details", {}, el("summary", {}, "Settings used"), el("pre", {}, used)),
  ].filter(Boolean));
  return card;
}

// ---------------------------------------------------------------- Image playground

const fileSafe = (name) => name.replace(/[^A-Za-z0-9._-]+/g, "_");

async function generateImages(event) {
  event.preventDefault();
  const errorBox = $("image-error");
  clearError(errorBox);
  const names = [...document.querySelectorAll("#image-models input:checked")].map((i) => i.value);
  const prompt = $("image-prompt").value.trim();
  if (!names.length) return showError(errorBox, "select at least one checkpoint");
  if (!prompt) return showError(errorBox, "enter a prompt");
  const seed = numberField("image-seed") ?? randomSeed(); // the same seeds for every checkpoint
  const body = {
    prompt, seed, num_images: numberField("image-num") ?? 1,
    num_inference_steps: numberField("image-steps"), guidance_scale: numberField("image-guidance"),
  };
  const stop = startBusy($("image-generate"), $("image-busy"), "generating");
  const columns = names.map((name) => el("article", { className: "card", dataset: { testid: "image-card", model: name } },
    el("h3", { className: "mono" }, name), el("p", { className: "muted" }, "generating…")));
  $("image-results").replaceChildren(...columns);
  const results = await Promise.allSettled(names.map(async (name, i) => {
    const started = performance.now();
    try {
      const answer = await api("/api/generate", { method: "POST", body: { model_name: name, ...body } });
      fillImageCard(columns[i], answer, (performance.now() - started) / 1000);
    } catch (err) {
      columns[i].lastChild.replaceWith(errorLine(err.message));
      throw err;
    }
  }));
  stop();
  if (results.every((r) => r.status === "rejected")) {
    $("image-results").replaceChildren();
    showError(errorBox, results[0].reason);
  }
}

function fillImageCard(card, answer, seconds) {
  const grid = el("div", { className: "image-grid" }, ...answer.images.map((b64, i) => {
    const seed = answer.seeds[i];
    const src = `data:image/png;base64,${b64}`;
    return el("figure", {},
      el("img", { src, alt: `${answer.model_name}, seed ${seed}`, dataset: { testid: "generated-image" } }),
      el("figcaption", {}, `seed ${seed} `,
        el("a", { href: src, download: `${fileSafe(answer.model_name)}-seed${seed}.png`,
          dataset: { testid: "image-download" } }, "download")));
  }));
  card.lastChild.replaceWith(
    el("p", { className: "muted" }, `seeds ${answer.seeds.join(", ")} · ${seconds.toFixed(1)} s`), grid);
}

// ---------------------------------------------------------------- wiring

function init() {
  for (const panel of PANELS) $(`tab-${panel}`).addEventListener("click", () => showTab(panel));
  window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
  window.addEventListener("resize", resizeChart);
  $("api-key-box").addEventListener("submit", saveKey);
  $("runs-refresh").addEventListener("click", loadRuns);
  $("run-open-compare").addEventListener("click", () => selectedRun && openCompare(selectedRun));
  $("run-try-best").addEventListener("click", () => {
    const run = runByName(selectedRun);
    if (run && run.best_checkpoint) tryInPlayground(run.best_checkpoint);
  });
  $("compare-run").addEventListener("change", (e) => loadCompare(e.target.value));
  $("compare-compute").addEventListener("click", computeReport);
  $("text-model").addEventListener("change", (e) => {
    $("text-compare-model").value = defaultCompareWith(e.target.value);
    modelChanged();
  });
  for (const radio of document.querySelectorAll("input[name=text-mode]")) radio.addEventListener("change", showMode);
  $("chat-new").addEventListener("click", newConversation);
  $("text-preset-reference").addEventListener("click", () => applyPreset(REFERENCE_PRESET));
  $("text-preset-clear").addEventListener("click", () => applyPreset(null));
  $("text-form").addEventListener("submit", generateText);
  $("image-form").addEventListener("submit", generateImages);
  showTab(location.hash.slice(1) || "runs");
  loadRuns();
  loadModels();
}

init();
