// livefuse viewer (for OBS's Browser Source): shows one session's processed stream over
// WHEP and reconnects on its own when the stream stops (OBS restarted, server restarted).
"use strict";

const token = new URLSearchParams(location.search).get("token");
const session = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "latest");
const video = document.getElementById("video");
const statusLine = document.getElementById("status");
const STALL_MS = 5000;
let pc = null;
let resource = null;
let lastFrame = 0;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function show(text) {
  statusLine.textContent = text;
  statusLine.hidden = !text;
}

function auth(headers = {}) {
  if (token) headers.Authorization = "Bearer " + token;
  return headers;
}

function gathered(peer, timeoutMs) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") resolve();
    });
    setTimeout(resolve, timeoutMs);
  });
}

async function connect() {
  pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (event) => { video.srcObject = new MediaStream([event.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc, 3000);
  const response = await fetch(`/whep/${encodeURIComponent(session)}`, {
    method: "POST", headers: auth({ "Content-Type": "application/sdp" }), body: pc.localDescription.sdp,
  });
  if (response.status !== 201) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error || `the server answered ${response.status}`);
  }
  resource = response.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
}

function disconnect() {
  if (resource) fetch(resource, { method: "DELETE", headers: auth(), keepalive: true }).catch(() => {});
  resource = null;
  if (pc) pc.close();
  pc = null;
  video.srcObject = null;
}

function onFrame() {
  lastFrame = performance.now();
  show("");
  video.requestVideoFrameCallback(onFrame);
}

async function run() {
  video.requestVideoFrameCallback(onFrame);
  for (;;) {
    if (!pc) {
      try {
        await connect();
        lastFrame = performance.now();
        show("waiting for video…");
      } catch (err) {
        show(`${err.message} — retrying`);
        disconnect();
        await sleep(2000);
        continue;
      }
    }
    await sleep(1000);
    if (performance.now() - lastFrame > STALL_MS || ["failed", "closed"].includes(pc.connectionState)) {
      disconnect();
    }
  }
}

window.addEventListener("pagehide", disconnect);
run();
