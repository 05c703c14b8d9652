// The page: submits jobs to /v1/videos, follows each one's server-sent events, plays finished videos.
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = localStorage.getItem("videodit-api-key") || "";
keyInput.addEventListener("change", () => {
  localStorage.setItem("videodit-api-key", keyInput.value);
  refresh();
});

function headers() {
  return keyInput.value ? { Authorization: `Bearer ${keyInput.value}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error((body.error && body.error.message) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function describe(video) {
  const [width, height] = video.size.split("x");  // the API's size is WIDTHxHEIGHT; the form's is H×W
  return `${height}×${width} · ${video.frames} frames (${video.seconds} s) · seed ${video.seed}`;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function updateEmpty() {
  $("queue-empty").hidden = $("queue").children.length > 0;
  $("history-empty").hidden = $("history").children.length > 0;
}

// ---- queue
function queueItem(video) {
  let item = document.querySelector(`#queue li[data-id="${video.id}"]`);
  if (!item) {
    item = document.createElement("li");
    item.dataset.id = video.id;
    item.innerHTML = `<div class="prompt"></div><div class="meta"></div><div class="bar"><span></span></div>`;
    item.querySelector(".prompt").textContent = video.prompt;
    $("queue").appendChild(item);
  }
  const where = video.status === "queued"
    ? `queued${video.queue_position ? `, ${video.queue_position} ahead` : ", next"}`
    : `${video.progress}%`;
  item.querySelector(".meta").textContent = `${describe(video)} · ${where}`;
  item.querySelector(".bar > span").style.width = `${video.progress}%`;
  updateEmpty();
}

async function follow(id) {
  // Server-sent events read through fetch, so that the API key can go in a header.
  try {
    const response = await fetch(`/v1/videos/${id}/events`, { headers: headers() });
    if (!response.ok) throw new Error(`events: ${response.status}`);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
        if (!data) continue;
        const video = JSON.parse(data);
        if (video.deleted) { removeQueued(id); return; }
        show(video);
      }
    }
  } catch (err) {
    setTimeout(() => poll(id), 1000);  // the stream broke: fall back to polling
  }
}

async function poll(id) {
  try {
    const video = await api(`/v1/videos/${id}`);
    show(video);
    if (video.status === "queued" || video.status === "in_progress") setTimeout(() => poll(id), 1000);
  } catch (err) {
    removeQueued(id);
  }
}

function removeQueued(id) {
  const item = document.querySelector(`#queue li[data-id="${id}"]`);
  if (item) item.remove();
  updateEmpty();
}

// ---- history
async function videoSource(video) {
  const url = `/v1/videos/${video.id}/content`;
  if (!keyInput.value) return url;
  const response = await fetch(url, { headers: headers() });
  return URL.createObjectURL(await response.blob());
}

function historyItem(video) {
  if (document.querySelector(`#history .video[data-id="${video.id}"]`)) return;
  const card = document.createElement("div");
  card.className = `video ${video.status}`;
  card.dataset.id = video.id;
  if (video.status === "completed") {
    const player = document.createElement("video");
    Object.assign(player, { controls: true, loop: true, muted: true, autoplay: true, playsInline: true });
    player.dataset.frames = video.frames;
    player.dataset.fps = video.fps;
    player.dataset.size = video.size;
    card.appendChild(player);
    videoSource(video).then((src) => { player.src = src; });
  }
  const text = document.createElement("p");
  text.textContent = video.prompt;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = video.status === "failed" ? `failed: ${video.error && video.error.message}` : describe(video);
  const actions = document.createElement("div");
  actions.className = "actions";
  if (video.status === "completed") {
    actions.appendChild(button("Remix", () => remix(video)));
  }
  actions.appendChild(button("Delete", () => remove(video.id, card)));
  if (video.status === "completed" && !keyInput.value) {
    const link = document.createElement("a");
    Object.assign(link, { href: `/v1/videos/${video.id}/content`, download: `${video.id}.mp4`,
                          textContent: "download" });
    actions.appendChild(link);
  }
  card.append(text, meta, actions);
  $("history").prepend(card);
  updateEmpty();
}

function button(label, onClick) {
  const b = document.createElement("button");
  Object.assign(b, { className: "small", type: "button", textContent: label });
  b.addEventListener("click", onClick);
  return b;
}

async function remove(id, card) {
  try {
    await api(`/v1/videos/${id}`, { method: "DELETE" });
    card.remove();
    updateEmpty();
  } catch (err) {
    showError(err.message);
  }
}

async function remix(video) {
  const prompt = window.prompt("Remix with a new prompt:", video.prompt);
  if (!prompt) return;
  try {
    const created = await api(`/v1/videos/${video.id}/remix`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ prompt }),
    });
    show(created);
    follow(created.id);
  } catch (err) {
    showError(err.message);
  }
}

function show(video) {
  if (video.status === "queued" || video.status === "in_progress") {
    queueItem(video);
  } else {
    removeQueued(video.id);
    historyItem(video);
  }
}

// ---- the form
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const form = new FormData();
  form.append("prompt", $("prompt").value);
  const fields = { frames: "frames", res: "res", seed: "seed", steps: "steps", cfg: "cfg",
                   negative: "negative_prompt" };
  for (const [id, name] of Object.entries(fields)) {
    const value = $(id).value.trim();
    if (value) form.append(name, value);
  }
  const file = $("init-file").files[0];
  if (file) {
    const mode = $("init-mode").value;
    form.append(mode, file);
    if (mode === "init_video") form.append("strength", $("strength").value);
  }
  const last = $("last-file").files[0];
  if (last) form.append("last_image", last);
  try {
    const video = await api("/v1/videos", { method: "POST", body: form });
    show(video);
    follow(video.id);
  } catch (err) {
    showError(err.message);
  }
});

async function refresh() {
  try {
    const page = await api("/v1/videos?limit=100&order=asc");
    for (const video of page.data) {
      show(video);
      if (video.status === "queued" || video.status === "in_progress") follow(video.id);
    }
    showError("");
  } catch (err) {
    showError(err.message);
  }
}

updateEmpty();
refresh();
