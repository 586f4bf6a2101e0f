// The sdrt playground: one page, no build step. It reads what the bundle supports from GET /v1/models,
// generates through POST /v1/images/generations with "stream": true (Server-Sent Events: progress per step,
// then the images), and cancels by closing the stream, which cancels the job on the server.
"use strict";

const $ = (id) => document.getElementById(id);
// The request field an error names -> the control it is shown beside (size: width and height).
const FIELDS = {
  prompt: "prompt", negative_prompt: "negative", sampler: "sampler", sampler_options: "sampler",
  schedule: "schedule", steps: "steps", cfg: "cfg", temperature: "temperature",
  temperature_method: "temperature-method", seed: "seed", size: "size", n: "batch",
  init_image: "init-image", mask: "mask", strength: "strength",
};
const CONTROLS = { size: ["width", "height"], mask: ["mask-canvas"] };
const SCHEDULES = { normal: "Normal", karras: "Karras", exponential: "Exponential", ays: "Align Your Steps" };

const state = {
  model: null, // the card from /v1/models
  lastSeed: null,
  controller: null, // AbortController of the running generation
  initImage: null, // {dataUrl, width, height}
  maskDrawn: false,
};

function apiKey() {
  return $("api-key").value.trim();
}

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if (apiKey()) h.Authorization = "Bearer " + apiKey();
  return h;
}

// ---- the model's options --------------------------------------------------------------------------
async function loadModel() {
  $("model-info").textContent = "Loading the model\u2026";
  let res;
  try {
    res = await fetch("/v1/models", { headers: headers(false) });
  } catch (err) {
    $("model-info").textContent = "The server cannot be reached: " + err.message;
    return;
  }
  if (res.status === 401) {
    $("key-row").hidden = false;
    $("model-info").textContent = apiKey() ? "That key was refused: check it and connect again."
      : "This server needs an API key: enter it below.";
    $("api-key").focus();
    return;
  }
  if (!res.ok) {
    $("model-info").textContent = "Could not read the model: " + (await errorOf(res)).message;
    return;
  }
  const card = (await res.json()).data[0];
  state.model = card;
  $("model-info").textContent = `${card.id} \u00b7 ${card.family} \u00b7 sizes ${card.min_size}\u2013${card.max_size}`;
  fillOptions($("sampler"), card.samplers.map((s) => [s.name, s.title]), "euler");
  fillOptions($("schedule"), card.schedules.map((s) => [s, SCHEDULES[s] || s]), "normal");
  const limits = card.limits;
  $("steps").max = limits.max_steps;
  $("steps").value = Math.min(20, limits.max_steps);
  $("batch").max = limits.max_images;
  for (const id of ["width", "height"]) {
    $(id).min = card.min_size;
    $(id).max = card.max_size;
    $(id).step = card.size_multiple;
  }
  $("width").value = card.default_size.width;
  $("height").value = card.default_size.height;
  $("size-hint").textContent = `${card.min_size}\u2013${card.max_size} pixels, multiples of ${card.size_multiple}; ` +
    `at most ${limits.max_pixels.toLocaleString("en")} pixels per image and ${limits.max_images} images per request.`;
  $("generate").disabled = false;
}

function fillOptions(select, items, preferred) {
  select.replaceChildren(...items.map(([value, text]) => new Option(text, value, false, value === preferred)));
}

// ---- errors beside their fields ---------------------------------------------------------------------
async function errorOf(res) {
  try {
    const body = await res.json();
    if (body && body.error) return body.error;
  } catch (err) { /* not JSON */ }
  return { message: `HTTP ${res.status}`, field: null };
}

function clearErrors() {
  for (const el of document.querySelectorAll(".error")) el.textContent = "";
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

function showError(error) {
  const id = FIELDS[error.field];
  const target = id && $(id + "-error");
  if (!target) {
    $("form-error").textContent = error.message;
    return;
  }
  target.textContent = error.message;
  target.setAttribute("role", "alert");
  const controls = (CONTROLS[id] || [id]).map($).filter(Boolean);
  for (const control of controls) control.setAttribute("aria-invalid", "true");
  if (id === "init-image" || id === "mask" || id === "strength") $("img2img").open = true;
  if (controls[0] && controls[0].focus) controls[0].focus();
}

// ---- the request -------------------------------------------------------------------------------------
function number(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

function collect() {
  const body = {
    prompt: $("prompt").value,
    negative_prompt: $("negative").value,
    sampler: $("sampler").value,
    schedule: $("schedule").value,
    steps: number("steps"),
    cfg: number("cfg"),
    temperature: number("temperature"),
    temperature_method: $("temperature-method").value,
    seed: number("seed"),
    n: number("batch"),
    size: `${$("width").value.trim()}x${$("height").value.trim()}`,
  };
  for (const key of Object.keys(body)) if (body[key] === null) delete body[key];
  if (state.initImage) {
    body.init_image = state.initImage.dataUrl;
    body.strength = Number($("strength").value);
    if ($("use-mask").checked) body.mask = maskPng();
  }
  return body;
}

function applySettings(body, seed) {
  $("prompt").value = body.prompt || "";
  $("negative").value = body.negative_prompt || "";
  if (body.sampler) $("sampler").value = body.sampler;
  if (body.schedule) $("schedule").value = body.schedule;
  for (const [id, key] of [["steps", "steps"], ["cfg", "cfg"], ["temperature", "temperature"], ["batch", "n"]]) {
    if (body[key] !== undefined) $(id).value = body[key];
  }
  $("temperature-method").value = body.temperature_method || "tsr";
  const [w, h] = (body.size || "").split("x");
  if (w && h) {
    $("width").value = w;
    $("height").value = h;
  }
  $("seed").value = seed;
  if (body.strength !== undefined) setStrength(body.strength);
  $("prompt").focus();
}

// ---- generating, with progress from the event stream ------------------------------------------------
async function generate(event) {
  event.preventDefault();
  if (state.controller) return;
  clearErrors();
  const body = collect();
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  showProgress(body.n || 1, 0, body.steps || 1, "Waiting for the server\u2026");
  try {
    const res = await fetch("/v1/images/generations", {
      method: "POST", headers: headers(true), body: JSON.stringify({ ...body, stream: true }),
      signal: controller.signal,
    });
    if (!res.ok) {
      const error = await errorOf(res);
      if (res.status === 401) {
        $("key-row").hidden = false;
        $("api-key").focus();
      }
      showError(error);
      clearProgress();
      return;
    }
    await readEvents(res, body);
  } catch (err) {
    if (err.name === "AbortError") {
      setStatus("Cancelled.");
      markProgress("cancelled");
    } else {
      showError({ message: "The request failed: " + err.message, field: null });
      clearProgress();
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

async function readEvents(res, body) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const name = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (!name || data === undefined) continue;
      const payload = JSON.parse(data);
      if (name === "progress") {
        showProgress(payload.images, payload.step, payload.total);
      } else if (name === "done") {
        showProgress(payload.data.length, 1, 1, "Done.");
        addResults(payload.data, body);
      } else if (name === "error") {
        showError(payload.error);
        markProgress("failed");
      }
    }
  }
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("cancel").disabled = !busy;
  $("form").setAttribute("aria-busy", busy ? "true" : "false");
  if (!busy && document.activeElement === $("cancel")) $("generate").focus();
}

function showProgress(images, step, total, status) {
  const box = $("progress");
  if (box.children.length !== images + 1) {
    box.replaceChildren();
    const line = document.createElement("p");
    line.id = "progress-status";
    box.append(line);
    for (let i = 0; i < images; i++) {
      const row = document.createElement("div");
      row.className = "bar";
      const label = document.createElement("label");
      label.htmlFor = `progress-${i}`;
      const bar = document.createElement("progress");
      bar.id = `progress-${i}`;
      bar.max = 100;
      row.append(label, bar);
      box.append(row);
    }
  }
  const percent = Math.round((100 * step) / Math.max(total, 1));
  box.querySelectorAll("progress").forEach((bar, i) => {
    bar.value = percent;
    bar.dataset.percent = String(percent);
    bar.previousSibling.textContent = `Image ${i + 1}: ${percent}%` + (total > 1 && step < total ? ` (step ${step}/${total})` : "");
  });
  setStatus(status || `Step ${step} of ${total}`);
}

function setStatus(text) {
  const line = $("progress-status");
  if (line) line.textContent = text;
}

function markProgress(kind) {
  $("progress").querySelectorAll("progress").forEach((bar) => bar.classList.add(kind));
}

function clearProgress() {
  $("progress").replaceChildren();
}

function cancel() {
  if (state.controller) state.controller.abort();
}

// ---- the gallery -----------------------------------------------------------------------------------
function addResults(items, body) {
  $("gallery-empty").hidden = true;
  state.lastSeed = items[0].seed;
  $("seed-reuse").disabled = false;
  for (const item of [...items].reverse()) {
    const bytes = Uint8Array.from(atob(item.b64_json), (c) => c.charCodeAt(0));
    const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
    const li = document.createElement("li");
    li.className = "result";
    const img = document.createElement("img");
    img.src = url;
    img.alt = `Generated image, seed ${item.seed}: ${body.prompt || "(no prompt)"}`;
    const figure = document.createElement("figure");
    const caption = document.createElement("figcaption");
    const params = document.createElement("pre");
    params.className = "parameters";
    params.textContent = item.parameters;
    params.tabIndex = 0;
    params.setAttribute("aria-label", `Parameters of the image with seed ${item.seed}`);
    caption.append(params);
    figure.append(img, caption);
    const download = document.createElement("a");
    download.href = url;
    download.download = `sdrt-${item.seed}.png`;
    download.className = "button download";
    download.textContent = "Download PNG";
    const back = document.createElement("button");
    back.type = "button";
    back.className = "send-back";
    back.textContent = "Send settings to the form";
    back.addEventListener("click", () => applySettings(body, item.seed));
    const actions = document.createElement("div");
    actions.className = "inline";
    actions.append(download, back);
    li.append(figure, actions);
    $("gallery").prepend(li);
  }
}

// ---- image to image: the init image and the mask canvas ---------------------------------------------
function setStrength(value) {
  $("strength").value = value;
  $("strength-out").textContent = Number(value).toFixed(2);
}

function snap(value) {
  const m = state.model;
  if (!m) return value;
  const stepped = Math.round(value / m.size_multiple) * m.size_multiple;
  return Math.min(m.max_size, Math.max(m.min_size, stepped));
}

function loadInitImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const img = new Image();
    img.onload = () => {
      state.initImage = { dataUrl: reader.result, width: img.naturalWidth, height: img.naturalHeight };
      for (const id of ["image-canvas", "mask-canvas"]) {
        $(id).width = img.naturalWidth;
        $(id).height = img.naturalHeight;
      }
      $("image-canvas").getContext("2d").drawImage(img, 0, 0);
      clearMask();
      $("mask-area").hidden = false;
      $("width").value = snap(img.naturalWidth);
      $("height").value = snap(img.naturalHeight);
    };
    img.onerror = () => showError({ field: "init_image", message: "That file is not an image the browser can read." });
    img.src = reader.result;
  };
  reader.readAsDataURL(file);
}

function removeInitImage() {
  state.initImage = null;
  $("init-image").value = "";
  $("mask-area").hidden = true;
  $("use-mask").checked = false;
  $("init-image").focus();
}

function clearMask() {
  const canvas = $("mask-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  state.maskDrawn = false;
}

function maskAll() {
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "rgba(255, 64, 64, 0.55)";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  state.maskDrawn = true;
  $("use-mask").checked = true;
}

// The mask sent: white where drawn (repaint), black elsewhere, at the init image's size.
function maskPng() {
  const source = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = source.width;
  out.height = source.height;
  const ctx = out.getContext("2d");
  const drawn = source.getContext("2d").getImageData(0, 0, source.width, source.height);
  const mask = ctx.createImageData(source.width, source.height);
  for (let i = 0; i < drawn.data.length; i += 4) {
    const v = drawn.data[i + 3] > 0 ? 255 : 0;
    mask.data[i] = mask.data[i + 1] = mask.data[i + 2] = v;
    mask.data[i + 3] = 255;
  }
  ctx.putImageData(mask, 0, 0);
  return out.toDataURL("image/png");
}

function setUpMaskDrawing() {
  const canvas = $("mask-canvas");
  let drawing = false;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (canvas.width / box.width), (event.clientY - box.top) * (canvas.height / box.height)];
  };
  const paint = (event) => {
    const ctx = canvas.getContext("2d");
    const [x, y] = point(event);
    const radius = (Number($("brush").value) / 2) * (canvas.width / canvas.getBoundingClientRect().width);
    ctx.fillStyle = "rgba(255, 64, 64, 0.55)";
    ctx.beginPath();
    ctx.arc(x, y, Math.max(radius, 1), 0, 2 * Math.PI);
    ctx.fill();
    state.maskDrawn = true;
    $("use-mask").checked = true;
  };
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    paint(event);
  });
  canvas.addEventListener("pointermove", (event) => drawing && paint(event));
  for (const name of ["pointerup", "pointercancel"]) canvas.addEventListener(name, () => { drawing = false; });
}

// ---- wiring ----------------------------------------------------------------------------------------
function main() {
  $("generate").disabled = true;
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("connect").addEventListener("click", loadModel);
  $("api-key").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      loadModel();
    }
  });
  $("seed-random").addEventListener("click", () => { $("seed").value = -1; });
  $("seed-reuse").addEventListener("click", () => { if (state.lastSeed !== null) $("seed").value = state.lastSeed; });
  $("strength").addEventListener("input", () => setStrength($("strength").value));
  $("init-image").addEventListener("change", () => loadInitImage($("init-image").files[0]));
  $("mask-all").addEventListener("click", maskAll);
  $("mask-clear").addEventListener("click", clearMask);
  $("image-remove").addEventListener("click", removeInitImage);
  // Ctrl+Enter (or Cmd+Enter) in a prompt generates; Escape cancels.
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("form").requestSubmit();
    if (event.key === "Escape" && state.controller) cancel();
  });
  setUpMaskDrawing();
  loadModel();
}

main();
