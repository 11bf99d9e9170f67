// Streams that survive a dropped connection: read an event stream, and when the network fails or the body
// ends early, GET /streams/{id} with the Last-Event-ID of the last event received and read on from there.

import { readEventStream } from "./sse.js";

export const RESUME_TRIES = 5; // in a row, waiting 1, 2, 4, 8, 16 s before each

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** An unguessable request id (128 random bits): only who knows it can resume or cancel the request. */
export function newRequestId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/**
 * Reads `response` to its end with onEvent(event), resuming after a drop while `run.requestId` is known.
 * `run` gives requestId, lastEventId, stopped and the AbortController's signal; `finished()` says whether a
 * complete or error event came; `headers()` adds the API key; `check(response)` throws for a body that is
 * not an event stream; `onRetry(try)` is told of each resume.
 * Resolves to {incomplete} once finished or no resume is possible, {gaveUp, incomplete} after RESUME_TRIES
 * failed resumes, or {refused: response} for a 4xx answer to a resume. Rejects with the reader's error when
 * nothing can be resumed, or an AbortError once stopped.
 */
export async function readResuming(response, run, { onEvent, finished, headers, check, onRetry }) {
  let failures = 0;
  let incomplete = false;
  for (;;) {
    try {
      ({ incomplete } = await readEventStream(response.body, onEvent));
      failures = 0;
      if (finished() || !run.requestId) return { incomplete };
    } catch (error) {
      if (finished() || run.stopped || !run.requestId || error.name === "AbortError") throw error;
    }
    if (++failures > RESUME_TRIES) return { incomplete, gaveUp: true };
    onRetry(failures);
    await sleep(1000 * 2 ** (failures - 1));
    if (run.stopped) throw new DOMException("stopped", "AbortError");
    response = await resumed(run, headers());
    if (!response) continue;
    if (!response.ok) return { refused: response };
    check(response);
  }
}

/** GET /streams/{id} after the last event received; null when the network still fails or a 5xx answers. */
async function resumed(run, headers) {
  try {
    const response = await fetch(`/streams/${encodeURIComponent(run.requestId)}`, {
      headers: { Accept: "text/event-stream", "Last-Event-ID": run.lastEventId, ...headers },
      signal: run.controller.signal,
    });
    return response.status >= 500 ? null : response;
  } catch (error) {
    if (error.name === "AbortError") throw error;
    return null;
  }
}
