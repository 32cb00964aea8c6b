// The console's page. Every value shown comes from the network (Host headers, SNI, command lines), so it
// is written with textContent only, never as HTML.
"use strict";

const state = {
  info: null,
  view: "devices",
  device: "",
  seen: { recent: new Set(), timeline: new Set(), blocked: new Set() },
  devicesTimer: null,
  // Each refresh's number, and the feed's events that arrived during the current one.
  generation: 0,
  pending: null,
};

const RECENT = 50;
const LIST = 500;

function $(id) { return document.getElementById(id); }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const error = new Error((body && body.error) || response.statusText);
    error.body = body;
    throw error;
  }
  return body;
}

function cellText(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// A query result ({columns, rows}) as a table; `decorate(tr, td, column, value)` may add links and classes.
function drawResult(table, result, decorate) {
  table.replaceChildren();
  const head = el("tr");
  result.columns.forEach((c) => head.appendChild(el("th", c)));
  table.appendChild(el("thead")).appendChild(head);
  const body = table.appendChild(el("tbody"));
  result.rows.forEach((row) => {
    const tr = el("tr");
    row.forEach((value, i) => {
      const td = el("td", cellText(value));
      if (typeof value === "string" && value.length > 60) td.classList.add("wrap");
      if (decorate) decorate(tr, td, result.columns[i], value);
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
}

const EVENT_COLUMNS = [
  ["Time", "time"], ["Device", "device"], ["ActionType", "action"], ["Process", "process"],
  ["Account", "account"], ["RemoteIP:Port", "remote"], ["RemoteUrl (real target)", "target"],
  ["Protocol", "protocol"], ["Notes", "notes"],
];

function actionClass(action) {
  if (action.endsWith("Blocked")) return "blocked";
  if (action.endsWith("Audited")) return "audited";
  return "";
}

function eventRow(event, fresh) {
  const tr = el("tr");
  tr.dataset.key = event.key;
  const kind = actionClass(event.action);
  if (kind) tr.classList.add(kind);
  if (fresh) tr.classList.add("new");
  EVENT_COLUMNS.forEach(([, field]) => {
    const td = el("td", event[field], field);
    if (field === "device") {
      td.replaceChildren(deviceLink(event.device));
    }
    tr.appendChild(td);
  });
  return tr;
}

function deviceLink(name) {
  const a = el("a", name);
  a.href = "#timeline/" + encodeURIComponent(name);
  return a;
}

function drawEvents(table, events, seen) {
  table.replaceChildren();
  const head = el("tr");
  EVENT_COLUMNS.forEach(([title]) => head.appendChild(el("th", title)));
  table.appendChild(el("thead")).appendChild(head);
  const body = table.appendChild(el("tbody"));
  seen.clear();
  events.forEach((e) => { seen.add(e.key); body.appendChild(eventRow(e, false)); });
}

function prependEvent(table, event, seen, limit) {
  if (seen.has(event.key)) return;
  seen.add(event.key);
  let body = table.querySelector("tbody");
  if (!body) { drawEvents(table, [], seen); seen.add(event.key); body = table.querySelector("tbody"); }
  body.insertBefore(eventRow(event, true), body.firstChild);
  while (body.children.length > limit) {
    seen.delete(body.lastChild.dataset.key);
    body.removeChild(body.lastChild);
  }
}

function drawDevices(result) {
  drawResult($("devices-table"), result, (tr, td, column, value) => {
    if (column === "DeviceName") td.replaceChildren(deviceLink(value));
    if (column === "Health") td.classList.add("health-" + String(value).replace(/\s+/g, "-"));
  });
  const select = $("timeline-device");
  const names = [...new Set(result.rows.map((r) => r[result.columns.indexOf("DeviceName")]))];
  const current = state.device || select.value;
  select.replaceChildren();
  names.forEach((n) => { const o = el("option", n); o.value = n; select.appendChild(o); });
  if (current && !names.includes(current)) { const o = el("option", current); o.value = current; select.appendChild(o); }
  if (current) select.value = current;
  state.device = select.value;
}

async function loadDevices() {
  drawDevices(await api("/api/devices"));
}

function timelinePath(device) {
  return "/api/events?limit=" + LIST + "&device=" + encodeURIComponent(device);
}

async function loadTimeline() {
  const device = state.device;
  const events = device ? await api(timelinePath(device)) : [];
  if (device === state.device) drawEvents($("timeline-table"), events, state.seen.timeline);
}

function report(error) {
  $("live").textContent = "error: " + error.message;
  $("live").classList.add("off");
}

// Reloads every list. Events the feed pushes meanwhile wait and are added after the draw (the lists'
// answers may predate them); an answer older than a later refresh is dropped.
async function refreshAll() {
  const generation = ++state.generation;
  state.pending = state.pending || [];
  try {
    const device = state.device;
    const [devices, recent, timeline, blocked] = await Promise.all([
      api("/api/devices"),
      api("/api/events?limit=" + RECENT),
      device ? api(timelinePath(device)) : Promise.resolve([]),
      api("/api/events?action=blocked&limit=" + LIST),
    ]);
    if (generation !== state.generation) return;
    drawDevices(devices);
    drawEvents($("recent-table"), recent, state.seen.recent);
    if (device === state.device) drawEvents($("timeline-table"), timeline, state.seen.timeline);
    drawEvents($("blocked-table"), blocked, state.seen.blocked);
  } catch (error) {
    report(error);
  } finally {
    if (generation === state.generation) {
      const waiting = state.pending;
      state.pending = null;
      waiting.forEach(showEvent);
    }
  }
}

function onEvent(event) {
  if (state.pending) { state.pending.push(event); return; }
  showEvent(event);
}

function showEvent(event) {
  prependEvent($("recent-table"), event, state.seen.recent, RECENT);
  if (event.device === state.device) prependEvent($("timeline-table"), event, state.seen.timeline, LIST);
  if (event.action === (state.info && state.info.blocked)) {
    prependEvent($("blocked-table"), event, state.seen.blocked, LIST);
  }
  // Counts and health change with new events: redraw the device list soon.
  if (!state.devicesTimer) {
    state.devicesTimer = setTimeout(() => { state.devicesTimer = null; loadDevices().catch(report); }, 2000);
  }
}

function connectFeed() {
  const feed = new EventSource("/api/feed");
  feed.addEventListener("ready", () => {
    $("live").textContent = "live";
    $("live").classList.remove("off");
    refreshAll();
  });
  feed.addEventListener("event", (message) => {
    try { onEvent(JSON.parse(message.data)); } catch (error) { report(error); }
  });
  feed.addEventListener("failure", (message) => {
    $("live").textContent = "store unreachable: " + message.data;
    $("live").classList.add("off");
  });
  feed.onerror = () => { $("live").textContent = "reconnecting"; $("live").classList.add("off"); };
}

// Advanced hunting.
function downloadLinks() {
  const q = encodeURIComponent($("hunt-query").value);
  $("hunt-csv").href = "/api/hunt?format=csv&q=" + q;
  $("hunt-json").href = "/api/hunt?format=json&q=" + q;
}

async function runQuery() {
  const box = $("hunt-query");
  const error = $("hunt-error");
  $("hunt-status").textContent = "running";
  error.hidden = true;
  box.classList.remove("has-error");
  const started = performance.now();
  try {
    const result = await api("/api/hunt", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: box.value }),
    });
    drawResult($("hunt-table"), result);
    const count = result.truncated ? `more than ${result.rows.length} rows (the first ${result.rows.length} shown; download them all)` : `${result.rows.length} rows`;
    $("hunt-status").textContent = `${count} in ${Math.round(performance.now() - started)} ms`;
  } catch (failure) {
    $("hunt-table").replaceChildren();
    $("hunt-status").textContent = "";
    const body = failure.body || {};
    error.hidden = false;
    if (body.line) {
      error.textContent = `line ${body.line}, column ${body.column}: ${body.error}\n${body.excerpt}`;
      box.classList.add("has-error");
      box.focus();
      box.setSelectionRange(body.start, Math.max(body.end, body.start + 1));
    } else {
      error.textContent = failure.message;
    }
  }
}

// The fleet policy.
async function loadPolicy() {
  if (!state.info || !state.info.policy) return;
  try {
    const policy = await api("/api/policy");
    $("policy-revision").textContent = "revision " + policy.revision;
    const list = $("policy-entries");
    list.replaceChildren();
    policy.entries.forEach((line) => list.appendChild(el("li", line)));
    $("policy-edit").hidden = !policy.editable;
  } catch (error) { $("policy-revision").textContent = error.message; }
}

async function changePolicy(change) {
  try {
    const answer = await api("/api/policy", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(change),
    });
    $("policy-status").textContent = "policy revision " + answer.revision;
    loadPolicy();
  } catch (error) { $("policy-status").textContent = error.message; }
}

function indicatorChange(remove) {
  return {
    op: "indicator", list: $("policy-list").value, value: $("policy-value").value,
    remove, group: $("policy-group").value || null,
  };
}

// Views: #devices, #timeline/<device>, #hunt, #blocked, #policy.
function route() {
  const [view, arg] = (location.hash.slice(1) || "devices").split("/");
  state.view = ["devices", "timeline", "hunt", "blocked", "policy"].includes(view) ? view : "devices";
  if (state.view === "timeline" && arg !== undefined) {
    state.device = decodeURIComponent(arg);
    const select = $("timeline-device");
    if (![...select.options].some((o) => o.value === state.device)) {
      const o = el("option", state.device); o.value = state.device; select.appendChild(o);
    }
    select.value = state.device;
    loadTimeline().catch(report);
  }
  if (state.view === "policy") loadPolicy();
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "view-" + state.view; });
  document.querySelectorAll("header nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === state.view));
}

async function start() {
  try {
    state.info = await api("/api/info");
    $("source").textContent = state.info.source;
    $("nav-policy").hidden = !state.info.policy;
  } catch (error) { report(error); }
  $("timeline-device").addEventListener("change", (e) => { location.hash = "#timeline/" + encodeURIComponent(e.target.value); });
  $("hunt-run").addEventListener("click", runQuery);
  $("hunt-query").addEventListener("input", downloadLinks);
  $("hunt-query").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runQuery(); });
  $("policy-add").addEventListener("click", () => changePolicy(indicatorChange(false)));
  $("policy-remove").addEventListener("click", () => changePolicy(indicatorChange(true)));
  $("policy-set-mode").addEventListener("click", () => changePolicy({
    op: "mode", mode: $("policy-mode").value, group: $("policy-mode-group").value || null,
  }));
  downloadLinks();
  window.addEventListener("hashchange", route);
  route();
  // The lists load now, and again each time the feed is (re)connected.
  refreshAll();
  connectFeed();
}

start();
