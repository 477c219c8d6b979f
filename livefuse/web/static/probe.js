// Frame-counter probe for the browser test and the latency benchmark (not loaded by the
// demo page). The fake camera clip (livefuse/testing/fakecam.py) carries a 16-bit counter;
// this reads it from the local preview and the returned video, with the same geometry.
//   lfProbe.start({keepImages})  watch both videos (keepImages: keep local frames for pair())
//                                counters older than maxAgeMs (1500) are not matched: the
//                                clip loops, and a counter seen one loop ago is not this one
//   lfProbe.latencies()          ms from a counter's local display to its returned display
//   lfProbe.pair()               {counter, local, remote}: PNG data URLs of one clip frame
"use strict";

window.lfProbe = (() => {
  const local = document.getElementById("local");
  const remote = document.getElementById("remote");
  const BITS = 16;
  const shownAt = new Map();    // counter → when the local preview showed it
  const images = new Map();     // counter → local ImageData (keepImages only)
  const latencies = [];
  let keep = false;
  let maxAge = 1500;

  // Coordinates are the clip's own (the local preview's size); a returned stream that
  // arrives smaller is scaled up to them.
  const clipSize = () => [local.videoWidth, local.videoHeight];

  function geometry(w, h) {
    const b = Math.max(8, Math.floor(w / 40));
    return [Math.floor(b / 2), h - 2 * b - Math.floor(b / 2), b];
  }

  function context(w, h) {
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    return canvas.getContext("2d", { willReadFrequently: true });
  }

  const band = context(2, 2);

  // Draw only the counter's band of ``source`` (a video or a canvas, ``sw``×``sh`` pixels)
  // and read the bits from it: cheap even at 720p.
  function counterOf(source, sw = source.videoWidth, sh = source.videoHeight) {
    const [w, h] = clipSize();
    const [x0, y0, b] = geometry(w, h);
    const sx = sw / w;
    const sy = sh / h;
    const bw = BITS * b;
    if (band.canvas.width !== bw || band.canvas.height !== 2 * b) {
      band.canvas.width = bw;
      band.canvas.height = 2 * b;
    }
    band.drawImage(source, x0 * sx, y0 * sy, bw * sx, 2 * b * sy, 0, 0, bw, 2 * b);
    const data = band.getImageData(0, 0, bw, 2 * b).data;
    const m = Math.floor(b / 4);
    const mean = (x, y) => {
      let sum = 0;
      let n = 0;
      for (let yy = y + m; yy < y + b - m; yy++) {
        for (let xx = x + m; xx < x + b - m; xx++) {
          const i = 4 * (yy * bw + xx);
          sum += (data[i] + data[i + 1] + data[i + 2]) / 3;
          n++;
        }
      }
      return sum / n;
    };
    let value = 0;
    for (let bit = 0; bit < BITS; bit++) {
      const top = mean(bit * b, 0);
      const bottom = mean(bit * b, b);
      if (Math.abs(top - bottom) < 60) return -1;
      if (top > bottom) value |= 1 << bit;
    }
    return value;
  }

  function frameOf(video) {
    const [w, h] = clipSize();
    const ctx = context(w, h);
    ctx.drawImage(video, 0, 0, w, h);
    return ctx.getImageData(0, 0, w, h);
  }

  // The counter and the kept pixels must come from one draw: the video may move on to its
  // next frame between two.
  function asCanvas(imageData) {
    const ctx = context(imageData.width, imageData.height);
    ctx.putImageData(imageData, 0, 0);
    return ctx.canvas;
  }

  function watchLocal(now) {
    if (local.videoWidth) {
      const frame = keep ? frameOf(local) : null;
      const c = frame ? counterOf(asCanvas(frame), frame.width, frame.height) : counterOf(local);
      if (c >= 0) {
        shownAt.set(c, now);
        if (frame) {
          images.set(c, frame);
          if (images.size > 90) images.delete(images.keys().next().value);
        }
      }
    }
    local.requestVideoFrameCallback(watchLocal);
  }

  function watchRemote(now) {
    if (local.videoWidth && remote.videoWidth) {
      const c = counterOf(remote);
      const age = c >= 0 && shownAt.has(c) ? now - shownAt.get(c) : -1;
      if (age >= 0 && age < maxAge) latencies.push(age);
    }
    remote.requestVideoFrameCallback(watchRemote);
  }

  function toUrl(imageData) {
    const ctx = context(imageData.width, imageData.height);
    ctx.putImageData(imageData, 0, 0);
    return ctx.canvas.toDataURL("image/png");
  }

  return {
    start({ keepImages = false, maxAgeMs = 1500 } = {}) {
      keep = keepImages;
      maxAge = maxAgeMs;
      local.requestVideoFrameCallback(watchLocal);
      remote.requestVideoFrameCallback(watchRemote);
    },
    latencies: () => latencies.slice(),
    clear() { latencies.length = 0; },
    pair() {
      if (!local.videoWidth || !remote.videoWidth) return null;
      const frame = frameOf(remote);
      const c = counterOf(asCanvas(frame), frame.width, frame.height);
      if (c < 0 || !images.has(c)) return null;
      return { counter: c, local: toUrl(images.get(c)), remote: toUrl(frame) };
    },
  };
})();
