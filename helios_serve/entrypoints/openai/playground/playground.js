// The Helios playground: create a job through the OpenAI-style API, follow it over Server-Sent
// Events, and play its fMP4 segments through Media Source Extensions as each chunk is written.
// Everything comes from this server; nothing is loaded from elsewhere.
"use strict";

const KEY_STORAGE = "helios.apiKey";
const JOBS_STORAGE = "helios.jobs";
const MAX_REMEMBERED_JOBS = 20;
const PLAYBACK_FPS_DEFAULT = 24;
// Keep this much already-played video in the media buffer; older parts are evicted.
const KEEP_PLAYED_SECONDS = 30;

const $ = (id) => document.getElementById(id);

// Prompts 2, 5, 8 and 22 of HeliosBench, the Helios benchmark's text-to-video set
// (eval/playground/helios_t2v_prompts.csv in github.com/PKU-YuanGroup/Helios), as written there.
const EXAMPLE_PROMPTS = [
  ["Mammoths in snow",
   "A stunning mid-afternoon landscape photograph with a low camera angle, showcasing several giant wooly " +
   "mammoths treading through a snowy meadow. Their long, wooly fur gently billows in the brisk wind as they " +
   "move, creating a sense of natural movement. Snow-covered trees and dramatic snow-capped mountains loom in " +
   "the distance, adding to the majestic setting. Wispy clouds and a high sun cast a warm glow over the scene, " +
   "enhancing the serene and awe-inspiring atmosphere. The depth of field brings out the detailed textures of " +
   "the mammoths and the snowy environment, capturing every nuance of these prehistoric giants in breathtaking " +
   "clarity."],
  ["Monster and candle",
   "A close-up 3D animated scene of a short, fluffy monster kneeling beside a melting red candle. The monster " +
   "has large, wide eyes and an open mouth, gazing at the flame with a look of wonder and curiosity. Its soft, " +
   "fluffy fur contrasts with the warm, dramatic lighting that highlights every detail of its gentle, innocent " +
   "expression. The pose conveys a sense of playfulness and exploration, as if the creature is discovering the " +
   "world for the first time. The background features a cozy, warmly lit room with subtle hints of a fireplace " +
   "and soft furnishings, enhancing the overall atmosphere. The use of warm colors and dramatic lighting " +
   "creates a captivating and inviting scene."],
  ["Pirate ships in coffee",
   "A photorealistic closeup video of two pirate ships battling each other as they sail inside a steaming cup " +
   "of coffee. The ships are intricately detailed, with wooden planks, sails flapping in the breeze, and " +
   "cannons aimed at each other. The crew members, wearing authentic pirate attire, brandish swords and " +
   "pistols, their expressions fierce and determined. The coffee foam creates a frothy, turbulent sea, with " +
   "ripples and waves realistically depicted. The background is a blurred, warm brown coffee surface, with " +
   "steam rising gently. The camera angle is slightly elevated, capturing the intense action from above."],
  ["Paper airplanes",
   "A vibrant illustration in a whimsical cartoon style depicting a flock of paper airplanes fluttering " +
   "through a dense jungle. The airplanes, resembling small birds, weave gracefully around towering trees, " +
   "their wings fluttering gently. The jungle is lush and vibrant, with a variety of exotic plants and " +
   "colorful flowers. The airplanes seem to migrate through the forest, creating a mesmerizing aerial dance. " +
   "The background is rich with detailed textures, including sunlight filtering through the canopy, casting " +
   "dappled shadows on the ground. A dynamic overhead view capturing the mid-flight action of the airplanes."],
];
// The recent list's thumbnails get a fixed box, so the list does not jump as they load.
const THUMBNAIL_WIDTH = 112;
const THUMBNAIL_HEIGHT = 64;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function apiKey() {
  return $("api-key").value.trim();
}

function withKey(url) {
  const key = apiKey();
  return key ? `${url}${url.includes("?") ? "&" : "?"}api_key=${encodeURIComponent(key)}` : url;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message || message;
    } catch (_) { /* not an API error body */ }
    throw new ApiError(response.status, message);
  }
  return response;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

// -- the player: fMP4 segments appended to a MediaSource, in order ----------------------------
class SegmentPlayer {
  constructor(video, videoId) {
    this.video = video;
    this.videoId = videoId;
    this.queue = [];
    this.appended = new Set();
    this.finished = false;
    this.stopped = false;
    this.pumping = false;
    this.fetches = new AbortController();  // stop() cancels a segment download in flight
    this.sourceBuffer = null;
    this.mediaSource = new MediaSource();
    this.opened = new Promise((resolve) => this.mediaSource.addEventListener("sourceopen", resolve, { once: true }));
    video.src = URL.createObjectURL(this.mediaSource);
  }

  async fetchSegment(name) {
    const url = `/v1/videos/${this.videoId}/stream/${name}`;  // api() sends the key as a header
    return (await api(url, { signal: this.fetches.signal })).arrayBuffer();
  }

  addChunk(index) {
    if (!this.appended.has(index) && !this.queue.includes(index)) {
      this.queue.push(index);
      this.queue.sort((a, b) => a - b);
    }
    this.pump();
  }

  finish() {
    this.finished = true;
    this.pump();
  }

  stop() {
    this.stopped = true;
    this.queue = [];
    this.fetches.abort();
  }

  async pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      await this.opened;
      while (this.queue.length && !this.stopped) {
        const index = this.queue.shift();
        if (!this.sourceBuffer) await this.start();
        const data = await this.fetchSegment(`seg_${String(index).padStart(5, "0")}.m4s`);
        await this.evictPlayed();
        await this.append(data);
        this.appended.add(index);
        if (index === 0) this.video.play().catch(() => { /* autoplay refused: the controls remain */ });
      }
      if (this.finished && this.mediaSource.readyState === "open" && !this.sourceBuffer?.updating) {
        this.mediaSource.endOfStream();
      }
    } catch (error) {
      if (!this.stopped) showError(`Playback: ${error.message}`);
    } finally {
      this.pumping = false;
    }
    if (this.queue.length && !this.stopped) this.pump();
  }

  async start() {
    const init = await this.fetchSegment("init.mp4");
    const type = `video/mp4; codecs="${avcCodec(new Uint8Array(init))}"`;
    if (!MediaSource.isTypeSupported(type)) throw new Error(`this browser cannot play ${type}`);
    this.sourceBuffer = this.mediaSource.addSourceBuffer(type);
    await this.append(init);
  }

  append(data) {
    return new Promise((resolve, reject) => {
      this.sourceBuffer.addEventListener("updateend", resolve, { once: true });
      this.sourceBuffer.addEventListener("error", () => reject(new Error("the browser rejected a segment")),
                                         { once: true });
      this.sourceBuffer.appendBuffer(data);
    });
  }

  evictPlayed() {
    const played = this.video.currentTime - KEEP_PLAYED_SECONDS;
    const buffered = this.sourceBuffer.buffered;
    if (played <= 0 || !buffered.length || buffered.start(0) >= played) return Promise.resolve();
    return new Promise((resolve) => {
      this.sourceBuffer.addEventListener("updateend", resolve, { once: true });
      this.sourceBuffer.remove(0, played);
    });
  }
}

// Browsers without Media Source Extensions (iPhone Safari) play the HLS live playlist natively.
class HlsPlayer {
  constructor(video, videoId) {
    this.video = video;
    this.videoId = videoId;
    this.started = false;
  }

  // The player cannot send the API key: the server gives a playlist URL with a token that
  // opens this video's stream only, and signs the segment URIs inside the same way.
  addChunk() {
    if (!this.started) {
      this.started = true;
      api(`/v1/videos/${this.videoId}/stream_url`)
        .then((response) => response.json())
        .then(({ url }) => {
          this.video.src = url;
          return this.video.play().catch(() => { /* autoplay refused: the controls remain */ });
        })
        .catch((error) => showError(error.message));
    }
  }

  finish() {}

  stop() {
    this.video.removeAttribute("src");
    this.video.load();
  }
}

function makePlayer(video, videoId) {
  if (window.MediaSource) return new SegmentPlayer(video, videoId);
  if (video.canPlayType("application/vnd.apple.mpegurl")) return new HlsPlayer(video, videoId);
  return null;
}

// The RFC 6381 codec string ("avc1.PPCCLL") from the avcC box of an init segment.
function avcCodec(bytes) {
  for (let i = 4; i + 7 < bytes.length; i++) {
    if (bytes[i] === 0x61 && bytes[i + 1] === 0x76 && bytes[i + 2] === 0x63 && bytes[i + 3] === 0x43) {
      const hex = (b) => b.toString(16).padStart(2, "0");
      return `avc1.${hex(bytes[i + 5])}${hex(bytes[i + 6])}${hex(bytes[i + 7])}`;
    }
  }
  return "avc1.64001f";
}

// -- one job: follow its events, feed the player, report progress -----------------------------
let current = null;

function watch(job) {
  const video = $("player");
  const player = makePlayer(video, job.id) || { addChunk() {}, finish() {}, stop() {} };
  const events = new EventSource(withKey(`/v1/videos/${job.id}/events`));
  const fps = job.fps || PLAYBACK_FPS_DEFAULT;
  let firstChunkAt = null;
  let framesAfterFirst = 0;
  let chunksDone = 0;
  current = { job, events, player };
  $("cancel").disabled = false;
  $("cancel").textContent = job.live ? "Stop" : "Cancel";
  setSteering(true);
  $("download").hidden = true;
  setStatus(job.live ? "Live: starting…" : `Queued: ${job.total_chunks} chunk(s), ${job.num_frames} frames.`);

  events.addEventListener("progress", (event) => {
    const data = JSON.parse(event.data);
    $("progress").value = data.progress;
    if (!chunksDone) setStatus(`Generating the first chunk… ${data.progress}%`);
  });
  events.addEventListener("chunk", (event) => {
    const data = JSON.parse(event.data);
    chunksDone = Math.max(chunksDone, data.chunk_index + 1);
    const now = performance.now();
    if (firstChunkAt === null) firstChunkAt = now;
    else framesAfterFirst += data.num_frames || 33;
    const seconds = (now - firstChunkAt) / 1000;
    const factor = seconds > 0 ? framesAfterFirst / seconds / fps : null;
    setStatus((job.live ? `Live · chunk ${chunksDone}` : `Chunk ${chunksDone} of ${data.total_chunks}`) +
              (factor === null ? "" : ` · ${factor.toFixed(2)}× real time`) +
              (current && current.steered ? ` · ${current.steered}` : ""));
    player.addChunk(data.chunk_index);
  });
  events.addEventListener("prompt", (event) => {
    const data = JSON.parse(event.data);
    if (current && current.job.id === job.id) current.steered = `“${data.prompt}” from chunk ${data.from_chunk + 1}`;
  });
  events.addEventListener("completed", (event) => {
    const final = JSON.parse(event.data);
    events.close();
    player.finish();
    $("progress").value = 100;
    setStatus(`Done: ${final.num_frames} frames in ${(final.inference_time_s || 0).toFixed(1)} s ` +
              `(seed ${final.seed}).`);
    finishJob(final.id, true);
  });
  events.addEventListener("failed", (event) => {
    const final = JSON.parse(event.data);
    events.close();
    showError(`Generation failed: ${final.error ? final.error.message : "unknown error"}`);
    setStatus("Failed.");
    finishJob(job.id, false);
  });
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED && current && current.events === events) {
      showError("Lost the connection to the server.");
      finishJob(job.id, false);
    }
  };
}

function finishJob(videoId, completed) {
  if (current && current.job.id === videoId) {
    current.events.close();
    if (!completed) current.player.stop();
    current = null;
  }
  setSteering(false);
  $("cancel").disabled = true;
  $("generate").disabled = false;
  if (completed) {
    $("download-link").href = withKey(`/v1/videos/${videoId}/content`);
    $("download").hidden = false;
  }
  renderJobs();
}

function setSteering(enabled) {
  for (const id of ["steer-prompt", "steer-transition", "steer"]) $(id).disabled = !enabled;
}

// A new prompt for the job that is playing: it applies from the next chunk not begun.
async function steer(event) {
  event.preventDefault();
  showError("");
  const prompt = $("steer-prompt").value.trim();
  if (!current || !prompt) return;
  const body = JSON.stringify({ prompt, transition_chunks: Number($("steer-transition").value) });
  try {
    const answer = await (await api(`/v1/videos/${current.job.id}/prompt`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body,
    })).json();
    current.steered = `“${prompt}” from chunk ${answer.from_chunk + 1}`;
    $("steer-prompt").value = "";
  } catch (error) {
    showError(`Changing the prompt failed: ${error.message}`);
  }
}

// A finished video continued from where it ended: a new job, the whole video plus the extension.
async function extend(job) {
  showError("");
  const prompt = $("prompt").value.trim() || job.prompt;
  const length = Number($("length").value);
  if (!Number.isInteger(length) || length < 1) {
    showError("Length must be a whole number, at least 1.");
    return;
  }
  const added = $("length-unit").value === "frames" ? { num_frames: length } : { seconds: length };
  if (current) finishJob(current.job.id, false);
  try {
    const created = await (await api(`/v1/videos/${job.id}/extend`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ prompt, ...added }),
    })).json();
    remember(created.id);
    watch(created);
    renderJobs();
  } catch (error) {
    showError(`Extending failed: ${error.message}`);
  }
}

async function cancel() {
  if (!current) return;
  const { job, events, player } = current;
  // Stop following the job before deleting it, so no segment request races the deletion.
  events.close();
  player.stop();
  try {
    await api(`/v1/videos/${job.id}`, { method: "DELETE" });
    forget(job.id);  // a cancelled job is deleted
    setStatus(job.live ? "Stopped." : "Cancelled.");
    $("progress").value = 0;
  } catch (error) {
    showError(`Cancel failed: ${error.message}`);
  }
  finishJob(job.id, false);
}

// -- the form ---------------------------------------------------------------------------------
function requestBody() {
  const form = new FormData();
  const prompt = $("prompt").value.trim();
  if (!prompt) throw new Error("Write a prompt first.");
  form.append("prompt", prompt);
  if ($("live").checked) {
    form.append("realtime", "true");  // no length: it plays until stopped
  } else {
    const length = Number($("length").value);
    if (!Number.isInteger(length) || length < 1) throw new Error("Length must be a whole number, at least 1.");
    form.append($("length-unit").value === "frames" ? "num_frames" : "seconds", String(length));
  }
  if ($("size").value) form.append("size", $("size").value);
  if ($("seed").value !== "") form.append("seed", $("seed").value);
  if ($("negative-prompt").value.trim()) form.append("negative_prompt", $("negative-prompt").value.trim());
  if (!$("model-row").hidden && $("model").value) form.append("model", $("model").value);
  const image = $("image").files[0];
  if (image) form.append("input_reference", image, image.name);
  return form;
}

async function generate(event) {
  event.preventDefault();
  showError("");
  localStorage.setItem(KEY_STORAGE, apiKey());
  let body;
  try {
    body = requestBody();
  } catch (error) {
    showError(error.message);
    return;
  }
  if (current) finishJob(current.job.id, false);
  $("generate").disabled = true;
  $("progress").value = 0;
  try {
    const job = await (await api("/v1/videos", { method: "POST", body })).json();
    remember(job.id);
    watch(job);
    renderJobs();
  } catch (error) {
    showError(error.status === 401 ? "This server needs an API key: enter it under More settings." : error.message);
    $("generate").disabled = false;
  }
}

// -- recent jobs (the ones this browser created) ----------------------------------------------
function rememberedJobs() {
  try {
    return JSON.parse(localStorage.getItem(JOBS_STORAGE)) || [];
  } catch (_) {
    return [];
  }
}

function forget(videoId) {
  localStorage.setItem(JOBS_STORAGE, JSON.stringify(rememberedJobs().filter((id) => id !== videoId)));
}

function remember(videoId) {
  const ids = [videoId, ...rememberedJobs().filter((id) => id !== videoId)].slice(0, MAX_REMEMBERED_JOBS);
  localStorage.setItem(JOBS_STORAGE, JSON.stringify(ids));
}

async function renderJobs() {
  const list = $("jobs");
  const ids = rememberedJobs();
  const jobs = [];
  for (const id of ids) {
    try {
      jobs.push(await (await api(`/v1/videos/${id}`)).json());
    } catch (error) {
      if (error.status === 404) forget(id);  // expired or deleted elsewhere
    }
  }
  list.replaceChildren();
  if (!jobs.length) {
    const empty = document.createElement("li");
    empty.className = "muted";
    empty.textContent = "None yet.";
    list.append(empty);
    return;
  }
  for (const job of jobs) {
    const item = document.createElement("li");
    item.append(thumbnail(job));
    const prompt = document.createElement("span");
    prompt.className = "prompt";
    prompt.textContent = job.prompt;
    const details = document.createElement("span");
    details.className = "muted";
    details.textContent = `${job.status} · ${job.live ? "live" : `${job.num_frames} frames`} · ${job.size} · ` +
                          `seed ${job.seed}`;
    item.append(prompt, details);
    if (job.status === "completed") {
      const link = document.createElement("a");
      link.href = withKey(`/v1/videos/${job.id}/content`);
      link.download = `${job.id}.mp4`;
      link.textContent = "Download";
      link.setAttribute("aria-label", `Download the video of “${job.prompt}”`);
      item.append(link);
      if (!job.live) {
        const more = document.createElement("button");
        more.type = "button";
        more.className = "secondary extend";
        more.textContent = "Extend";
        more.setAttribute("aria-label", `Extend the video of “${job.prompt}” by the length above`);
        more.addEventListener("click", () => extend(job));
        item.append(more);
      }
    }
    list.append(item);
  }
}

// The first frame, sent with the key the way downloads are. Chunk 0 writes it: before that there
// is none, and asking for it would answer 409, so an empty box of the same size stands in.
function thumbnail(job) {
  if (!job.chunks_completed) {
    const empty = document.createElement("span");
    empty.className = "thumb";
    return empty;
  }
  const image = document.createElement("img");
  image.className = "thumb";
  image.loading = "lazy";  // set before src, or the browser has already started the download
  image.width = THUMBNAIL_WIDTH;
  image.height = THUMBNAIL_HEIGHT;
  image.alt = "";  // the prompt next to it says what the video is
  image.src = withKey(`/v1/videos/${job.id}/content?variant=thumbnail`);
  return image;
}

// A random test model (the default, helios-tiny) makes noise, which looks like a broken server:
// say so before anyone waits for a video. /ready needs no key, so this shows before one is typed.
async function warnIfRandomModel() {
  try {
    const [ready, randomModels] = await Promise.all([
      fetch("/ready").then((response) => response.json()),
      fetch("/playground/random-models.json").then((response) => response.json()),
    ]);
    if (ready.status === "loading") {
      setTimeout(warnIfRandomModel, 2000);
      return;
    }
    const what = randomModels[ready.model];
    if (what) {
      $("model-warning").textContent = `${ready.model} is ${what}: its videos show noise, not the prompt. ` +
        "For real videos, start the server with a released model (helios-distilled, helios-mid or helios-base).";
      $("model-warning").hidden = false;
    }
  } catch (_) { /* without the warning the page still works */ }
}

function showExamples() {
  $("examples").replaceChildren(...EXAMPLE_PROMPTS.map(([label, prompt]) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary example";
    button.textContent = label;
    button.title = prompt;
    button.addEventListener("click", () => {
      $("prompt").value = prompt;
      $("prompt").focus();
    });
    return button;
  }));
}

async function loadModels() {
  try {
    const models = (await (await api("/v1/models")).json()).data;
    $("model-name").textContent = models.map((m) => m.id).join(", ");
    if (models.length > 1) {
      $("model").replaceChildren(...models.map((m) => new Option(m.id, m.id)));
      $("model-row").hidden = false;
    }
  } catch (error) {
    $("model-name").textContent = "unknown";
    if (error.status === 401) {
      document.querySelector("details").open = true;
      showError("This server needs an API key: enter it under More settings.");
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, apiKey());
    showError("");
    loadModels();
    renderJobs();
  });
  $("create-form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("steer-form").addEventListener("submit", steer);
  $("live").addEventListener("change", () => {
    $("length").disabled = $("length-unit").disabled = $("live").checked;
  });
  if (!window.MediaSource && !$("player").canPlayType("application/vnd.apple.mpegurl")) {
    showError("This browser can play neither Media Source Extensions nor HLS: download the videos instead.");
  }
  showExamples();
  warnIfRandomModel();
  loadModels();
  renderJobs();
});
