// One downloadable MP4 from the stream's segments, without re-encoding.
//
// Each segment is a standalone fragmented MP4 (ftyp, moov, moof + mdat pairs, an optional mfra index) whose
// timestamps start at 0. Concatenating the bytes would not make a valid file, but the segments share one
// codec configuration, so the joined file is: segment 0's ftyp and moov, then every segment's moof + mdat
// pairs with each track fragment's decode time (tfdt) moved to where the segment starts and the fragment
// sequence numbers (mfhd) renumbered. Everything else (mfra, sidx, free space) is left out, and an mehd box
// gives players the whole duration up front.

/** The boxes in bytes[start, end): {type, start, end, body} (body: offset after the header). */
export function boxes(bytes, start = 0, end = bytes.length) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const found = [];
  let offset = start;
  while (offset + 8 <= end) {
    let size = view.getUint32(offset);
    const type = String.fromCharCode(...bytes.subarray(offset + 4, offset + 8));
    let body = offset + 8;
    if (size === 1) {
      size = Number(view.getBigUint64(offset + 8));
      body += 8;
    } else if (size === 0) {
      size = end - offset; // to the end of the enclosing box or file
    }
    if (size < body - offset || offset + size > end) throw new Mp4Error(`the ${type} box at byte ${offset} is cut short or malformed`);
    found.push({ type, start: offset, end: offset + size, body });
    offset += size;
  }
  if (offset !== end) throw new Mp4Error(`${end - offset} stray bytes at byte ${offset}`);
  return found;
}

export class Mp4Error extends Error {
  constructor(message) {
    super(message);
    this.name = "Mp4Error";
  }
}

function child(bytes, parent, type) {
  return boxes(bytes, parent.body, parent.end).find((box) => box.type === type);
}

function children(bytes, parent, type) {
  return boxes(bytes, parent.body, parent.end).filter((box) => box.type === type);
}

function view(bytes) {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A full box's field: version 1 boxes hold 64-bit times where version 0 boxes hold 32-bit ones. */
function fullBoxVersion(bytes, box) {
  return bytes[box.body];
}

/** Per track ID: the media timescale (mdhd) and the sample descriptions (stsd bytes, to compare). */
function describeTracks(bytes, moov) {
  const tracks = new Map();
  for (const trak of children(bytes, moov, "trak")) {
    const tkhd = child(bytes, trak, "tkhd");
    const mdia = child(bytes, trak, "mdia");
    const mdhd = mdia && child(bytes, mdia, "mdhd");
    const stbl = mdia && findPath(bytes, mdia, ["minf", "stbl"]);
    const stsd = stbl && child(bytes, stbl, "stsd");
    if (!tkhd || !mdhd || !stsd) throw new Mp4Error("a track lacks its tkhd, mdhd or stsd box");
    const id = view(bytes).getUint32(tkhd.body + (fullBoxVersion(bytes, tkhd) === 1 ? 20 : 12));
    const timescale = view(bytes).getUint32(mdhd.body + (fullBoxVersion(bytes, mdhd) === 1 ? 20 : 12));
    tracks.set(id, { timescale, stsd: bytes.subarray(stsd.start, stsd.end) });
  }
  if (!tracks.size) throw new Mp4Error("the first segment has no tracks");
  return tracks;
}

function findPath(bytes, box, path) {
  for (const type of path) {
    box = box && child(bytes, box, type);
  }
  return box;
}

function sameBytes(a, b) {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}

function topLevel(bytes, index) {
  const found = boxes(bytes);
  const ftyp = found.find((box) => box.type === "ftyp");
  const moov = found.find((box) => box.type === "moov");
  if (!ftyp || !moov) throw new Mp4Error(`segment ${index} is not an MP4 (no ftyp or moov box)`);
  return { ftyp, moov, fragments: found.filter((box) => box.type === "moof" || box.type === "mdat") };
}

/** A copy of a moof with its sequence number and track decode times moved: the box sizes stay the same. */
function shiftedMoof(bytes, moof, sequence, startFrame, fps, tracks, index) {
  const copy = bytes.slice(moof.start, moof.end);
  const shifted = { ...moof, start: 0, end: copy.length, body: moof.body - moof.start };
  const data = view(copy);
  const mfhd = child(copy, shifted, "mfhd");
  if (!mfhd) throw new Mp4Error(`segment ${index}: a moof has no mfhd`);
  data.setUint32(mfhd.body + 4, sequence);
  for (const traf of children(copy, shifted, "traf")) {
    const tfhd = child(copy, traf, "tfhd");
    const tfdt = child(copy, traf, "tfdt");
    if (!tfhd || !tfdt) throw new Mp4Error(`segment ${index}: a track fragment has no tfhd or tfdt`);
    const track = tracks.get(data.getUint32(tfhd.body + 4));
    if (!track) throw new Mp4Error(`segment ${index}: a fragment of a track that the first segment lacks`);
    // Where the segment starts, in this track's timescale: floor(start_frame * timescale / fps), as the server
    // cut the audio (video timescales are multiples of the frame rate, so theirs is exact).
    const offset = (BigInt(startFrame) * BigInt(track.timescale)) / BigInt(fps);
    if (fullBoxVersion(copy, tfdt) === 1) {
      data.setBigUint64(tfdt.body + 4, data.getBigUint64(tfdt.body + 4) + offset);
    } else {
      const time = BigInt(data.getUint32(tfdt.body + 4)) + offset;
      if (time > 0xffffffffn) throw new Mp4Error(`segment ${index}: a decode time does not fit a version 0 tfdt`);
      data.setUint32(tfdt.body + 4, Number(time));
    }
  }
  return copy;
}

function box(type, ...parts) {
  const size = 8 + parts.reduce((sum, part) => sum + part.length, 0);
  const out = new Uint8Array(size);
  view(out).setUint32(0, size);
  out.set([...type].map((c) => c.charCodeAt(0)), 4);
  let offset = 8;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Segment 0's moov with an mehd (fragment duration: the whole video, in the movie timescale) in its mvex. */
function moovWithDuration(bytes, moov, durationFrames, fps) {
  const mvhd = child(bytes, moov, "mvhd");
  const mvex = child(bytes, moov, "mvex");
  if (!mvhd || !mvex) return bytes.slice(moov.start, moov.end);
  const timescale = view(bytes).getUint32(mvhd.body + (fullBoxVersion(bytes, mvhd) === 1 ? 20 : 12));
  const duration = (BigInt(durationFrames) * BigInt(timescale) + BigInt(fps) - 1n) / BigInt(fps);
  const mehdBody = new Uint8Array(12); // version 1, flags 0, 64-bit fragment_duration
  mehdBody[0] = 1;
  view(mehdBody).setBigUint64(4, duration);
  const mvexChildren = boxes(bytes, mvex.body, mvex.end).filter((b) => b.type !== "mehd");
  const newMvex = box("mvex", box("mehd", mehdBody), ...mvexChildren.map((b) => bytes.subarray(b.start, b.end)));
  const moovChildren = boxes(bytes, moov.body, moov.end).map((b) => (b.type === "mvex" ? newMvex : bytes.subarray(b.start, b.end)));
  return box("moov", ...moovChildren);
}

/**
 * segments: [{bytes: Uint8Array, startFrame, numFrames}] in order; fps: the frame rate (an integer).
 * Returns the parts of one fragmented MP4 (for a Blob); throws Mp4Error when the segments cannot be joined.
 */
export function joinSegments(segments, fps) {
  if (!segments.length) throw new Mp4Error("there are no segments to join");
  if (!Number.isInteger(fps) || fps <= 0) throw new Mp4Error(`the frame rate ${fps} is not a whole number`);
  const first = topLevel(segments[0].bytes, 0);
  const tracks = describeTracks(segments[0].bytes, first.moov);
  const totalFrames = segments.reduce((sum, segment) => sum + segment.numFrames, 0);
  const parts = [
    segments[0].bytes.subarray(first.ftyp.start, first.ftyp.end),
    moovWithDuration(segments[0].bytes, first.moov, totalFrames, fps),
  ];
  let sequence = 0;
  segments.forEach((segment, index) => {
    const { bytes } = segment;
    const layout = index === 0 ? first : topLevel(bytes, index);
    if (index > 0) {
      for (const [id, track] of describeTracks(bytes, layout.moov)) {
        const known = tracks.get(id);
        if (!known || !sameBytes(known.stsd, track.stsd) || known.timescale !== track.timescale) {
          throw new Mp4Error(`segment ${index} is encoded differently from segment 0 (track ${id}), so they cannot be joined`);
        }
      }
    }
    for (const fragment of layout.fragments) {
      if (fragment.type === "moof") {
        sequence += 1;
        parts.push(shiftedMoof(bytes, fragment, sequence, segment.startFrame, fps, tracks, index));
      } else {
        parts.push(bytes.subarray(fragment.start, fragment.end));
      }
    }
  });
  return parts;
}
