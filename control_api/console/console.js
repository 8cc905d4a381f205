// voxswitch web console: plain JavaScript, no build step. Every request carries the
// API key the user typed (kept in sessionStorage: gone with the tab), in the
// Authorization header; the live calls come as server-sent events read with fetch.
"use strict";

const KEY = "voxswitch.apiKey";
const $ = (id) => document.getElementById(id);
let stream = null; // the live-calls stream's AbortController
let poll = null; // the call page's or the phone's refresh timer
const ended = new Map(); // call id -> a call seen live in this session that has ended
let live = new Map(); // call id -> its last view

// ---- the API -------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    if (response.status === 401) logout("Your key was not accepted.");
    throw new ApiError(response.status, data && data.detail ? data.detail : response.statusText);
  }
  return data;
}

async function openStream(path, onEvent) {
  const controller = new AbortController();
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` },
    signal: controller.signal,
  });
  if (!response.ok) throw new ApiError(response.status, response.statusText);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: "))
            .map((l) => l.slice(6)).join("\n");
          if (data) onEvent(JSON.parse(data));
        }
      }
    } catch (err) {
      if (err.name !== "AbortError") console.warn("stream ended", err);
    }
  })();
  return controller;
}

// ---- small helpers --------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function row(cells, attrs = {}) {
  return el("tr", attrs, ...cells.map((c) => (c instanceof Node ? el("td", {}, c)
    : el("td", { text: c === null || c === undefined ? "–" : String(c) }))));
}

function fill(tbody, rows, columns, empty) {
  tbody.replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { class: "empty", colspan: String(columns), text: empty }))]));
}

const seconds = (s) => (s === null || s === undefined ? "–" : `${Number(s).toFixed(2)} s`);
const clock = (s) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
const callLink = (id) => el("a", { href: `#/calls/${encodeURIComponent(id)}`, text: id });

function facts(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", { text: k }),
    el("dd", { text: v === null || v === undefined || v === "" ? "–" : String(v) })]));
}

function transcript(ol, messages) {
  const who = { assistant: "Agent", user: "Caller", system: "Context" };
  ol.replaceChildren(...messages.map((m) => el("li", { class: m.role },
    el("span", { class: "who", text: `${who[m.role] || m.role}:` }), m.content)));
}

// ---- pages ----------------------------------------------------------------------------

function show(page) {
  document.querySelectorAll(".page").forEach((p) => { p.hidden = p.id !== page; });
  document.querySelectorAll("#nav a").forEach((a) => {
    a.classList.toggle("active", page === `page-${a.dataset.page}` ||
      (page === "page-call" && a.dataset.page === "calls"));
  });
}

function stopRefreshing() {
  if (poll) clearInterval(poll);
  poll = null;
}

async function route() {
  stopRefreshing();
  if (!sessionStorage.getItem(KEY)) {
    $("nav").hidden = true;
    show("login");
    return;
  }
  $("nav").hidden = false;
  const [, page, id] = (location.hash || "#/calls").split("/");
  try {
    if (page === "calls" && id) await callPage(decodeURIComponent(id));
    else if (page === "phone") await phonePage();
    else if (page === "trunks") await trunksPage();
    else if (page === "campaigns") await campaignsPage();
    else if (page === "health") await healthPage();
    else await callsPage();
  } catch (err) {
    console.warn(err);
  }
}

async function callsPage() {
  show("page-calls");
  renderCalls();
  if (!stream) stream = await openStream("/v1/stream/calls", onCalls);
}

function onCalls(event) {
  const now = new Map(event.calls.map((c) => [c.call_id, c]));
  for (const [id, view] of live) if (!now.has(id)) ended.set(id, { ...view, seen: new Date() });
  live = now;
  const node = event.node;
  $("node").textContent = `${node.node_id} · ${node.status} · ${node.active_calls} calls`;
  if (!$("page-calls").hidden) renderCalls();
}

function renderCalls() {
  const calls = [...live.values()];
  $("calls-count").textContent = String(calls.length);
  fill($("calls-table").tBodies[0], calls.map((c) => row([
    callLink(c.call_id), c.direction, c.from, c.to, c.state, clock(c.duration_s),
    c.trunk, c.agent_name, c.last_line ? `${c.last_line.role}: ${c.last_line.content}` : null,
    seconds(c.last_latency_s),
  ], { "data-call-id": c.call_id })), 10, "No call right now.");
  const gone = [...ended.values()].reverse();
  fill($("ended-table").tBodies[0], gone.map((c) => row([
    callLink(c.call_id), c.from, c.to, c.seen.toLocaleTimeString(),
  ], { "data-call-id": c.call_id })), 4, "None yet.");
}

async function callPage(id) {
  show("page-call");
  $("call-id").textContent = id;
  const refresh = async () => {
    let call;
    try {
      call = await api("GET", `/v1/calls/${encodeURIComponent(id)}`);
    } catch (err) {
      $("call-state").textContent = err.status === 404 ? "unknown" : "error";
      stopRefreshing();
      return;
    }
    $("call-state").textContent = call.state;
    facts($("call-facts"), [
      ["Direction", call.direction], ["From", call.from], ["To", call.to],
      ["Agent", call.agent_name], ["Trunk", call.trunk], ["Codec", call.codec],
      ["Duration", clock(call.duration_s || 0)], ["Disposition", call.disposition],
      ["Reason", call.reason], ["Node", call.node_id],
    ]);
    timeline($("call-timeline"), call.turns || []);
    transcript($("call-transcript"), call.transcript || []);
    if (call.state === "ended") stopRefreshing();
  };
  await refresh();
  if (!poll) poll = setInterval(refresh, 1000);
}

function timeline(box, turns) {
  const timed = turns.filter((t) => t.latency_s !== null && t.latency_s !== undefined);
  if (!timed.length) {
    box.replaceChildren(el("p", { class: "muted", text: "No answered turn yet." }));
    return;
  }
  const parts = [["vad", "#c9d3e6"], ["asr", "#5b8def"], ["kb", "#9b6ddf"],
    ["llm", "#f0a04b"], ["tts", "#38a169"], ["other", "#a0aec0"]];
  const scale = 520 / Math.max(1, ...timed.map((t) => t.latency_s));
  const height = 26 * timed.length + 40;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", "760");
  svg.setAttribute("height", String(height));
  const add = (tag, attrs, text) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  timed.forEach((t, i) => {
    const processing = t.processing_s ?? t.latency_s;
    const known = (t.asr_s || 0) + (t.kb_s || 0) + (t.llm_first_token_s || 0)
      + (t.tts_first_audio_s || 0);
    const widths = { vad: t.latency_s - processing, asr: t.asr_s || 0, kb: t.kb_s || 0,
      llm: t.llm_first_token_s || 0, tts: t.tts_first_audio_s || 0,
      other: Math.max(0, processing - known) };
    const y = 10 + 26 * i;
    add("text", { x: 4, y: y + 14, "font-size": 12 }, `turn ${t.index}`);
    let x = 60;
    for (const [name, color] of parts) {
      const w = Math.max(0, widths[name] * scale);
      if (w > 0) {
        add("rect", { x, y, width: w, height: 18, fill: color }).append(
          Object.assign(document.createElementNS("http://www.w3.org/2000/svg", "title"),
            { textContent: `${name} ${widths[name].toFixed(3)} s` }));
      }
      x += w;
    }
    add("text", { x: x + 6, y: y + 14, "font-size": 12 }, `${t.latency_s.toFixed(2)} s`);
  });
  parts.forEach(([name, color], i) => {
    add("rect", { x: 60 + 90 * i, y: height - 18, width: 12, height: 12, fill: color });
    add("text", { x: 76 + 90 * i, y: height - 8, "font-size": 11 }, name);
  });
  box.replaceChildren(svg);
}

async function trunksPage() {
  show("page-trunks");
  $("trunks-error").textContent = "";
  try {
    const [trunks, outbound, inbound] = await Promise.all([api("GET", "/v1/trunks"),
      api("GET", "/v1/routes/outbound"), api("GET", "/v1/routes/inbound")]);
    fill($("trunks-table").tBodies[0], trunks.trunks.map((t) => {
      const status = t.status || {};
      const up = el("span", { class: status.up ? "up" : "down", text: status.up ? "up" : "down" });
      const registered = status.registration ? status.registration.state : "–";
      return row([t.name, `${t.host}:${t.port}`, t.transport, up, status.calls ?? 0, registered]);
    }), 6, "No trunk.");
    fill($("outbound-routes").tBodies[0], outbound.routes.map((r) => row([r.name,
      r.prefix || "(all)", r.trunks.join(", "), r.priority])), 4, "No route.");
    fill($("inbound-routes").tBodies[0], inbound.routes.map((r) => row([r.name, r.pattern,
      r.agent])), 3, "No route.");
  } catch (err) {
    $("trunks-error").textContent = err.status === 403
      ? "Trunks and routes need a key with the admin scope." : err.message;
  }
}

async function campaignsPage() {
  show("page-campaigns");
  const refresh = async () => {
    const data = await api("GET", "/v1/campaigns");
    fill($("campaigns-table").tBodies[0], data.campaigns.map((c) => row([c.campaign_id,
      c.name, c.state, `${c.done} / ${c.numbers}`, c.active, c.cps,
      Object.entries(c.dispositions).map(([k, v]) => `${k} ${v}`).join(", ")])),
    7, "No campaign.");
  };
  await refresh();
  poll = setInterval(refresh, 2000);
}

async function healthPage() {
  show("page-health");
  const refresh = async () => {
    const response = await fetch("/health");
    const h = await response.json();
    facts($("health-facts"), [
      ["Node", h.node_id], ["Status", h.status], ["Up for", clock(h.uptime_s)],
      ["Calls", `${h.active_calls} of ${h.max_calls}`], ["Offered", h.calls_offered],
      ["Placed", h.calls_placed], ["Adopted (takeover)", h.adopted],
      ["Media legs", h.media && h.media.legs], ["Tick lateness p99",
        h.media ? `${h.media.tick_lateness_p99_ms} ms` : null],
      ["Checkpoints", h.checkpoints && h.checkpoints.up ? "saved" : "not saved"],
    ]);
    $("health-raw").textContent = JSON.stringify(h, null, 2);
  };
  await refresh();
  poll = setInterval(refresh, 2000);
}

// ---- the test phone --------------------------------------------------------------------

const phone = { pc: null, media: null, callId: null };

async function phonePage() {
  show("page-phone");
  const select = $("phone-agent");
  if (!select.options.length) {
    const data = await api("GET", "/v1/agents");
    select.replaceChildren(...data.agents.map((a) => el("option", { value: a, text: a })));
  }
  if (phone.callId) watchPhone();
}

function gathered(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs); // what was gathered by then is enough on a LAN
  });
}

async function call(agent) {
  $("phone-status").textContent = "calling";
  $("phone-call").disabled = true;
  try {
    phone.media = await navigator.mediaDevices.getUserMedia({ audio: true });
    const pc = new RTCPeerConnection({ iceServers: [] });
    phone.pc = pc;
    phone.media.getTracks().forEach((t) => pc.addTrack(t, phone.media));
    pc.ontrack = (ev) => { $("phone-audio").srcObject = ev.streams[0] || new MediaStream([ev.track]); };
    pc.onconnectionstatechange = () => {
      if (["failed", "closed"].includes(pc.connectionState)) finishCall(pc.connectionState);
      else $("phone-status").textContent = pc.connectionState;
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, 3000);
    const answer = await api("POST", "/v1/webrtc/calls",
      { sdp: pc.localDescription.sdp, type: "offer", agent });
    phone.callId = answer.call_id;
    $("phone-call-id").textContent = answer.call_id;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    $("phone-hangup").disabled = false;
    watchPhone();
  } catch (err) {
    $("phone-status").textContent = `failed: ${err.message}`;
    closeMedia();
    $("phone-call").disabled = false;
  }
}

function watchPhone() {
  stopRefreshing();
  const id = phone.callId;
  poll = setInterval(async () => {
    try {
      const view = await api("GET", `/v1/calls/${encodeURIComponent(id)}`);
      transcript($("phone-transcript"), view.transcript || []);
      if (view.state === "ended") finishCall(view.disposition || "ended");
    } catch (err) {
      console.warn(err);
    }
  }, 700);
}

async function hangUp() {
  $("phone-hangup").disabled = true;
  if (phone.callId) {
    try {
      await api("POST", `/v1/webrtc/calls/${encodeURIComponent(phone.callId)}/hangup`);
    } catch (err) {
      console.warn(err); // it may have ended already
    }
  }
  closeMedia();
}

function closeMedia() {
  if (phone.pc) phone.pc.close();
  if (phone.media) phone.media.getTracks().forEach((t) => t.stop());
  phone.pc = null;
  phone.media = null;
}

function finishCall(how) {
  $("phone-status").textContent = `ended (${how})`;
  $("phone-call").disabled = false;
  $("phone-hangup").disabled = true;
  closeMedia();
  if (phone.callId) setTimeout(stopRefreshing, 1500); // one more transcript refresh
}

// ---- log in and out --------------------------------------------------------------------

function logout(message = "") {
  sessionStorage.removeItem(KEY);
  if (stream) stream.abort();
  stream = null;
  $("login-error").textContent = message;
  location.hash = "#/login";
  route();
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value.trim());
  try {
    await api("GET", "/v1/calls");
    $("login-error").textContent = "";
    $("api-key").value = "";
    location.hash = "#/calls";
    route();
  } catch (err) {
    sessionStorage.removeItem(KEY);
    $("login-error").textContent = err.status === 401 ? "That key was not accepted."
      : err.status === 403 ? "That key cannot read calls (scope calls:read)." : err.message;
  }
});
$("logout").addEventListener("click", () => logout());
$("phone-form").addEventListener("submit", (ev) => { ev.preventDefault(); call($("phone-agent").value); });
$("phone-hangup").addEventListener("click", hangUp);
window.addEventListener("hashchange", route);
route();
