// Small helpers of the page: numbers and times in words, base64, reading a file, failures with a title.

export function formatSeconds(seconds) {
  return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
}

export function formatBytes(bytes) {
  if (bytes < 1000) return `${bytes} bytes`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(0)} kB`;
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

export function formatClock(seconds) {
  const whole = Math.floor(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

export function base64ToBytes(text) {
  if (Uint8Array.fromBase64) return Uint8Array.fromBase64(text);
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Problem("A file could not be read", `${file.name} could not be read (${reader.error?.name || "error"}). Choose it again.`));
    reader.readAsDataURL(file);
  });
}

/** A failure with a title and a message for the user. */
export class Problem extends Error {
  constructor(title, message) {
    super(message);
    this.title = title;
  }
}

/** fetch() and reads of its body fail with a TypeError when the network does: say so in words. */
export async function overNetwork(promise, what) {
  try {
    return await promise;
  } catch (error) {
    if (error.name === "AbortError" || error instanceof Problem) throw error;
    throw new Problem("The service could not be reached", `${what} (${error.message}). Check that the service is running, then try again.`);
  }
}
