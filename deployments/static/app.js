// The page: a form that POSTs to /generate-stream, and a player that plays each segment as it arrives.
// A dropped connection is resumed from the last event received (GET /streams/{id} with Last-Event-ID), so
// what has played stays and the rest follows. No framework and no build step: ES modules served as they are.

import { joinSegments } from "./fmp4.js";
import { StreamPlayer, clearVideo } from "./player.js";
import { RESUME_TRIES, newRequestId, readResuming } from "./resume.js";
import { MicrophoneRecording } from "./recorder.js";
import { authHeaders, rememberApiKey } from "./apikey.js";
import { formatSeconds, formatBytes, formatClock, base64ToBytes, readAsDataUrl, Problem, overNetwork } from "./helpers.js";

const $ = (id) => document.getElementById(id);
const ui = {
  serviceStatus: $("service-status"),
  form: $("generate-form"),
  imageInput: $("image-input"),
  audioInput: $("audio-input"),
  recordButton: $("record-button"),
  recordStatus: $("record-status"),
  promptInput: $("prompt-input"),
  stepsInput: $("steps-input"),
  seedInput: $("seed-input"),
  apiKeyInput: $("api-key-input"),
  generateButton: $("generate-button"),
  stopButton: $("stop-button"),
  downloadButton: $("download-button"),
  errorBox: $("error-box"),
  errorTitle: $("error-title"),
  errorMessage: $("error-message"),
  errorDetail: $("error-detail"),
  video: $("player"),
  playHint: $("play-hint"),
  status: $("status"),
  segmentProgress: $("segment-progress"),
  segmentProgressText: $("segment-progress-text"),
  stepProgress: $("step-progress"),
  stepProgressText: $("step-progress-text"),
  segmentList: $("segment-list"),
  facts: {
    firstSegment: $("fact-first-segment"),
    playback: $("fact-playback"),
    total: $("fact-total"),
    video: $("fact-video"),
    seed: $("fact-seed"),
    request: $("fact-request"),
  },
};

// The form's fields by name, as the service names them in an error's "field".
const FIELDS = {
  image: { input: ui.imageInput, error: $("image-error"), requestField: "image_base64" },
  audio: { input: ui.audioInput, error: $("audio-error"), requestField: "audio_base64" },
  prompt: { input: ui.promptInput, error: $("prompt-error"), requestField: "prompt" },
  steps: { input: ui.stepsInput, error: $("steps-error"), requestField: "num_steps" },
  seed: { input: ui.seedInput, error: $("seed-error"), requestField: "seed" },
};
const MAX_SEED = 2 ** 32 - 1;
const HTTP_TITLES = {
  400: "The service could not read the request",
  413: "The files are too large",
  415: "The service did not accept the request's format",
  422: "Something in the form is not accepted",
  503: "The service is busy or not ready",
};

const state = {
  files: { image: null, audio: null },
  previewUrls: { image: null, audio: null },
  maxAudioS: 600,
  recorder: null,
  run: null, // the latest request; run.done once it ended
  download: null, // {url, name} of the last complete video
};

function setStatus(text) {
  ui.status.textContent = text;
}

rememberApiKey(ui.apiKeyInput);


// ---------------------------------------------------------------------------------------------------------
// Errors: one box for the request, and a message under each field the service or the form names

function showError(title, message, detail = "") {
  ui.errorTitle.textContent = title;
  ui.errorMessage.textContent = message;
  ui.errorDetail.textContent = detail;
  ui.errorDetail.hidden = !detail;
  ui.errorBox.hidden = false;
}

function setFieldError(name, message) {
  const field = FIELDS[name];
  field.error.textContent = message;
  field.error.hidden = false;
  field.input.setAttribute("aria-invalid", "true");
}

function clearFieldError(name) {
  const field = FIELDS[name];
  field.error.textContent = "";
  field.error.hidden = true;
  field.input.removeAttribute("aria-invalid");
}

function clearErrors() {
  ui.errorBox.hidden = true;
  for (const name of Object.keys(FIELDS)) clearFieldError(name);
}

function fieldForRequestField(requestField) {
  return Object.keys(FIELDS).find((name) => FIELDS[name].requestField === requestField);
}

// ---------------------------------------------------------------------------------------------------------
// The face and the speech: chosen, dropped or recorded

function kindOfFile(file, fallback) {
  if (file.type.startsWith("image/")) return "image";
  if (file.type.startsWith("audio/")) return "audio";
  if (/\.(jpe?g|png|webp)$/i.test(file.name)) return "image";
  if (/\.(wav|mp3|flac|ogg|oga)$/i.test(file.name)) return "audio";
  return fallback;
}

function setFile(kind, file, how = "chosen") {
  state.files[kind] = file;
  clearFieldError(kind);
  const input = FIELDS[kind].input;
  if (input.files[0] !== file) {
    try {
      // Show the dropped or recorded file in the file input too, so there is one place that names it.
      const transfer = new DataTransfer();
      transfer.items.add(file);
      input.files = transfer.files;
    } catch {
      // An older browser: the info line below still names the file.
    }
  }
  const info = $(`${kind}-info`);
  info.textContent = `${how === "recorded" ? "Recorded" : "Selected"}: ${file.name}, ${formatBytes(file.size)}`;
  const preview = $(`${kind}-preview`);
  preview.onerror = () => {
    preview.hidden = true;
    info.append(". This browser cannot preview it.");
  };
  if (state.previewUrls[kind]) URL.revokeObjectURL(state.previewUrls[kind]);
  state.previewUrls[kind] = URL.createObjectURL(file);
  preview.src = state.previewUrls[kind];
  preview.hidden = false;
}

function clearFile(kind) {
  state.files[kind] = null;
  $(`${kind}-info`).textContent = "";
  $(`${kind}-preview`).hidden = true;
}

for (const kind of ["image", "audio"]) {
  FIELDS[kind].input.addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) setFile(kind, file);
    else clearFile(kind);
  });
}

// Files can be dropped anywhere on the form; each goes to the image or the speech by its type.
ui.form.addEventListener("dragover", (event) => {
  if (!event.dataTransfer.types.includes("Files")) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
  for (const zone of ui.form.querySelectorAll(".drop-zone")) zone.classList.toggle("dragging", zone.contains(event.target));
});
ui.form.addEventListener("dragleave", (event) => {
  if (!ui.form.contains(event.relatedTarget)) for (const zone of ui.form.querySelectorAll(".drop-zone")) zone.classList.remove("dragging");
});
ui.form.addEventListener("drop", (event) => {
  event.preventDefault();
  for (const zone of ui.form.querySelectorAll(".drop-zone")) zone.classList.remove("dragging");
  const fallback = event.target.closest(".drop-zone")?.dataset.kind ?? "image";
  for (const file of event.dataTransfer.files) setFile(kindOfFile(file, fallback), file);
});
// A file dropped beside the form must not make the browser leave the page (and lose the work).
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

ui.recordButton.addEventListener("click", () => (state.recorder ? stopRecording() : startRecording()));

async function startRecording() {
  clearFieldError("audio");
  if (!MicrophoneRecording.supported()) {
    setFieldError("audio", "This browser cannot record here: recording needs a secure page (https, or http on localhost). Choose a file instead.");
    return;
  }
  const recording = new MicrophoneRecording();
  try {
    await recording.start((seconds) => {
      ui.recordStatus.textContent = `Recording ${formatClock(seconds)}`;
      if (seconds >= state.maxAudioS) stopRecording();
    });
  } catch (error) {
    setFieldError("audio", error.message);
    return;
  }
  state.recorder = recording;
  ui.recordButton.textContent = "Stop recording";
  ui.recordButton.classList.add("recording");
  ui.recordStatus.textContent = "Recording 0:00";
}

async function stopRecording() {
  const recording = state.recorder;
  if (!recording) return;
  state.recorder = null;
  ui.recordButton.textContent = "Record from microphone";
  ui.recordButton.classList.remove("recording");
  ui.recordStatus.textContent = "Converting the recording…";
  try {
    const { file, seconds } = await recording.stop();
    setFile("audio", file, "recorded");
    ui.recordStatus.textContent = `Recorded ${formatClock(seconds)}`;
  } catch (error) {
    ui.recordStatus.textContent = "";
    setFieldError("audio", `The recording could not be used (${error.message || error.name}). Try again, or choose a file.`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The form

/** The request's fields, or null after marking what is missing or wrong. */
function checkForm() {
  const problems = [];
  const prompt = ui.promptInput.value.trim();
  if (!prompt) problems.push(["prompt", "Type a prompt that describes the video."]);
  if (!state.files.image) problems.push(["image", "Choose or drop a face image."]);
  if (state.recorder) problems.push(["audio", "Stop the recording first."]);
  else if (!state.files.audio) problems.push(["audio", "Choose, drop or record a speech file."]);
  const steps = Number(ui.stepsInput.value);
  if (ui.stepsInput.value === "" || !Number.isInteger(steps) || steps < 1 || steps > 100) {
    problems.push(["steps", "Steps must be a whole number from 1 to 100."]);
  }
  const seedText = ui.seedInput.value.trim();
  const seed = Number(seedText);
  if (ui.seedInput.validity.badInput || (seedText !== "" && (!Number.isInteger(seed) || seed < 0 || seed > MAX_SEED))) {
    problems.push(["seed", `The seed must be a whole number from 0 to ${MAX_SEED}, or empty for a random one.`]);
  }
  for (const [name, message] of problems) setFieldError(name, message);
  if (problems.length) {
    FIELDS[problems[0][0]].input.focus();
    return null;
  }
  return { prompt, steps, seed: seedText === "" ? null : seed };
}

async function requestBody(fields) {
  const [image, audio] = await Promise.all([readAsDataUrl(state.files.image), readAsDataUrl(state.files.audio)]);
  const body = { prompt: fields.prompt, image_base64: image, audio_base64: audio, num_steps: fields.steps };
  if (fields.seed !== null) body.seed = fields.seed;
  return body;
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  generate();
});
ui.stopButton.addEventListener("click", () => stop());
ui.downloadButton.addEventListener("click", () => download());

// ---------------------------------------------------------------------------------------------------------
// One request: stream, play, report

function resetOutput() {
  ui.errorBox.hidden = true;
  ui.playHint.hidden = true;
  ui.segmentList.replaceChildren();
  ui.segmentProgress.value = 0;
  ui.segmentProgress.max = 1;
  ui.segmentProgressText.textContent = "–";
  ui.stepProgress.value = 0;
  ui.stepProgress.max = 1;
  ui.stepProgressText.textContent = "–";
  for (const fact of Object.values(ui.facts)) fact.textContent = "–";
  if (state.download) URL.revokeObjectURL(state.download.url);
  state.download = null;
}

function setBusy(busy) {
  const stopHadFocus = document.activeElement === ui.stopButton;
  ui.generateButton.disabled = busy;
  ui.stopButton.disabled = !busy;
  ui.downloadButton.disabled = busy || !state.download;
  if (busy && document.activeElement === ui.generateButton) ui.stopButton.focus();
  if (!busy && stopHadFocus) (state.download ? ui.downloadButton : ui.generateButton).focus();
}

function busy() {
  return Boolean(state.run && !state.run.done);
}

async function generate() {
  if (busy()) return;
  clearErrors();
  const fields = checkForm();
  if (!fields) {
    setStatus("Fix the marked fields, then press Generate.");
    return;
  }
  resetOutput();
  state.run?.player?.dispose();
  clearVideo(ui.video);
  const run = {
    controller: new AbortController(),
    startedAt: performance.now(),
    player: null, // a StreamPlayer once the service accepted the request
    info: null, // the start event
    segments: [], // {bytes, startFrame, numFrames}
    items: [], // the segment list's <li> per segment
    firstSegmentS: null,
    playbackS: null,
    outcome: null, // "complete", "error", "stopped"
    stopped: false, // the Stop button was pressed
    done: false,
    requestId: null, // from the first event: what to resume or cancel
    lastEventId: "", // the id of the last event received, to resume after it
  };
  state.run = run;
  setBusy(true);
  setStatus("Sending the request…");
  try {
    const body = await requestBody(fields);
    const request = fetch("/generate-stream", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", "X-Request-ID": newRequestId(), ...authHeaders(ui.apiKeyInput) },
      body: JSON.stringify(body),
      signal: run.controller.signal,
    });
    const response = await overNetwork(request, "The request could not be sent");
    if (!response.ok) {
      await showHttpError(response);
      run.outcome = "error";
      return;
    }
    checkEventStream(response);
    run.requestId = response.headers.get("X-Request-ID"); // before the first event: Stop can cancel it at once
    run.player = new StreamPlayer(ui.video, (error) => playbackFailed(run, error));
    if (run.player.failed) playbackFailed(run, run.player.failed); // no Media Source Extensions at all
    setStatus("Waiting for the service to start…");
    await follow(run, response);
  } catch (error) {
    if (run.outcome) {
      // complete or failed already: what came after (a Stop pressed at the last moment) changes nothing
    } else if (run.stopped) {
      run.outcome = "stopped";
      const total = run.info ? ` of ${run.info.total_segments}` : "";
      setStatus(`Stopped after ${run.segments.length}${total} segments. The request was cancelled.`);
    } else {
      run.outcome = "error";
      showError(error.title || "Something went wrong", error.message || String(error));
      setStatus(`${error.title || "Something went wrong"}.`);
    }
  } finally {
    if (run.outcome !== "complete") {
      const why = run.outcome === "stopped" ? "stopped" : "failed";
      run.items.slice(run.segments.length).forEach((item, i) => (item.textContent = `Segment ${run.segments.length + i + 1}: not made (${why})`));
    }
    run.controller.abort(); // after an unexpected error: close the connection, so the service stops too
    run.player?.end(); // whatever arrived plays to its end
    run.done = true;
    setBusy(false);
  }
}

function checkEventStream(response) {
  if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
    throw new Problem("Unexpected answer", `The service answered with ${response.headers.get("Content-Type") || "no content type"} instead of an event stream.`);
  }
}

/** Reads the stream to its end, resuming after drops; what has been received and played is kept. */
async function follow(run, response) {
  const reading = readResuming(response, run, {
    onEvent: (event) => handleEvent(run, event),
    finished: () => Boolean(run.outcome),
    headers: () => authHeaders(ui.apiKeyInput),
    check: checkEventStream,
    onRetry: (attempt) => setStatus(`The connection was lost; resuming (try ${attempt} of ${RESUME_TRIES})…`),
  });
  const { incomplete, refused } = await overNetwork(reading, "The connection to the service was lost");
  if (refused) {
    await showHttpError(refused);
    run.outcome = "error";
  }
  if (!run.outcome) {
    run.outcome = "error";
    showError(
      "The stream ended too early",
      `The connection closed before the video was complete (${run.segments.length} of ${run.info?.total_segments ?? "?"} segments).`,
      incomplete ? "The last event was cut off." : run.requestId ? `It could not be resumed (request ${run.requestId}).` : "",
    );
    setStatus("The stream ended too early.");
  }
}

function stop() {
  if (!busy()) return;
  setStatus("Stopping…");
  const run = state.run;
  run.stopped = true;
  if (run.requestId) {
    // the service would otherwise keep the request for a while, for a resume that will not come
    fetch(`/streams/${encodeURIComponent(run.requestId)}`, { method: "DELETE", headers: authHeaders(ui.apiKeyInput), keepalive: true }).catch(() => {});
  }
  run.controller.abort();
}

async function showHttpError(response) {
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {
    // not the service's JSON (a proxy's page, say): the status says what happened
  }
  const title = HTTP_TITLES[response.status] || "The service answered with an error";
  const message = error?.message || `HTTP ${response.status} ${response.statusText}`.trim();
  const details = [`HTTP ${response.status}`];
  if (error?.code) details.push(`code ${error.code}`);
  if (error?.field) details.push(`field ${error.field}`);
  const retryAfter = response.headers.get("Retry-After");
  if (retryAfter) details.push(`try again in ${retryAfter} s`);
  showError(title, message, details.join(", "));
  const field = error?.field && fieldForRequestField(error.field);
  if (field) setFieldError(field, message);
  setStatus(`${title}.`);
}

function handleEvent(run, event) {
  if (run.outcome) return; // nothing counts after complete or error
  if (event.id) {
    run.lastEventId = event.id;
    run.requestId = event.id.slice(0, event.id.lastIndexOf(":"));
  }
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    throw new Problem("The stream could not be read", `The service sent an unreadable ${event.type} event.`);
  }
  const handler = { queued: onQueued, start: onStart, progress: onProgress, segment: onSegment, complete: onComplete, error: onStreamError }[event.type];
  try {
    handler?.(run, data);
  } catch (error) {
    throw error instanceof Problem ? error : new Problem("The stream could not be used", `A ${event.type} event could not be handled: ${error.message}`);
  }
}

function onQueued(run, queued) {
  ui.facts.request.textContent = queued.request_id;
  const ahead = Number.isInteger(queued.ahead) ? ` (${queued.ahead} ${queued.ahead === 1 ? "request" : "requests"} ahead)` : "";
  setStatus(`Queued: every generator is busy; waiting for a free one${ahead}…`);
}

function onStart(run, info) {
  run.info = info;
  run.player.setDuration(info.duration_s);
  ui.video.style.aspectRatio = `${info.width} / ${info.height}`;
  ui.facts.video.textContent = `${info.width}×${info.height}, ${info.num_frames} frames, ${formatSeconds(info.duration_s)}, ${info.total_segments} segments (${info.backend} backend)`;
  ui.facts.seed.textContent = String(info.seed);
  ui.facts.request.textContent = info.request_id;
  ui.segmentProgress.max = info.total_segments;
  ui.segmentProgressText.textContent = `0 of ${info.total_segments}`;
  ui.stepProgress.max = info.num_steps;
  run.items = Array.from({ length: info.total_segments }, (_, index) => {
    const item = document.createElement("li");
    item.textContent = `Segment ${index + 1}: waiting`;
    return item;
  });
  ui.segmentList.replaceChildren(...run.items);
  setStatus(`Generating ${info.total_segments} segments…`);
}

function onProgress(run, progress) {
  const total = run.info?.total_segments ?? "?";
  ui.stepProgress.max = progress.num_steps;
  ui.stepProgress.value = progress.step;
  ui.stepProgressText.textContent = `Segment ${progress.segment_index + 1} of ${total}: step ${progress.step} of ${progress.num_steps}`;
  const item = run.items[progress.segment_index];
  if (item) item.textContent = `Segment ${progress.segment_index + 1}: making it, step ${progress.step} of ${progress.num_steps}`;
}

function onSegment(run, segment) {
  if (segment.segment_index !== run.segments.length) {
    throw new Problem("The stream could not be used", `Segment ${segment.segment_index + 1} arrived when segment ${run.segments.length + 1} was expected.`);
  }
  const bytes = base64ToBytes(segment.segment_base64);
  const arrivedS = (performance.now() - run.startedAt) / 1000;
  run.segments.push({ bytes, startFrame: segment.start_frame, numFrames: segment.num_frames });
  const received = run.segments.length;
  const total = segment.total_segments;
  ui.segmentProgress.max = total;
  ui.segmentProgress.value = received;
  ui.segmentProgressText.textContent = `${received} of ${total}`;
  const item = run.items[segment.segment_index];
  const frames = `frames ${segment.start_frame}–${segment.start_frame + segment.num_frames - 1}`;
  if (item) item.textContent = `Segment ${received}: received after ${formatSeconds(arrivedS)} (${frames}, ${formatBytes(bytes.length)})`;
  if (received === 1) {
    run.firstSegmentS = arrivedS;
    ui.facts.firstSegment.textContent = formatSeconds(arrivedS);
  }
  setStatus(received < total ? `Segment ${received} of ${total} received; generating the rest…` : `All ${total} segments received.`);
  const mimeType = `${segment.mime_type || "video/mp4"}; codecs="${segment.codecs || "avc1.64001f,mp4a.40.2"}"`;
  run.player.append(bytes, segment.start_frame / segment.fps, mimeType).then(() => {
    if (run.player.failed) return;
    if (item) {
      item.dataset.buffered = "true";
      item.append(", buffered");
    }
    if (received === 1 && state.run === run && !run.stopped) startPlayback(run);
  });
}

function onComplete(run, summary) {
  run.outcome = "complete";
  run.player.end();
  const totalS = (performance.now() - run.startedAt) / 1000;
  ui.facts.total.textContent = `${formatSeconds(totalS)} (${formatSeconds(summary.elapsed_s)} on the service)`;
  try {
    const parts = joinSegments(run.segments, run.info.fps);
    const url = URL.createObjectURL(new Blob(parts, { type: "video/mp4" }));
    state.download = { url, name: `avatar-${run.info.seed}.mp4` };
  } catch (error) {
    showError("The video cannot be offered for download", error.message);
  }
  setStatus(`Done: ${summary.total_segments} segments, ${formatSeconds(summary.duration_s)} of video in ${formatSeconds(totalS)}.${state.download ? " You can download it." : ""}`);
}

function onStreamError(run, data) {
  run.outcome = "error";
  const error = data.error || {};
  const title = error.code === "queue_timeout" ? "No generator became free in time" : "The generation failed";
  const when = run.info ? `after ${run.segments.length} of ${run.info.total_segments} segments` : "while the request was queued";
  showError(title, error.message || "The service reported an error without a message.", `${error.code ? `code ${error.code}, ` : ""}${when}`);
  setStatus(`${title}.`);
}

function startPlayback(run) {
  const playing = ui.video.play();
  playing?.catch((error) => {
    if (state.run !== run) return;
    // Autoplay with sound is blocked without a recent click: the user presses play instead.
    if (error.name !== "AbortError") ui.playHint.hidden = false;
  });
}

function playbackFailed(run, error) {
  if (state.run !== run) return;
  showError("The video cannot be played here", error.message, "The generation goes on; download the video when it is complete.");
}

ui.video.addEventListener("playing", () => {
  ui.playHint.hidden = true;
  const run = state.run;
  if (run && run.playbackS === null) {
    run.playbackS = (performance.now() - run.startedAt) / 1000;
    ui.facts.playback.textContent = formatSeconds(run.playbackS);
  }
});

function download() {
  if (!state.download) return;
  const link = document.createElement("a");
  link.href = state.download.url;
  link.download = state.download.name;
  document.body.append(link);
  link.click();
  link.remove();
}

// ---------------------------------------------------------------------------------------------------------
// The service's state and defaults

async function checkService() {
  try {
    const response = await fetch("/health", { headers: { Accept: "application/json", ...authHeaders(ui.apiKeyInput) } });
    const health = await response.json();
    if (ui.stepsInput.value === "" && health.defaults?.num_steps) ui.stepsInput.value = health.defaults.num_steps;
    if (health.limits?.max_audio_s) state.maxAudioS = health.limits.max_audio_s;
    const backend = health.backend ? ` (${health.backend} backend)` : "";
    ui.serviceStatus.textContent = response.ok
      ? `The service is ready${backend}${health.queued ? ` but busy: ${health.queued} waiting, a request may wait` : ""}.`
      : `The service is ${health.status || "not ready"}${backend}${health.error ? `: ${health.error}` : ""}. Generating may fail until it is ready.`;
  } catch {
    ui.serviceStatus.textContent = "The service cannot be reached. Check that it is running, then reload the page.";
  }
  if (ui.stepsInput.value === "") ui.stepsInput.value = "4";
}

checkService();
