// Server-Sent Events over any readable byte stream. EventSource can only GET, and /generate-stream is a POST,
// so the page reads the fetch body itself and parses it as the HTML standard's "event stream interpretation"
// says: lines end in CRLF, LF or CR; a blank line dispatches; ":" starts a comment; "data" lines join with LF.

/** Incremental parser: push() text as it arrives, get the complete events back. */
export class SseParser {
  constructor() {
    this.pieces = []; // the current, unfinished line (a segment's data line arrives in many chunks)
    this.skipLineFeed = false; // the last chunk ended in CR: a LF that starts the next one belongs to it
    this.type = "";
    this.data = [];
    this.lastEventId = ""; // the standard's "last event ID buffer": kept until an id field changes it
  }

  /** Parses a chunk of text; returns the events it completed, as {type, data, id}. */
  push(text) {
    const events = [];
    let start = 0;
    if (this.skipLineFeed && text.startsWith("\n")) start = 1;
    this.skipLineFeed = false;
    const lineEnd = /\r\n|\r|\n/g;
    lineEnd.lastIndex = start;
    for (let match = lineEnd.exec(text); match; match = lineEnd.exec(text)) {
      this.pieces.push(text.slice(start, match.index));
      start = lineEnd.lastIndex;
      if (match[0] === "\r" && start === text.length) this.skipLineFeed = true;
      const line = this.pieces.join("");
      this.pieces = [];
      const event = this.line(line);
      if (event) events.push(event);
    }
    if (start < text.length) this.pieces.push(text.slice(start));
    return events;
  }

  /** True when the stream stopped in the middle of an event (which the standard says to drop). */
  get incomplete() {
    return this.pieces.length > 0 || this.data.length > 0 || this.type !== "";
  }

  line(line) {
    if (line === "") {
      const event = this.data.length ? { type: this.type || "message", data: this.data.join("\n"), id: this.lastEventId } : null;
      this.type = "";
      this.data = [];
      return event;
    }
    if (line.startsWith(":")) return null; // a comment, e.g. ": keep-alive"
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value; // where to resume after a drop
    return null; // "retry" is for EventSource's own reconnection, which this page does itself
  }
}

/**
 * Reads a response body to its end, calling onEvent({type, data, id}) for each event in order.
 * Resolves to {incomplete}: whether the body ended inside an event. Rejects with the reader's error
 * (an AbortError after the request's AbortController fired).
 */
export async function readEventStream(body, onEvent) {
  const parser = new SseParser();
  const decoder = new TextDecoder(); // UTF-8; drops a leading BOM as the standard asks
  const reader = body.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      const text = done ? decoder.decode() : decoder.decode(value, { stream: true });
      for (const event of parser.push(text)) await onEvent(event);
      if (done) return { incomplete: parser.incomplete };
    }
  } finally {
    reader.releaseLock();
  }
}
