// livefuse demo page: camera → WebRTC → livefuse server (face swap) → back to this page.
// Settings go to the server's JSON API and apply to the running stream at once.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
const state = { pc: null, session: null, stream: null, timer: null, prev: null, limits: null };

// -- API -------------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token) headers.set("Authorization", "Bearer " + token);
  const response = await fetch(path, { ...options, headers });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

const postJson = (path, data) => api(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data),
});

function say(text, kind = "") {
  const el = $("message");
  el.textContent = text;
  el.className = kind;
}

// -- setup -----------------------------------------------------------------------------------

async function loadConfig() {
  const config = await api("/api/config");
  const select = $("face");
  select.replaceChildren(...config.faces.map((name) => new Option(name, name)));
  if (config.default_face) select.value = config.default_face;
  state.limits = config.upload;
  $("upload-hint").textContent = config.upload.text;
  showModelChoices(config);
  if (!config.faces.length) say("No sample faces are installed: start the camera, then upload a photo of a face.");
}

// Swapper, enhancer and extra masks: offered only when such models are installed.
// They start as the server was started (livefuse serve --swapper ... --keep-mouth).
function showModelChoices(config) {
  const defaults = config.defaults;
  $("swapper").replaceChildren(...config.swappers.map((name) => new Option(name, name)));
  $("swapper").value = defaults.swapper;
  config.enhancers.forEach((name) => $("enhancer").add(new Option(name, name)));
  $("enhancer").value = defaults.enhancer || "";
  $("mouth").checked = defaults.keep_mouth;
  const masks = config.masks.filter((name) => name !== "mouth");  // "Keep my mouth" is that one
  $("masks").replaceChildren(...masks.map((name) => {
    const box = Object.assign(document.createElement("input"), { type: "checkbox", value: name });
    box.checked = defaults.masks.includes(name);
    box.addEventListener("change", () => applySetting({ masks: chosenMasks() }));
    const label = document.createElement("label");
    label.append(box, ` ${name} mask`);
    return label;
  }));
  $("models").hidden = config.swappers.length < 2 && !config.enhancers.length && !masks.length;
}

const chosenMasks = () => [...document.querySelectorAll("#masks input:checked")].map((box) => box.value);

// -- connecting ------------------------------------------------------------------------------

function iceGatheringDone(pc, timeoutMs) {
  // The server takes one offer with every candidate in it (no trickle ICE).
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs);
  });
}

async function start() {
  $("start").disabled = true;
  say("Starting the camera…");
  try {
    const [width, height] = $("size").value.split("x").map(Number);
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: width }, height: { ideal: height } }, audio: false,
    });
    $("local").srcObject = state.stream;
    await connect(state.stream.getVideoTracks()[0]);
    $("stop").disabled = false;
    $("upload").disabled = false;
  } catch (err) {
    say(`Could not start: ${err.message}`, "error");
    await stop(false);
  }
}

async function connect(track) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  state.pc = pc;
  pc.addTrack(track, state.stream);
  pc.ontrack = (event) => {
    $("remote").srcObject = event.streams[0] || new MediaStream([event.track]);
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed") say("The connection to the server failed. Press Start to try again.", "error");
  };
  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringDone(pc, 3000);
  const settings = track.getSettings();
  say("Connecting to livefuse…");
  const answer = await postJson("/api/offer", {
    sdp: pc.localDescription.sdp, type: "offer", face: $("face").value || null,
    swap: $("swap").checked, keep_mouth: $("mouth").checked,
    swapper: $("swapper").value || null, enhancer: $("enhancer").value || null, masks: chosenMasks(),
    width: settings.width, height: settings.height,
  });
  await pc.setRemoteDescription({ type: "answer", sdp: withStartBitrate(answer.sdp, settings.width * settings.height) });
  state.session = answer.session;
  showViewerUrl(answer.viewer);
  say(answer.warning || "Connected.", answer.warning ? "error" : "ok");
  state.timer = setInterval(updateStats, 1000);
}

// Chrome starts sending at 300 kbps and, with the REMB feedback aiortc gives, ramps up by
// ~8 % a second: a 720p camera would be sent at 640x360 for half a minute. A start bitrate
// for the camera's size (Chrome reads it from the answer; other browsers ignore it) gives
// full resolution from the start; congestion control still lowers it when it must.
function withStartBitrate(sdp, pixels) {
  const kbps = Math.round(Math.min(2500, Math.max(600, pixels / 400)));
  const videoTypes = [...sdp.matchAll(/^a=rtpmap:(\d+) (VP8|VP9|H264)\/90000/gm)].map((m) => m[1]);
  let out = sdp;
  for (const pt of videoTypes) {
    const fmtp = new RegExp(`^a=fmtp:${pt} (.*)$`, "m");
    out = fmtp.test(out)
      ? out.replace(fmtp, `a=fmtp:${pt} $1;x-google-start-bitrate=${kbps}`)
      : out.replace(new RegExp(`^(a=rtpmap:${pt} .*)$`, "m"), `$1\r\na=fmtp:${pt} x-google-start-bitrate=${kbps}`);
  }
  return out;
}

async function stop(tellServer = true) {
  clearInterval(state.timer);
  state.timer = null;
  const session = state.session;
  state.session = null;
  if (tellServer && session) {
    api(`/api/sessions/${session}`, { method: "DELETE", keepalive: true }).catch(() => {});
  }
  if (state.pc) state.pc.close();
  state.pc = null;
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  $("local").srcObject = null;
  $("remote").srcObject = null;
  $("stats").textContent = "not connected";
  $("start").disabled = false;
  $("stop").disabled = true;
  $("upload").disabled = true;
  $("obs").hidden = true;
}

function showViewerUrl(path) {
  const url = new URL(path, location.href);
  if (token) url.searchParams.set("token", token);
  $("viewer-url").value = url.href;
  $("obs").hidden = false;
}

// -- live settings ---------------------------------------------------------------------------

async function applySetting(change) {
  if (!state.session) return;  // sent with the offer on Start
  try {
    const now = await postJson(`/api/sessions/${state.session}/settings`, change);
    const extras = [now.keep_mouth && "keeping your mouth", now.enhancer && `enhancer ${now.enhancer}`,
      ...now.masks.filter((m) => m !== "mouth").map((m) => `${m} mask`)].filter(Boolean);
    say([`Swap ${now.swap ? "on" : "off"}`, `face ${now.face || "none"}`, `swapper ${now.swapper}`, ...extras].join(" · "), "ok");
  } catch (err) {
    say(err.message, "error");
  }
}

async function upload(file) {
  const limits = state.limits;
  if (!/^image\/(jpeg|png|webp)$/.test(file.type)) {
    say(`${file.name} is not a JPEG, PNG or WebP image.`, "error");
    return;
  }
  if (limits && file.size > limits.max_bytes) {
    say(`${file.name} is ${(file.size / 1e6).toFixed(1)} MB; the limit is ${limits.text}.`, "error");
    return;
  }
  say(`Looking for a face in ${file.name}…`);
  try {
    const now = await api(`/api/sessions/${state.session}/face`, {
      method: "POST", headers: { "Content-Type": file.type }, body: file,
    });
    say(`Now using the face from ${file.name}.`, "ok");
    $("face").value = "";
    return now;
  } catch (err) {
    say(err.message, "error");
  }
}

// -- stats overlay ---------------------------------------------------------------------------

function pick(report) {
  const out = {};
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") out.inbound = s;
    if (s.type === "outbound-rtp" && s.kind === "video") out.outbound = s;
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") out.pair = s;
  });
  return out;
}

const perFrame = (cur, prev, total, count) => {
  if (!cur || !prev) return 0;
  const frames = (cur[count] || 0) - (prev[count] || 0);
  return frames > 0 ? (1000 * ((cur[total] || 0) - (prev[total] || 0))) / frames : 0;
};

// A lower bound of the capture → display latency from what WebRTC reports: our encoder,
// the network round trip, the server (receive → swapped frame handed to its encoder), our
// jitter buffer and decoder. Capture, the server's codecs and display are not reported;
// benchmarks/bench_webrtc.py measures the whole path with a frame counter instead.
function latencyEstimate(cur, prev, serverMs) {
  const rtt = cur.pair && cur.pair.currentRoundTripTime ? 1000 * cur.pair.currentRoundTripTime : 0;
  return perFrame(cur.outbound, prev.outbound, "totalEncodeTime", "framesEncoded") + rtt + (serverMs || 0)
    + perFrame(cur.inbound, prev.inbound, "jitterBufferDelay", "jitterBufferEmittedCount")
    + perFrame(cur.inbound, prev.inbound, "totalDecodeTime", "framesDecoded");
}

async function updateStats() {
  if (!state.pc || !state.session) return;
  let server;
  try {
    server = await api(`/api/sessions/${state.session}`);
  } catch (err) {
    $("stats").textContent = `server: ${err.message}`;
    return;
  }
  const cur = pick(await state.pc.getStats());
  const prev = state.prev || {};
  state.prev = cur;
  const inbound = cur.inbound || {};
  const here = inbound.framesDropped || 0;
  const fps = inbound.framesPerSecond || 0;
  const p50 = server.latency_ms.p50;
  $("stats").textContent = [
    `fps ${fps.toFixed(1)}  (server in ${server.fps_in.toFixed(1)} / out ${server.fps.toFixed(1)})`,
    `latency ≥ ${latencyEstimate(cur, prev, p50).toFixed(0)} ms  (server ${p50 == null ? "–" : p50.toFixed(0)} ms)`,
    `dropped ${server.dropped.total + here}  (server ${server.dropped.total}, here ${here})`,
    `detector ${server.detector_rate.toFixed(2)} / frame`,
    `${server.size ? server.size.join("×") : "waiting for video"} · swap ${server.swap ? "on" : "off"}`,
  ].join("\n");
  if (server.warning) say(server.warning, "error");
}

// -- wiring ----------------------------------------------------------------------------------

$("start").addEventListener("click", start);
$("stop").addEventListener("click", () => stop(true));
$("swap").addEventListener("change", (e) => applySetting({ swap: e.target.checked }));
$("mouth").addEventListener("change", (e) => applySetting({ keep_mouth: e.target.checked }));
$("face").addEventListener("change", (e) => { if (e.target.value) applySetting({ face: e.target.value }); });
$("swapper").addEventListener("change", (e) => applySetting({ swapper: e.target.value }));
$("enhancer").addEventListener("change", (e) => applySetting({ enhancer: e.target.value || null }));
$("upload").addEventListener("change", (e) => { if (e.target.files[0]) upload(e.target.files[0]); e.target.value = ""; });
$("copy").addEventListener("click", () => navigator.clipboard.writeText($("viewer-url").value));
window.addEventListener("pagehide", () => {
  if (state.session) api(`/api/sessions/${state.session}`, { method: "DELETE", keepalive: true }).catch(() => {});
});

// For tests and scripts: the page's state and actions.
window.livefuse = { state, start, stop, applySetting, upload, ready: loadConfig().catch((err) => say(err.message, "error")) };
