// Speech from the microphone, as a WAV file the service accepts (browsers record WebM/Ogg, which it does not).

import { decodeToMono, encodeWav } from "./wav.js";

const OPEN_ERRORS = {
  NotAllowedError: "Microphone access was denied. Allow it in the browser's site settings, or choose a file.",
  NotFoundError: "No microphone was found. Connect one, or choose a file.",
};

/** One recording: start(), then stop() gives a WAV File. Errors carry a message meant for the user. */
export class MicrophoneRecording {
  static supported() {
    return Boolean(navigator.mediaDevices?.getUserMedia && window.MediaRecorder);
  }

  /** Opens the microphone and starts recording; onTick(seconds) is called about four times a second. */
  async start(onTick) {
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      throw new Error(OPEN_ERRORS[error.name] || `The microphone could not be opened: ${error.message || error.name}.`);
    }
    this.recorder = new MediaRecorder(this.stream);
    this.chunks = [];
    this.recorder.addEventListener("dataavailable", (event) => event.data.size && this.chunks.push(event.data));
    this.stopped = new Promise((resolve) => this.recorder.addEventListener("stop", resolve, { once: true }));
    const started = performance.now();
    this.timer = setInterval(() => onTick((performance.now() - started) / 1000), 250);
    this.recorder.start(1000);
  }

  /** Stops recording and releases the microphone; resolves to { file, seconds }. */
  async stop() {
    clearInterval(this.timer);
    this.recorder.stop();
    await this.stopped;
    for (const track of this.stream.getTracks()) track.stop();
    const recording = new Blob(this.chunks, { type: this.recorder.mimeType });
    const { samples, rate } = await decodeToMono(recording);
    if (!samples.length) throw new Error("the recording is empty");
    return { file: new File([encodeWav(samples, rate)], "recording.wav", { type: "audio/wav" }), seconds: samples.length / rate };
  }
}
