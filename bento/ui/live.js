// "Live" mode: stream the webcam (getUserMedia) or a local video file to GET /stream over a
// WebSocket, draw each answered overlay as it arrives, show frames/s, latency and drops.
// At most two frames are in flight: the service keeps the newest waiting one and reports the
// skipped ones in `dropped`, so a slow service shows drops instead of growing latency.
(function () {
  "use strict";

  const API_BASE = location.pathname.replace(/\/ui(\/.*)?$/, "");
  const KEY_STORAGE = "roadseg.apiKey";
  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/; // what a subprotocol name may hold
  const MAX_WIDTH = 640; // frames are scaled down before sending: less to encode and to send
  const MAX_IN_FLIGHT = 2;
  const $ = (id) => document.getElementById(id);

  const live = { ws: null, stream: null, objectUrl: null, timer: null, reset() {} };

  function counters() {
    return { sent: 0, answered: 0, dropped: 0, inFlight: 0, times: [], latency: [] };
  }
  let stats = counters();

  function streamUrl() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    return `${proto}//${location.host}${API_BASE}/stream?format=overlay`;
  }

  function setLiveStatus(text) {
    $("live-status").textContent = text;
  }

  function showCounters() {
    const now = performance.now();
    stats.times = stats.times.filter((t) => now - t < 3000);
    const fps = stats.times.length / 3;
    const lat = stats.latency.slice(-30).sort((a, b) => a - b);
    const p50 = lat.length ? lat[Math.floor(lat.length / 2)] : NaN;
    $("live-fps").textContent = fps.toFixed(1);
    $("live-latency").textContent = Number.isNaN(p50) ? "–" : `${p50.toFixed(0)} ms`;
    $("live-dropped").textContent = String(stats.dropped);
    $("live-frames").textContent = String(stats.answered);
  }

  function open(key) {
    // The key never goes into the URL: a subprotocol when it is a token, else a first message.
    const protocols = ["roadseg"];
    if (key && TOKEN.test(key)) protocols.push(`roadseg.key.${key}`);
    const ws = new WebSocket(streamUrl(), protocols);
    ws.binaryType = "arraybuffer";
    let head = null;
    ws.onopen = () => {
      if (key && !TOKEN.test(key)) ws.send(JSON.stringify({ api_key: key }));
      setLiveStatus("Streaming…");
    };
    ws.onmessage = async (event) => {
      if (typeof event.data === "string") {
        const msg = JSON.parse(event.data);
        stats.dropped += (msg.dropped || []).length;
        stats.inFlight = Math.max(0, stats.inFlight - 1 - (msg.dropped || []).length);
        if (msg.error) {
          setLiveStatus(`Frame ${msg.frame}: ${msg.detail}`);
          return;
        }
        head = msg;
        return;
      }
      const bitmap = await createImageBitmap(new Blob([event.data], { type: "image/png" }));
      const canvas = $("live-canvas");
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      stats.answered += 1;
      stats.times.push(performance.now());
      if (head) stats.latency.push(head.latency_ms);
      canvas.dataset.frames = String(stats.answered);
      showCounters();
    };
    ws.onclose = (event) => {
      if (live.ws === ws) stop();
      if (event.code !== 1000 && event.code !== 1005) {
        setLiveStatus(`Stream closed (${event.code}${event.reason ? ": " + event.reason : ""})`);
      }
    };
    return ws;
  }

  function sendFrame() {
    const video = $("live-video");
    const ws = live.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !video.videoWidth) return;
    if (stats.inFlight >= MAX_IN_FLIGHT) return;
    const scale = Math.min(1, MAX_WIDTH / video.videoWidth);
    const grab = document.createElement("canvas");
    grab.width = Math.round(video.videoWidth * scale);
    grab.height = Math.round(video.videoHeight * scale);
    grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
    stats.inFlight += 1;
    grab.toBlob((blob) => {
      if (blob && live.ws === ws && ws.readyState === WebSocket.OPEN) {
        ws.send(blob);
        stats.sent += 1;
      } else {
        stats.inFlight -= 1;
      }
    }, "image/jpeg", 0.85);
  }

  async function start(source) {
    stop();
    stats = counters();
    showCounters();
    const video = $("live-video");
    try {
      if (source === "camera") {
        live.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
        video.srcObject = live.stream;
      } else {
        live.objectUrl = URL.createObjectURL(source);
        video.srcObject = null;
        video.src = live.objectUrl;
        video.loop = true;
      }
      video.muted = true;
      await video.play();
    } catch (e) {
      setLiveStatus(`Cannot open the ${source === "camera" ? "camera" : "video"}: ${e.message}`);
      stop();
      return;
    }
    live.ws = open(localStorage.getItem(KEY_STORAGE) || "");
    live.timer = setInterval(sendFrame, 33);
    $("live-stop").disabled = false;
  }

  function stop() {
    clearInterval(live.timer);
    live.timer = null;
    const ws = live.ws;
    live.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
    live.stream = null;
    const video = $("live-video");
    video.pause();
    video.srcObject = null;
    if (live.objectUrl) URL.revokeObjectURL(live.objectUrl);
    live.objectUrl = null;
    $("live-stop").disabled = true;
    setLiveStatus("Stopped.");
  }

  function bind() {
    if (!$("live-camera")) return;
    $("live-camera").addEventListener("click", () => start("camera"));
    $("live-file").addEventListener("change", (e) => {
      if (e.target.files.length) start(e.target.files[0]);
    });
    $("live-stop").addEventListener("click", stop);
  }

  bind();
})();
