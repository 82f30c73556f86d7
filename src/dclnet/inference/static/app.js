// dclnet serve's page: one query image -> ranked gallery grid; no libraries, no network
// access beyond this server.
"use strict";

const PAGE = 12; // results per page
const COLOURS = ["#e53935", "#1e88e5", "#43a047", "#fdd835", "#8e24aa", "#fb8c00", "#00acc1",
  "#6d4c41"]; // part 1, 2, ... (0 = background, drawn transparent)

const $ = (id) => document.getElementById(id);
const state = { file: null, results: [], page: 0, mask: null, parts: 0 };

function setStatus(el, text, isError) {
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

async function callJson(url, options) {
  const response = await fetch(url, options);
  let body;
  try {
    body = await response.json();
  } catch (err) {
    throw new Error(`${url}: HTTP ${response.status}, not JSON`);
  }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function showIndex() {
  try {
    const h = await callJson("/health");
    $("index-info").textContent = `${h.gallery_size} ${h.gallery_modality} images ` +
      `(${h.backend}) · model ${h.model.slice(0, 12)} · ${h.checkpoint}`;
  } catch (err) {
    setStatus($("index-info"), `cannot reach the service: ${err.message}`, true);
  }
}

function pickQuery(file) {
  if (!file) return;
  state.file = file;
  state.mask = null;
  $("query-image").src = URL.createObjectURL(file);
  $("query-view").hidden = false;
  $("search-btn").disabled = false;
  drawMask();
}

function drawMask() {
  const canvas = $("mask-canvas");
  const show = $("mask-toggle").checked && state.mask !== null;
  canvas.hidden = !show;
  $("mask-legend").textContent = "";
  if (!show) return;
  const rows = state.mask.length, cols = state.mask[0].length;
  canvas.width = cols;
  canvas.height = rows;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, cols, rows);
  for (let y = 0; y < rows; y++) {
    for (let x = 0; x < cols; x++) {
      const part = state.mask[y][x];
      if (part > 0) {
        ctx.fillStyle = COLOURS[(part - 1) % COLOURS.length];
        ctx.fillRect(x, y, 1, 1);
      }
    }
  }
  const marked = state.mask.flat().filter((part) => part > 0).length;
  $("mask-legend").textContent = `${rows} x ${cols} mask: ${marked} cells in ` +
    `${state.parts} body parts (red, blue, green, ... top to bottom), the rest background`;
}

function card(entry) {
  const div = document.createElement("div");
  div.className = "card";
  const img = document.createElement("img");
  img.src = "/gallery/" + entry.path.split("/").map(encodeURIComponent).join("/");
  img.alt = entry.path;
  div.appendChild(img);
  const lines = [
    ["rank", `#${entry.rank}  ${entry.score.toFixed(4)}`],
    ["who", [entry.identity ? `id ${entry.identity}` : "", entry.camera || ""].join(" ").trim()],
    ["path", entry.path],
  ];
  for (const [cls, text] of lines) {
    if (!text) continue;
    const p = document.createElement("div");
    p.className = cls;
    p.textContent = text;
    div.appendChild(p);
  }
  return div;
}

function showPage() {
  const grid = $("results");
  grid.replaceChildren();
  const pages = Math.max(1, Math.ceil(state.results.length / PAGE));
  state.page = Math.min(state.page, pages - 1);
  const start = state.page * PAGE;
  for (const entry of state.results.slice(start, start + PAGE)) grid.appendChild(card(entry));
  $("page-label").textContent = state.results.length
    ? `results ${start + 1}-${Math.min(start + PAGE, state.results.length)} of ` +
      `${state.results.length} (page ${state.page + 1} of ${pages})`
    : "";
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.page >= pages - 1;
}

async function search() {
  if (!state.file) return;
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  form.append("modality", $("modality").value);
  form.append("topk", $("topk").value);
  form.append("mask", "1");
  setStatus($("status"), "searching…");
  try {
    const body = await callJson("/search", { method: "POST", body: form });
    const q = body.queries[0];
    state.results = q.results;
    state.mask = q.mask || null;
    state.parts = body.num_parts;
    state.page = 0;
    showPage();
    drawMask();
    setStatus($("status"), `${q.results.length} results from ${body.gallery_size} ` +
      `${body.gallery_modality} images in ${(body.seconds * 1000).toFixed(0)} ms`);
  } catch (err) {
    setStatus($("status"), err.message, true);
  }
}

async function append() {
  const files = $("append-files").files;
  if (!files.length) {
    setStatus($("append-status"), "pick image files to add first", true);
    return;
  }
  const form = new FormData();
  for (const f of files) form.append("image", f, f.name);
  setStatus($("append-status"), "adding…");
  try {
    const body = await callJson("/index/append", { method: "POST", body: form });
    const images = body.added === 1 ? "image" : "images";
    setStatus($("append-status"), `added ${body.added} ${images}; the gallery holds ` +
      `${body.gallery_size}`);
    showIndex();
  } catch (err) {
    setStatus($("append-status"), err.message, true);
  }
}

function wire() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    pickQuery(e.dataTransfer.files[0]);
  });
  $("query-file").addEventListener("change", (e) => pickQuery(e.target.files[0]));
  $("search-btn").addEventListener("click", search);
  $("mask-toggle").addEventListener("change", drawMask);
  $("prev").addEventListener("click", () => { state.page -= 1; showPage(); });
  $("next").addEventListener("click", () => { state.page += 1; showPage(); });
  $("append-btn").addEventListener("click", append);
  showIndex();
}

wire();
