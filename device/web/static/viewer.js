// The case page's viewer: the stored slice at full resolution on a canvas, zoom (wheel,
// buttons, +/- keys) and pan (drag, arrow keys), window/level over the stored grey values
// (8- or 16-bit, from /cases/<id>/pixels: a DICOM's stored values, before its window),
// and the heat map over it with an opacity slider. Without JavaScript the section stays
// hidden and the page shows both images.
(function () {
  "use strict";
  const root = document.getElementById("viewer");
  if (!root || !window.fetch || !document.createElement("canvas").getContext) return;
  const canvas = document.getElementById("viewer-canvas");
  const ctx = canvas.getContext("2d");
  const level = document.getElementById("viewer-level");
  const windowWidth = document.getElementById("viewer-window");
  const opacity = document.getElementById("viewer-opacity");
  const readout = document.getElementById("viewer-readout");
  const slice = document.createElement("canvas");  // the windowed slice, 1:1
  const heat = new Image();
  let values = null, width = 0, height = 0, low = 0, high = 255, offset = 0;
  let zoom = 1, panX = 0, panY = 0, drag = null;

  function fit() {
    const box = canvas.getBoundingClientRect();
    zoom = Math.min(box.width / width, box.height / height);
    panX = (box.width - width * zoom) / 2;
    panY = (box.height - height * zoom) / 2;
  }

  function windowed() {  // grey values through the window, into the 1:1 canvas
    const centre = Number(level.value), span = Math.max(1, Number(windowWidth.value));
    const lo = centre - span / 2, scale = 255 / span;
    const image = slice.getContext("2d").createImageData(width, height);
    const px = image.data;
    for (let i = 0, j = 0; i < values.length; i++, j += 4) {
      const v = Math.max(0, Math.min(255, (values[i] - lo) * scale));
      px[j] = px[j + 1] = px[j + 2] = v;
      px[j + 3] = 255;
    }
    slice.getContext("2d").putImageData(image, 0, 0);
    level.setAttribute("aria-valuetext", String(centre + offset));  // a signed DICOM's
    announce();
  }

  let settle = null;
  function announce() {  // once the view settles: a screen reader hears one line, not each step
    clearTimeout(settle);
    settle = setTimeout(() => {
      readout.textContent = `level ${Number(level.value) + offset}, window ` +
        `${windowWidth.value}, zoom ${Math.round(zoom * 100)} %`;
    }, 250);
  }

  function draw() {
    const box = canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(box.width * ratio);
    canvas.height = Math.round(box.height * ratio);
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, box.width, box.height);
    ctx.imageSmoothingEnabled = zoom < 2;  // enlarged: show the pixels as they are
    ctx.drawImage(slice, panX, panY, width * zoom, height * zoom);
    if (heat.complete && heat.naturalWidth) {
      ctx.globalAlpha = Number(opacity.value) / 100;
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(heat, panX, panY, width * zoom, height * zoom);
      ctx.globalAlpha = 1;
    }
  }

  function zoomAt(factor, x, y) {
    const next = Math.max(0.05, Math.min(32, zoom * factor));
    panX = x - (x - panX) * (next / zoom);
    panY = y - (y - panY) * (next / zoom);
    zoom = next;
    draw();
    announce();
  }

  function centre() {
    const box = canvas.getBoundingClientRect();
    return [box.width / 2, box.height / 2];
  }

  function fullRange() {
    level.value = String(Math.round((low + high) / 2));
    windowWidth.value = String(Math.max(1, high - low));
    windowed();
    draw();
  }

  async function start() {
    const answer = await fetch(root.dataset.pixels, {credentials: "same-origin"});
    if (!answer.ok) return;
    const bits = Number(answer.headers.get("X-Bits"));
    width = Number(answer.headers.get("X-Width"));
    height = Number(answer.headers.get("X-Height"));
    offset = Number(answer.headers.get("X-Offset") || 0);  // a signed DICOM's values
    const buffer = await answer.arrayBuffer();
    values = bits === 16 ? new Uint16Array(buffer) : new Uint8Array(buffer);
    low = values.reduce((a, b) => Math.min(a, b), Infinity);
    high = values.reduce((a, b) => Math.max(a, b), -Infinity);
    const top = bits === 16 ? 65535 : 255;
    level.max = String(top);
    windowWidth.max = String(top + 1);
    slice.width = width;
    slice.height = height;
    root.hidden = false;
    fit();
    fullRange();
    heat.addEventListener("load", draw);
    heat.src = root.dataset.heatmap;
  }

  root.querySelectorAll("[data-zoom]").forEach(button => button.addEventListener(
    "click", () => zoomAt(Number(button.dataset.zoom), ...centre())));
  root.querySelector("[data-fit]").addEventListener("click", () => { fit(); draw(); announce(); });
  root.querySelector("[data-reset-window]").addEventListener("click", fullRange);
  [level, windowWidth].forEach(input => input.addEventListener("input", () => {
    windowed();
    draw();
  }));
  opacity.addEventListener("input", draw);
  canvas.addEventListener("wheel", event => {
    event.preventDefault();
    const box = canvas.getBoundingClientRect();
    zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, event.clientX - box.left,
           event.clientY - box.top);
  }, {passive: false});
  canvas.addEventListener("pointerdown", event => {
    drag = [event.clientX - panX, event.clientY - panY];
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", event => {
    if (!drag) return;
    panX = event.clientX - drag[0];
    panY = event.clientY - drag[1];
    draw();
  });
  ["pointerup", "pointercancel"].forEach(e => canvas.addEventListener(e, () => { drag = null; }));
  canvas.addEventListener("keydown", event => {
    const step = 40, moves = {ArrowLeft: [step, 0], ArrowRight: [-step, 0],
                               ArrowUp: [0, step], ArrowDown: [0, -step]};
    if (moves[event.key]) {
      panX += moves[event.key][0];
      panY += moves[event.key][1];
      draw();
    } else if (event.key === "+" || event.key === "=") {
      zoomAt(1.25, ...centre());
    } else if (event.key === "-") {
      zoomAt(0.8, ...centre());
    } else {
      return;
    }
    event.preventDefault();
  });
  window.addEventListener("resize", draw);
  start();
})();
