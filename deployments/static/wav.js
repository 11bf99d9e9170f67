// Microphone recordings as WAV. MediaRecorder gives WebM/Opus (Chromium) or Ogg/Opus (Firefox); the service
// takes WAV, MP3, FLAC or OGG, so the page decodes the recording and writes 16-bit mono PCM WAV, which every
// decoder reads. 24 kHz keeps speech clear at half the size of 48 kHz (10 minutes: 29 MB).

export const RECORDING_RATE = 24000;

/** Decodes any recording the browser can play into mono samples at `rate`: {samples: Float32Array, rate}. */
export async function decodeToMono(blob, rate = RECORDING_RATE) {
  const encoded = await blob.arrayBuffer();
  // An OfflineAudioContext decodes and resamples to its own rate, and needs no user gesture to exist.
  const context = new OfflineAudioContext(1, 1, rate);
  const audio = await context.decodeAudioData(encoded);
  const samples = new Float32Array(audio.length);
  for (let channel = 0; channel < audio.numberOfChannels; channel += 1) {
    const data = audio.getChannelData(channel);
    for (let i = 0; i < data.length; i += 1) samples[i] += data[i] / audio.numberOfChannels;
  }
  return { samples, rate: audio.sampleRate };
}

/** A RIFF/WAVE file of 16-bit PCM, one channel. */
export function encodeWav(samples, rate) {
  const bytes = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(bytes);
  const text = (offset, value) => [...value].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true); // the fmt chunk's size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // channels
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per sample frame
  view.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((sample, i) => {
    const clipped = Math.max(-1, Math.min(1, sample));
    view.setInt16(44 + i * 2, Math.round(clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff), true);
  });
  return new Blob([bytes], { type: "audio/wav" });
}
