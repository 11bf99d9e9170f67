// Plays the stream's segments while they arrive: every segment goes into one Media Source buffer, in order.
//
// Each segment is a standalone fragmented MP4 whose timestamps start at 0, and its audio packets sit at
// their exact offsets from the segment's start (one continuous AAC encode cut between segments). In
// "segments" mode with timestampOffset = start_frame / fps, every sample lands at its global time, so the
// audio joins without gaps and stays in sync across segment boundaries.

const MediaSourceClass = window.MediaSource || window.ManagedMediaSource; // ManagedMediaSource: Safari on iOS

export class PlaybackError extends Error {
  constructor(message) {
    super(message);
    this.name = "PlaybackError";
  }
}

/** Empties a video element: no source, no spinner. */
export function clearVideo(video) {
  video.removeAttribute("src");
  video.load();
}

export class StreamPlayer {
  /** video: the <video> element; onError(PlaybackError): called once when playback cannot go on. */
  constructor(video, onError) {
    this.video = video;
    this.onError = onError;
    this.failed = null;
    this.sourceBuffer = null;
    if (!MediaSourceClass) {
      this.failed = new PlaybackError("This browser cannot play a video while it is being made (no Media Source Extensions).");
      this.queue = Promise.resolve();
      return;
    }
    this.mediaSource = new MediaSourceClass();
    this.url = URL.createObjectURL(this.mediaSource);
    video.disableRemotePlayback = true; // ManagedMediaSource plays only with remote playback off
    video.src = this.url;
    // Every operation waits for the one before: appends must not overlap, and they must stay in order.
    this.queue = new Promise((resolve) => this.mediaSource.addEventListener("sourceopen", resolve, { once: true }));
  }

  get supported() {
    return Boolean(MediaSourceClass);
  }

  /** Sets the expected duration so the seek bar shows the whole video from the start. */
  setDuration(seconds) {
    return this.enqueue(() => {
      if (this.mediaSource.readyState === "open" && Number.isFinite(seconds) && seconds > 0) this.mediaSource.duration = seconds;
    });
  }

  /** Appends one segment at `offsetS` seconds; resolves once it is buffered. */
  append(bytes, offsetS, mimeType) {
    return this.enqueue(async () => {
      if (this.mediaSource.readyState !== "open") throw new PlaybackError("The video player was closed.");
      if (!this.sourceBuffer) {
        if (!MediaSourceClass.isTypeSupported(mimeType)) {
          throw new PlaybackError(`This browser cannot play this video format (${mimeType}). You can still download it when it is complete.`);
        }
        this.sourceBuffer = this.mediaSource.addSourceBuffer(mimeType);
        this.sourceBuffer.mode = "segments";
      }
      this.sourceBuffer.timestampOffset = offsetS;
      try {
        await this.update(() => this.sourceBuffer.appendBuffer(bytes));
      } catch (error) {
        if (error.name !== "QuotaExceededError") throw error;
        // The browser's buffer is full (a long video): drop what was played long ago, then try once more.
        const keepFrom = this.video.currentTime - 10;
        if (keepFrom <= 0) throw new PlaybackError("The browser's video buffer is full. Download the video when it is complete.");
        await this.update(() => this.sourceBuffer.remove(0, keepFrom));
        await this.update(() => this.sourceBuffer.appendBuffer(bytes));
      }
    });
  }

  /** Tells the player that no more segments come, so it plays to the end instead of waiting. */
  end() {
    return this.enqueue(() => {
      if (!this.sourceBuffer) clearVideo(this.video); // nothing arrived: an empty player, not a loading one
      else if (this.mediaSource.readyState === "open") this.mediaSource.endOfStream();
    });
  }

  /** The end of the buffered video, in seconds. */
  get bufferedEnd() {
    const ranges = this.video.buffered;
    return ranges.length ? ranges.end(ranges.length - 1) : 0;
  }

  enqueue(operation) {
    const run = async () => {
      if (this.failed) return;
      try {
        await operation();
      } catch (error) {
        if (this.failed) return;
        this.failed = error instanceof PlaybackError ? error : new PlaybackError(`The video could not be played: ${error.message || error.name}.`);
        this.onError(this.failed);
      }
    };
    this.queue = this.queue.then(run);
    return this.queue;
  }

  /** Waits for one SourceBuffer operation (appendBuffer or remove) to finish. */
  update(start) {
    return new Promise((resolve, reject) => {
      const buffer = this.sourceBuffer;
      const done = () => {
        buffer.removeEventListener("updateend", done);
        buffer.removeEventListener("error", failed);
        resolve();
      };
      const failed = () => {
        buffer.removeEventListener("updateend", done);
        buffer.removeEventListener("error", failed);
        reject(new PlaybackError("The browser could not decode a video segment."));
      };
      buffer.addEventListener("updateend", done);
      buffer.addEventListener("error", failed);
      try {
        start();
      } catch (error) {
        buffer.removeEventListener("updateend", done);
        buffer.removeEventListener("error", failed);
        reject(error);
      }
    });
  }

  /** Detaches the player from the video element (a new request replaces it). */
  dispose() {
    this.failed = this.failed || new PlaybackError("replaced");
    if (this.url) URL.revokeObjectURL(this.url);
  }
}
