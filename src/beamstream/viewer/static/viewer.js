// The beamstream viewer's page: asks its server for a frame (GET frame?since=...), draws it, asks for the next.
// One request in flight at a time, the next sent when the page starts drawing the last answer (at a paint), so
// that the server sends what this page can draw and nothing more (beamstream.viewer.app): at most one answer
// waits here while another is drawn. Answers are [u32 header length][JSON header][payload]
// (beamstream.viewer.frames): 8-bit images mapped here through a colour map, float32 waveforms drawn as lines.
// window.beamstreamViewer holds the page's counts, for tests.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const MAPS = {
    viridis: ["440154", "472d7b", "3b528b", "2c728e", "21918c", "28ae80", "5ec962", "addc30", "fde725"],
    magma: ["000004", "1c1044", "4f127b", "812581", "b5367a", "e55064", "fb8861", "fec287", "fcfdbf"],
    gray: ["000000", "ffffff"],
  };
  const RATE_WINDOW_MS = 2000;
  const counts = { drawn: 0, images: 0, waveforms: 0, seq: -1, state: "waiting", version: -1, imageSum: 0,
                   imageSize: [0, 0], fields: [], drawnPerSecond: 0, drawMs: 0 };
  window.beamstreamViewer = counts;

  const token = new URLSearchParams(location.hash.slice(1)).get("token"); // a request service's bearer token
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let since = -1;
  let pending = false;
  let changed = false;
  let received = null; // an answer not drawn yet
  let table = colourTable(MAPS.viridis);
  let pixels = null;
  const drawnAt = [];
  const traces = new Map();

  function colourTable(stops) {
    // 256 colours as little-endian RGBA words, interpolated between the stops.
    const rgb = stops.map((hex) => [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16)));
    const words = new Uint32Array(256);
    for (let v = 0; v < 256; v++) {
      const at = (v / 255) * (rgb.length - 1);
      const low = Math.min(Math.floor(at), rgb.length - 2);
      const t = at - low;
      const [r, g, b] = [0, 1, 2].map((c) => Math.round(rgb[low][c] * (1 - t) + rgb[low + 1][c] * t));
      words[v] = (255 << 24) | (b << 16) | (g << 8) | r;
    }
    return words;
  }

  function number(id) {
    const value = $(id).value.trim();
    return value === "" || !Number.isFinite(Number(value)) ? null : Number(value);
  }

  async function ask() {
    if (pending) return;
    pending = true;
    const query = new URLSearchParams({ since: changed ? -1 : since, scale: $("scale").value, size: shownSize() });
    for (const [key, value] of [["field", $("field").value], ["lo", number("lo")], ["hi", number("hi")]]) {
      if (value !== null && value !== "") query.set(key, value);
    }
    changed = false;
    try {
      const answer = await fetch(`frame?${query}`, { headers, cache: "no-store" });
      if (!answer.ok) throw new Error((await answer.json().catch(() => ({}))).detail || answer.statusText);
      received = await answer.arrayBuffer();
    } catch (error) {
      $("state").textContent = "disconnected";
      $("state").className = "state disconnected";
      $("detail").textContent = String(error.message || error);
      changed = true;
      setTimeout(() => { pending = false; ask(); }, 1000);
      return;
    }
    pending = false;
    requestAnimationFrame(draw); // draw at the next paint, at most one answer per paint: every frame drawn is seen
  }

  function shownSize() {
    // The pixels the image is shown in, across: no more are worth sending.
    return Math.round(($("image").clientWidth || 1024) * (window.devicePixelRatio || 1));
  }

  function again() {
    // The look changed: the next answer comes at once, with the newest event drawn the new way.
    changed = true;
    ask();
  }

  function draw() {
    if (received === null) return;
    const began = performance.now();
    const buffer = received;
    received = null;
    const length = new DataView(buffer).getUint32(0, true);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
    const payload = 4 + length;
    since = header.version;
    ask(); // the server makes the next frame while this one is drawn: one request in flight, one drawn, no more
    showFigures(header);
    if (header.image) showFields(header.images);
    if (header.image) drawImage(header.image, new Uint8Array(buffer, payload + header.image.offset,
                                                             header.image.width * header.image.height));
    for (const wave of header.waveforms) drawTrace(wave, new Float32Array(buffer, payload + wave.offset, wave.length));
    if (header.images.length === 0 && header.waveforms.length) $("image-panel").hidden = true; // waveforms only
    showDrawn(Boolean(header.image || header.waveforms.length));
    counts.drawMs = 0.9 * counts.drawMs + 0.1 * (performance.now() - began); // decoding and drawing, smoothed
  }

  function showFigures(header) {
    counts.state = header.state;
    counts.version = header.version;
    counts.seq = header.seq;
    $("state").textContent = header.state;
    $("state").className = `state ${header.state}`;
    $("rate").textContent = header.state === "live" ? header.rate.toLocaleString() : "–";
    $("seq").textContent = header.seq >= 0 ? header.seq.toLocaleString() : "–";
    $("events").textContent = header.events.toLocaleString();
    $("skipped").textContent = header.skipped.toLocaleString();
    $("detail").textContent = header.detail;
    $("source").textContent = header.where ? `reading ${header.where}` : "";
  }

  function showFields(images) {
    if (images.join("\n") === counts.fields.join("\n")) return;
    counts.fields = images;
    const select = $("field");
    const chosen = select.value;
    select.replaceChildren(...images.map((name) => new Option(name, name, false, name === chosen)));
  }

  function drawImage(image, bytes) {
    const canvas = $("image");
    if (canvas.width !== image.width || canvas.height !== image.height || !pixels) {
      canvas.width = image.width;
      canvas.height = image.height;
      pixels = canvas.getContext("2d").createImageData(image.width, image.height);
    }
    const words = new Uint32Array(pixels.data.buffer);
    let sum = 0;
    for (let i = 0; i < bytes.length; i++) {
      words[i] = table[bytes[i]];
      sum = (sum + bytes[i]) | 0;
    }
    canvas.getContext("2d").putImageData(pixels, 0, 0);
    $("bar-lo").textContent = format(image.lo);
    $("bar-hi").textContent = format(image.hi);
    const [rows, columns] = image.panels;
    const [width, height] = image.of;
    $("image-info").textContent = `${image.name}: ${width}×${height}` +
      (rows * columns > 1 ? ` (${rows}×${columns} panels)` : "") +
      (width > image.width ? `, shown as ${image.width}×${image.height}, each pixel the largest it covers` : "") +
      `, ${image.scale}`;
    counts.images += 1;
    counts.imageSum = sum;
    counts.imageSize = [image.width, image.height];
  }

  function drawBar() {
    const bar = $("bar").getContext("2d");
    const row = bar.createImageData(256, 1);
    new Uint32Array(row.data.buffer).set(table);
    bar.putImageData(row, 0, 0);
  }

  function drawTrace(wave, values) {
    let figure = traces.get(wave.name);
    if (!figure) {
      figure = document.createElement("figure");
      figure.innerHTML = "<figcaption></figcaption><canvas width=\"1000\" height=\"200\"></canvas>";
      figure.dataset.name = wave.name;
      $("waveforms").append(figure);
      traces.set(wave.name, figure);
    }
    const canvas = figure.querySelector("canvas");
    const context = canvas.getContext("2d");
    const [width, height] = [canvas.width, canvas.height];
    const span = wave.hi > wave.lo ? wave.hi - wave.lo : 1;
    context.clearRect(0, 0, width, height);
    context.strokeStyle = "#3a3f48";
    context.strokeRect(0.5, 0.5, width - 1, height - 1);
    context.strokeStyle = "#5ec962";
    context.lineWidth = 1;
    context.beginPath();
    for (let i = 0; i < values.length; i++) {
      const x = (i / Math.max(values.length - 1, 1)) * (width - 1);
      const y = height - 4 - ((values[i] - wave.lo) / span) * (height - 8);
      if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
    }
    context.stroke();
    figure.querySelector("figcaption").textContent =
      `${wave.name}: ${wave.samples.toLocaleString()} samples, ${format(wave.lo)} to ${format(wave.hi)}`;
    counts.waveforms += 1;
  }

  function showDrawn(drew) {
    // Frames drawn per second over the last RATE_WINDOW_MS.
    const now = performance.now();
    if (drew) {
      counts.drawn += 1;
      drawnAt.push(now);
    }
    while (drawnAt.length && now - drawnAt[0] > RATE_WINDOW_MS) drawnAt.shift();
    counts.drawnPerSecond = drawnAt.length / (RATE_WINDOW_MS / 1000);
    $("drawn").textContent = counts.drawnPerSecond.toFixed(1);
  }

  function format(value) {
    return Math.abs(value) >= 1e5 || (value !== 0 && Math.abs(value) < 1e-2) ? value.toExponential(2)
      : Number(value.toFixed(2)).toLocaleString();
  }

  $("colours").addEventListener("change", () => { table = colourTable(MAPS[$("colours").value]); drawBar(); again(); });
  for (const id of ["field", "scale", "lo", "hi"]) $(id).addEventListener("change", again);
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  drawBar();
  changed = true;
  ask();
})();
