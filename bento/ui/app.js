/* roadseg web UI: talks to the Bento service it is served by (same origin, no build step).
 *
 * Images go one by one to POST /segment/json (mask, class shares, confidence, model version);
 * a ZIP goes to POST /predict-image/returns-zip/ and a video to POST /predict-video/returns-zip/,
 * whose answers are unpacked here. The colour mask and the overlay are drawn on canvases from the
 * class-id mask and the palette of GET /classes, so the opacity slider is live and no second
 * request is needed. Every rejection shows the service's own error text.
 */
(function () {
  "use strict";

  const { readZip, writeZip } = window.RoadsegZip;
  const { renderShareChart } = window.RoadsegChart;

  // The UI lives at <prefix>/ui/; the API at <prefix>/ (works behind an ingress path prefix).
  const API_BASE = location.pathname.replace(/\/ui(\/.*)?$/, "");
  const KEY_STORAGE = "roadseg.apiKey";
  const IMAGE_CONCURRENCY = 3;
  const MAX_VIDEO_FRAMES_SHOWN = 12;
  const VIDEO_EXT = /\.(mp4|avi|mov|m4v|mkv|webm)$/i;
  const IMAGE_EXT = /\.(png|jpe?g|bmp|gif|webp|tiff?)$/i;

  const state = {
    apiKey: "",
    classes: [], // [{id, name, rgb: [r, g, b], css}]
    opacity: 0.5,
    items: [], // segmented images/frames
    uploads: [], // server ZIPs kept for download: [{name, blob}]
    busy: 0,
    nextId: 1,
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- HTTP

  function apiUrl(path) {
    return API_BASE + path;
  }

  function authHeaders() {
    return state.apiKey ? { "X-API-Key": state.apiKey } : {};
  }

  /** The service's error text from a 4xx/5xx body: {"error": code, "detail": text}, FastAPI's
   * {"detail": [{msg}...]}, or plain text. */
  function errorMessage(status, text) {
    let message = (text || "").trim();
    try {
      const body = JSON.parse(text);
      const found = body.detail ?? body.message ?? body.error ?? body;
      if (typeof found === "string") message = found;
      else if (Array.isArray(found))
        message = found.map((e) => (typeof e === "string" ? e : e.msg || JSON.stringify(e))).join("; ");
      else message = JSON.stringify(found);
    } catch (_) {
      /* not JSON: keep the text */
    }
    if (!message) message = `HTTP ${status}`;
    if (status === 401) {
      showBanner(`The service needs a valid API key (${message}). Enter it under “API key”.`);
    }
    return message;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function fetchJson(path, options = {}) {
    const response = await fetch(apiUrl(path), {
      ...options,
      headers: { ...authHeaders(), ...(options.headers || {}) },
    });
    const text = await response.text();
    if (!response.ok) throw new ApiError(response.status, errorMessage(response.status, text));
    return { body: JSON.parse(text), headers: response.headers };
  }

  /** POST a form with XHR (fetch has no upload progress); resolves with the response Blob. */
  function postForm(path, form, { onUpload, onUploaded, onDownload } = {}) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", apiUrl(path));
      xhr.responseType = "blob";
      for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
      if (onUpload) xhr.upload.onprogress = (e) => e.lengthComputable && onUpload(e.loaded / e.total);
      if (onUploaded) xhr.upload.onload = onUploaded;
      if (onDownload) xhr.onprogress = (e) => onDownload(e.lengthComputable ? e.loaded / e.total : null);
      xhr.onerror = () => reject(new ApiError(0, "the service could not be reached"));
      xhr.onload = async () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          resolve({ blob: xhr.response, version: xhr.getResponseHeader("X-Model-Version") });
        } else {
          const text = await xhr.response.text();
          reject(new ApiError(xhr.status, errorMessage(xhr.status, text)));
        }
      };
      xhr.send(form);
    });
  }

  // ---------------------------------------------------------------- model info and classes

  function toRgb(color) {
    if (Array.isArray(color)) return color.slice(0, 3).map(Number);
    const hex = String(color).replace("#", "");
    return [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
  }

  async function loadClasses() {
    const { body } = await fetchJson("/classes");
    const list = Array.isArray(body) ? body : body.classes;
    state.classes = list.map((c, i) => {
      const rgb = toRgb(c.color ?? c.colour ?? c.rgb);
      return { id: c.id ?? i, name: c.name, rgb, css: `rgb(${rgb.join(",")})` };
    });
    const legend = $("legend");
    legend.replaceChildren(
      ...state.classes.map((c) => {
        const li = document.createElement("li");
        li.dataset.classId = c.id;
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = c.css;
        swatch.setAttribute("aria-hidden", "true");
        const name = document.createElement("span");
        name.textContent = c.name;
        li.append(swatch, name);
        li.title = `${c.name}: rgb(${c.rgb.join(", ")})`;
        return li;
      }),
    );
  }

  async function loadMetadata() {
    const { body } = await fetchJson("/metadata");
    state.metadata = body;
    $("model-name").textContent = body.model_name ?? body.name ?? "unknown";
    $("model-version").textContent = String(body.model_version ?? body.version ?? "unknown");
    $("model-backend").textContent = body.backend ?? "unknown"; // torch, onnxruntime, ..._int8
    $("model-run").textContent = body.run_id ?? body.mlflow_run_id ?? "unknown";
    const hash = body.params_hash;
    $("model-params-item").hidden = !hash;
    $("model-params").textContent = hash ? String(hash).slice(0, 12) : "";
    const uri = body.model_uri ?? body.uri;
    if (uri) $("model-name").title = uri;
    await loadModelCard();
  }

  /** The header links the served version's model card when it has one (404: no card, no link).
   * Opened through fetch so the API key goes with it; a plain link cannot send a header. */
  async function loadModelCard() {
    const link = $("model-card-link");
    if (state.modelCardUrl) URL.revokeObjectURL(state.modelCardUrl);
    state.modelCardUrl = null;
    let found = false;
    try {
      const response = await fetch(apiUrl("/model-card?format=html"), { headers: authHeaders() });
      if (response.ok) {
        state.modelCardUrl = URL.createObjectURL(await response.blob());
        found = true;
      }
    } catch (_) {
      /* no card: no link */
    }
    link.href = state.modelCardUrl || apiUrl("/model-card");
    $("model-card-item").hidden = !found;
  }

  async function connect() {
    hideBanner();
    try {
      await Promise.all([loadClasses(), loadMetadata()]);
      setStatus("Connected to the service.");
      return true;
    } catch (err) {
      if (err.status !== 401) showBanner(`Could not load the model's details: ${err.message}`);
      setStatus("");
      return false;
    }
  }

  // ---------------------------------------------------------------- images and masks

  async function decode(blob) {
    const bitmap = await createImageBitmap(blob);
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    return { bitmap, data: ctx.getImageData(0, 0, bitmap.width, bitmap.height) };
  }

  /** Class id of every pixel: grey values below the class count are ids, else palette colours. */
  function classIds(imageData) {
    const n = state.classes.length;
    const byColor = new Map(state.classes.map((c) => [(c.rgb[0] << 16) | (c.rgb[1] << 8) | c.rgb[2], c.id]));
    const px = imageData.data;
    const ids = new Uint8Array(px.length / 4);
    for (let i = 0, j = 0; i < px.length; i += 4, j++) {
      const r = px[i], g = px[i + 1], b = px[i + 2];
      if (r === g && g === b && r < n) ids[j] = r;
      else ids[j] = byColor.get((r << 16) | (g << 8) | b) ?? 255;
    }
    return ids;
  }

  function colorCanvasFor(ids, width, height) {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    const out = ctx.createImageData(width, height);
    const lut = new Uint8Array(256 * 4); // id -> RGBA; unknown ids (255 = ignore) stay transparent
    for (const c of state.classes) lut.set([...c.rgb, 255], c.id * 4);
    for (let j = 0; j < ids.length; j++) out.data.set(lut.subarray(ids[j] * 4, ids[j] * 4 + 4), j * 4);
    ctx.putImageData(out, 0, 0);
    return canvas;
  }

  function sharesOf(ids) {
    const counts = new Map();
    for (const id of ids) counts.set(id, (counts.get(id) || 0) + 1);
    const shares = {};
    for (const c of state.classes) shares[c.id] = (counts.get(c.id) || 0) / Math.max(1, ids.length);
    return shares;
  }

  /** Service shares ({name: share}, [share...] or [{name|id, share}]) -> {classId: share}. */
  function sharesFromService(raw) {
    if (!raw) return null;
    const byName = new Map(state.classes.map((c) => [c.name, c.id]));
    const shares = {};
    if (Array.isArray(raw)) {
      raw.forEach((v, i) => {
        if (typeof v === "number") shares[i] = v;
        else shares[v.id ?? byName.get(v.name)] = v.share ?? v.value;
      });
    } else {
      for (const [k, v] of Object.entries(raw)) shares[byName.has(k) ? byName.get(k) : Number(k)] = v;
    }
    return shares;
  }

  function base64ToBlob(b64, type = "image/png") {
    const clean = b64.replace(/^data:[^,]*,/, "");
    const bin = atob(clean);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Blob([bytes], { type });
  }

  // ---------------------------------------------------------------- result cards

  function stemOf(name) {
    return name.split("/").pop().replace(/\.[^.]+$/, "") || "image";
  }

  function drawOverlay(item) {
    const canvas = item.overlayCanvas;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (item.bitmap) ctx.drawImage(item.bitmap, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = item.bitmap ? state.opacity : 1;
    ctx.drawImage(item.colorCanvas, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
    const pct = Math.round(state.opacity * 100);
    canvas.setAttribute("aria-label", `Overlay of the mask on ${item.name} at ${pct}% opacity`);
    canvas.dataset.opacity = String(pct);
  }

  function figure(caption, content) {
    const fig = document.createElement("figure");
    const cap = document.createElement("figcaption");
    cap.textContent = caption;
    fig.append(cap, content);
    return fig;
  }

  function renderItem(item, card) {
    card.classList.remove("pending");
    card.dataset.state = "done";
    const { width, height } = item.colorCanvas;

    const original = document.createElement("img");
    original.className = "original";
    original.alt = `Original image ${item.name}`;
    original.src = item.originalUrl;
    if (!item.bitmap) original.alt = `${item.name} (the browser cannot display this format)`;

    item.colorCanvas.className = "mask";
    item.colorCanvas.setAttribute("role", "img");
    item.colorCanvas.setAttribute("aria-label", `Predicted class mask of ${item.name}, coloured by class`);

    item.overlayCanvas = document.createElement("canvas");
    item.overlayCanvas.className = "overlay";
    item.overlayCanvas.width = width;
    item.overlayCanvas.height = height;
    item.overlayCanvas.setAttribute("role", "img");
    drawOverlay(item);

    const views = document.createElement("div");
    views.className = "views";
    views.append(
      figure("Original", original),
      figure("Mask", item.colorCanvas),
      figure("Overlay", item.overlayCanvas),
    );

    const meta = card.querySelector(".meta");
    const bits = [`${width}×${height}`];
    if (item.confidence != null) bits.push(`mean confidence ${(item.confidence * 100).toFixed(1)}%`);
    if (item.modelVersion) bits.push(`model version ${item.modelVersion}`);
    meta.textContent = bits.join(" · ");

    const chart = renderShareChart(state.classes, item.shares, `Pixel share per class in ${item.name}`);
    const body = card.querySelector(".body");
    body.replaceChildren(views, chart);
  }

  function newCard(title, parent = $("results")) {
    const card = document.createElement("article");
    card.className = "card pending";
    card.dataset.state = "pending";
    const h = document.createElement("h3");
    h.textContent = title;
    const meta = document.createElement("p");
    meta.className = "meta";
    meta.textContent = "Segmenting…";
    const body = document.createElement("div");
    body.className = "body";
    card.append(h, meta, body);
    parent.append(card);
    $("empty").hidden = true;
    return card;
  }

  async function addItem({ name, original, mask, color, confidence, shares, modelVersion }, parent) {
    const card = newCard(name, parent);
    const item = { id: state.nextId++, name, original, mask, confidence, modelVersion };
    item.originalUrl = URL.createObjectURL(original);
    try {
      item.bitmap = (await createImageBitmap(original)) || null;
    } catch (_) {
      item.bitmap = null; // e.g. TIFF: the service reads it, this browser does not
    }
    const source = mask || color;
    if (!source) throw new Error(`no mask for ${name} in the service's answer`);
    const decoded = await decode(source);
    const ids = classIds(decoded.data);
    item.colorCanvas = colorCanvasFor(ids, decoded.data.width, decoded.data.height);
    item.shares = shares || sharesOf(ids);
    item.color = color || null;
    state.items.push(item);
    renderItem(item, card);
    updateButtons();
    return item;
  }

  function showRejected(name, message) {
    const li = document.createElement("li");
    const strong = document.createElement("strong");
    strong.textContent = name;
    // The service names the file itself ("x.txt: not an image …"); do not say it twice.
    const text = message.startsWith(`${name}: `) ? message.slice(name.length + 2) : message;
    li.append(strong, document.createTextNode(` — rejected: ${text}`));
    li.dataset.file = name;
    $("errors").append(li);
    $("empty").hidden = true;
    updateButtons();
  }

  // ---------------------------------------------------------------- per upload kind

  async function segmentImage(file) {
    const form = new FormData();
    form.append("image", file, file.name);
    const { body, headers } = await fetchJson("/segment/json", { method: "POST", body: form });
    const maskB64 = body.mask ?? body.mask_png ?? body.mask_base64;
    await addItem({
      name: file.name,
      original: file,
      mask: base64ToBlob(maskB64),
      confidence: body.confidence ?? body.mean_confidence ?? null,
      shares: sharesFromService(body.class_shares ?? body.shares ?? body.pixel_shares),
      modelVersion: body.model_version ?? headers.get("X-Model-Version"),
    });
  }

  /** Group a result ZIP's entries by image: {key: {original, mask, color}} plus any videos. */
  function groupEntries(entries) {
    const groups = new Map();
    const videos = [];
    const extras = [];
    for (const entry of entries) {
      const lower = entry.name.toLowerCase();
      const base = lower.split("/").pop();
      if (VIDEO_EXT.test(base)) {
        videos.push(entry);
        continue;
      }
      if (!IMAGE_EXT.test(base)) {
        extras.push(entry);
        continue;
      }
      // Role from the file name first, then from its folders (e.g. masks/0001.png).
      const roleOf = (s) =>
        /colou?r/.test(s) ? "color" : /overlay|blend/.test(s) ? "overlay" : /mask|pred|label/.test(s) ? "mask" : null;
      const role = roleOf(base) || roleOf(lower.split("/").slice(0, -1).join("/")) || "original";
      const key = base
        .replace(/\.[^.]+$/, "")
        .replace(/(^|[_\-. ])(pred|mask|masks|colou?r|overlay|orig|original|image|input)(?=$|[_\-. ])/g, "")
        .replace(/^[_\-. ]+|[_\-. ]+$/g, "");
      const type = /\.png$/.test(base) ? "image/png" : "image/jpeg";
      const blob = new Blob([entry.data], { type });
      if (!groups.has(key)) groups.set(key, { key, name: entry.name });
      const group = groups.get(key);
      group[role] = blob;
      if (role === "original") group.name = entry.name;
    }
    return { groups: [...groups.values()].sort((a, b) => a.key.localeCompare(b.key)), videos, extras };
  }

  function sample(list, k) {
    if (list.length <= k) return list;
    return Array.from({ length: k }, (_, i) => list[Math.round((i * (list.length - 1)) / (k - 1))]);
  }

  async function showZipResults(upload, blob, version, { isVideo }) {
    state.uploads.push({ name: upload.name, blob });
    const entries = await readZip(await blob.arrayBuffer());
    const { groups, videos } = groupEntries(entries);
    const section = document.createElement("section");
    section.className = "upload-group";
    section.setAttribute("aria-label", `Results for ${upload.name}`);
    const title = document.createElement("h3");
    title.textContent = `${upload.name}: ${groups.length} ${isVideo ? "frames" : "images"}`;
    section.append(title);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${stemOf(upload.name)}-results.zip`;
    link.textContent = "Download the service's ZIP";
    link.className = "button";
    section.append(link);
    const segmented = videos.find((v) => /seg|pred|mask|overlay|colou?r/i.test(v.name.split("/").pop()));
    if (isVideo && segmented) {
      const block = document.createElement("div");
      block.className = "video-block";
      const video = document.createElement("video");
      video.controls = true;
      video.src = URL.createObjectURL(new Blob([segmented.data], { type: "video/mp4" }));
      video.setAttribute("aria-label", `Segmented video of ${upload.name}`);
      video.onerror = () => block.remove(); // codec this browser cannot play: the ZIP still has it
      block.append(video);
      section.append(block);
    }
    $("results").append(section);
    const shown = isVideo ? sample(groups, MAX_VIDEO_FRAMES_SHOWN) : groups;
    if (shown.length < groups.length) {
      const note = document.createElement("p");
      note.className = "hint";
      note.textContent = `Showing ${shown.length} of ${groups.length} frames; the ZIP holds them all.`;
      section.append(note);
    }
    for (const g of shown) {
      const original = g.original || g.overlay || g.color;
      await addItem(
        { name: g.name.split("/").pop(), original, mask: g.mask, color: g.color, modelVersion: version },
        section,
      );
    }
  }

  async function segmentZip(file) {
    const form = new FormData();
    form.append("files", file, file.name);
    const { blob, version } = await postForm("/predict-image/returns-zip/", form, {
      onUpload: (f) => setProgress(`Uploading ${file.name}`, f),
      onUploaded: () => setProgress(`Segmenting the images in ${file.name}…`, null),
    });
    await showZipResults(file, blob, version, { isVideo: false });
  }

  async function segmentVideo(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    const { blob, version } = await postForm("/predict-video/returns-zip/", form, {
      onUpload: (f) => setProgress(`Uploading ${file.name}: ${Math.round(f * 100)}%`, f),
      onUploaded: () => setProgress(`Processing ${file.name} on the server…`, null),
      onDownload: (f) => setProgress(`Receiving the results of ${file.name}`, f),
    });
    setProgress(`Unpacking the results of ${file.name}…`, null);
    await showZipResults(file, blob, version, { isVideo: true });
  }

  function kindOf(file) {
    if (/\.zip$/i.test(file.name) || /zip/.test(file.type)) return "zip";
    if (file.type.startsWith("video/") || VIDEO_EXT.test(file.name)) return "video";
    return "image"; // anything else goes to the service, which names what is wrong with it
  }

  async function handleFiles(fileList) {
    const files = [...fileList];
    if (!files.length) return;
    if (!state.classes.length && !(await connect())) {
      for (const f of files) showRejected(f.name, "the service's classes could not be loaded (see above)");
      return;
    }
    state.busy++;
    updateButtons();
    const images = files.filter((f) => kindOf(f) === "image");
    const others = files.filter((f) => kindOf(f) !== "image");
    let done = 0;
    const tick = () => {
      if (images.length) setProgress(`Segmenting ${done} of ${images.length} images`, done / images.length);
    };
    try {
      tick();
      const queue = images.slice();
      const worker = async () => {
        while (queue.length) {
          const file = queue.shift();
          try {
            await segmentImage(file);
          } catch (err) {
            showRejected(file.name, err.message);
          }
          done++;
          tick();
        }
      };
      await Promise.all(Array.from({ length: IMAGE_CONCURRENCY }, worker));
      for (const file of others) {
        try {
          await (kindOf(file) === "zip" ? segmentZip(file) : segmentVideo(file));
        } catch (err) {
          showRejected(file.name, err.message);
        }
      }
    } finally {
      state.busy--;
      hideProgress();
      const rejected = $("errors").children.length;
      setStatus(`${state.items.length} results` + (rejected ? `, ${rejected} rejected files.` : "."));
      updateButtons();
    }
  }

  // ---------------------------------------------------------------- download, progress, misc UI

  function canvasPng(canvas) {
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  async function bytesOf(blob) {
    return new Uint8Array(await blob.arrayBuffer());
  }

  async function downloadAll() {
    setStatus("Preparing the ZIP…");
    const entries = [];
    const used = new Set();
    const summary = { model: state.metadata || null, opacity: state.opacity, results: [] };
    for (const item of state.items) {
      let stem = stemOf(item.name);
      for (let n = 2; used.has(stem); n++) stem = `${stemOf(item.name)}-${n}`;
      used.add(stem);
      const ext = item.original.type === "image/png" ? "png" : "jpg";
      entries.push({ name: `${stem}/original.${ext}`, data: await bytesOf(item.original) });
      if (item.mask) entries.push({ name: `${stem}/mask.png`, data: await bytesOf(item.mask) });
      entries.push({ name: `${stem}/color.png`, data: await bytesOf(await canvasPng(item.colorCanvas)) });
      entries.push({ name: `${stem}/overlay.png`, data: await bytesOf(await canvasPng(item.overlayCanvas)) });
      summary.results.push({
        name: item.name,
        folder: stem,
        confidence: item.confidence ?? null,
        model_version: item.modelVersion ?? null,
        class_shares: Object.fromEntries(state.classes.map((c) => [c.name, item.shares[c.id] || 0])),
      });
    }
    for (const upload of state.uploads) {
      entries.push({ name: `service/${stemOf(upload.name)}-results.zip`, data: await bytesOf(upload.blob) });
    }
    entries.push({
      name: "summary.json",
      data: new TextEncoder().encode(JSON.stringify(summary, null, 2)),
    });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(writeZip(entries));
    a.download = "roadseg-results.zip";
    document.body.append(a);
    a.click();
    a.remove();
    setStatus(`Downloaded ${state.items.length} results as roadseg-results.zip.`);
  }

  function clearAll() {
    for (const item of state.items) URL.revokeObjectURL(item.originalUrl);
    state.items = [];
    state.uploads = [];
    $("results").replaceChildren();
    $("errors").replaceChildren();
    $("empty").hidden = false;
    setStatus("Cleared.");
    updateButtons();
  }

  function setProgress(label, fraction) {
    $("progress").hidden = false;
    $("progress-label").textContent = label;
    const bar = $("progress-bar");
    if (fraction == null) bar.removeAttribute("value"); // indeterminate
    else bar.value = Math.round(fraction * 100);
  }

  function hideProgress() {
    $("progress").hidden = true;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function showBanner(text) {
    const banner = $("banner");
    banner.textContent = text;
    banner.hidden = false;
  }

  function hideBanner() {
    $("banner").hidden = true;
  }

  function updateButtons() {
    $("download-all").disabled = state.busy > 0 || state.items.length === 0;
    $("clear").disabled = state.busy > 0 || (state.items.length === 0 && !$("errors").children.length);
  }

  function bind() {
    const input = $("file-input");
    input.addEventListener("change", () => {
      handleFiles(input.files).finally(() => (input.value = ""));
    });
    const zone = $("drop-zone");
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (e) => {
        e.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "drop"]) {
      zone.addEventListener(type, (e) => {
        e.preventDefault();
        zone.classList.remove("dragging");
      });
    }
    zone.addEventListener("drop", (e) => handleFiles(e.dataTransfer.files));
    // Dropping a file elsewhere on the page must not navigate away from the results.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());

    const slider = $("opacity");
    slider.addEventListener("input", () => {
      state.opacity = Number(slider.value) / 100;
      $("opacity-value").textContent = `${slider.value}%`;
      slider.setAttribute("aria-valuetext", `${slider.value}%`);
      state.items.forEach(drawOverlay);
    });

    const key = $("api-key");
    key.value = state.apiKey;
    const saveKey = () => {
      state.apiKey = key.value.trim();
      if (state.apiKey) localStorage.setItem(KEY_STORAGE, state.apiKey);
      else localStorage.removeItem(KEY_STORAGE);
      setStatus(state.apiKey ? "API key saved in this browser." : "API key removed.");
      connect();
    };
    $("api-key-save").addEventListener("click", saveKey);
    key.addEventListener("keydown", (e) => e.key === "Enter" && saveKey());

    $("download-all").addEventListener("click", () =>
      downloadAll().catch((err) => setStatus(`Could not build the ZIP: ${err.message}`)),
    );
    $("clear").addEventListener("click", clearAll);
  }

  function start() {
    state.apiKey = localStorage.getItem(KEY_STORAGE) || "";
    const slider = $("opacity");
    state.opacity = Number(slider.value) / 100;
    $("opacity-value").textContent = `${slider.value}%`;
    bind();
    connect();
  }

  start();
})();
