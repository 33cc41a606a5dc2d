// The amr page: search by text or by a dropped file, listen, page through, find similar sounds.
// Talks to the JSON API of amr/serve.py; no build step, no libraries.
"use strict";

const PAGE = 10;
const $ = (id) => document.getElementById(id);
const FIELDS = ["title", "keywords", "tags", "description"];
let info = { upload_limit: Infinity };
let current = null; // the search on screen: {kind: "text" | "file" | "similar", offset, ...}

function clock(seconds) {
  const minutes = Math.floor(seconds / 60);
  const rest = (seconds - 60 * minutes).toFixed(1).padStart(4, "0");
  return `${minutes}:${rest}`;
}

function fileName(path) {
  return path.split(/[\\/]/).pop();
}

async function fetchJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = body.detail;
    if (typeof detail === "string") throw new Error(detail);
    if (Array.isArray(detail)) throw new Error(detail.map((d) => `${d.loc.at(-1)}: ${d.msg}`).join("; "));
    throw new Error(`${response.status} ${response.statusText}`);
  }
  return body;
}

// The filters on screen as /api/browse parameters (only those set).
const FILTERS = { folder: "folder", cat: "category", min_duration: "min-duration", max_duration: "max-duration", has_metadata: "has-metadata" };

function filterValues() {
  const values = {};
  for (const [name, id] of Object.entries(FILTERS)) if ($(id).value !== "") values[name] = $(id).value;
  return values;
}

function request(search) {
  const params = new URLSearchParams({ offset: search.offset, limit: PAGE });
  if (search.kind === "text") {
    if (search.text) params.set("q", search.text);
    for (const [name, value] of Object.entries(search.filters)) params.set(name, value);
    return fetchJSON(`/api/browse?${params}`);
  }
  if (search.kind === "similar") {
    params.set("id", search.id);
    params.set("start", search.start);
    return fetchJSON(`/api/similar?${params}`);
  }
  const form = new FormData();
  form.append("file", search.file);
  return fetchJSON(`/api/search/audio?${params}`, { method: "POST", body: form });
}

async function run(search) {
  current = search;
  if (search.kind === "text") {
    const shown = new URLSearchParams({ ...(search.text ? { q: search.text } : {}), ...search.filters });
    if (search.offset) shown.set("offset", search.offset);
    history.replaceState(null, "", `?${shown}`); // a search to share or bookmark
  }
  setState("loading", "Searching…");
  try {
    const data = await request(search);
    if (current === search) render(data);
  } catch (error) {
    if (current !== search) return;
    $("results").replaceChildren();
    $("pager").hidden = true;
    setState("error", error.message);
  }
}

function setState(state, message) {
  document.body.dataset.state = state;
  $("status").textContent = message;
  $("status").classList.toggle("error", state === "error");
}

function render(data) {
  $("results").replaceChildren(...data.results.map(resultElement));
  const first = data.offset + 1;
  const last = data.offset + data.results.length;
  const shown = data.results.length ? `Results ${first}–${last} of ${data.total}` : "No results";
  setState("ready", data.query ? `${shown} for “${data.query}”` : `${shown} (filtered)`);
  $("pager").hidden = data.total <= PAGE && data.offset === 0;
  $("previous").disabled = data.offset === 0;
  $("next").disabled = last >= data.total;
  $("page-label").textContent = `Page ${Math.floor(data.offset / PAGE) + 1} of ${Math.max(1, Math.ceil(data.total / PAGE))}`;
}

function resultElement(r) {
  const node = $("result-template").content.firstElementChild.cloneNode(true);
  const part = (selector) => node.querySelector(selector);
  const title = r.metadata.title || fileName(r.audio) || r.id;
  node.dataset.id = r.id;
  part(".rank").textContent = r.rank;
  part(".title").textContent = title;
  part(".score").textContent = r.score.toFixed(3);
  part(".item-id").textContent = r.id;
  part(".split").append(...scoreSplit(r.explain || {}));
  part(".split").title = "What the audio and the metadata of the item each added to the score";
  part(".metadata").append(...metadataRows(r.metadata));
  part(".tags").append(...(r.tags || []).map(([name, p]) => listItem(`${name} ${p.toFixed(2)}`)));

  const audio = part("audio");
  audio.setAttribute("aria-label", `Listen to ${title}`);
  audio.dataset.start = r.start;
  // The media fragment starts playback at the segment; seeking on load covers browsers that ignore it.
  audio.addEventListener("loadedmetadata", () => {
    if (Math.abs(audio.currentTime - r.start) > 0.01) audio.currentTime = r.start;
  });
  audio.src = `${r.audio_url}#t=${r.start}`;
  part(".segment").textContent = `${clock(r.start)}–${clock(r.end)}`;
  part(".segment").title = "The matching segment";
  part(".ucs").append(...ucsLine(r));
  drawWave(node, r, audio);
  const url = new URL(r.audio_url, location.href).href;
  const name = fileName(r.audio) || r.id;
  part(".download").href = r.audio_url;
  part(".download").download = name;
  part(".copy-path").addEventListener("click", () => copyPath(part(".copy-path"), r.audio));
  node.addEventListener("dragstart", (event) => {
    // Chromium writes a file from DownloadURL ("type:name:url") where the drag ends: a file manager, an editor
    event.dataTransfer.setData("DownloadURL", `${audioType(name)}:${name}:${url}`);
    event.dataTransfer.setData("text/uri-list", url);
    event.dataTransfer.setData("text/plain", r.audio);
    event.dataTransfer.effectAllowed = "copy";
  });
  node.addEventListener("click", () => select(node, false));
  const similar = part(".similar");
  similar.setAttribute("aria-label", `Sounds similar to ${title}`);
  similar.addEventListener("click", () => run({ kind: "similar", id: r.id, start: r.start, offset: 0 }));
  return node;
}

const AUDIO_TYPES = { wav: "audio/wav", wave: "audio/wav", mp3: "audio/mpeg", flac: "audio/flac", ogg: "audio/ogg", opus: "audio/ogg", aif: "audio/aiff", aiff: "audio/aiff" };

function audioType(name) {
  return AUDIO_TYPES[name.split(".").pop().toLowerCase()] || "application/octet-stream";
}

// The item's UCS category (from its name) or, without one, the one the index's model suggests.
function ucsLine(r) {
  const span = document.createElement("span");
  if (r.metadata.ucs_catid) {
    span.textContent = `UCS ${r.metadata.ucs_catid} · ${r.metadata.category_full}`;
  } else if (r.suggested) {
    span.className = "suggested";
    span.textContent = `Suggested UCS ${r.suggested.catid} · ${r.suggested.category_full} (${r.suggested.score.toFixed(2)})`;
  }
  return [span];
}

// The waveform overview (peaks from the server), the matching segment marked, a playhead; a click seeks there and plays.
function drawWave(node, r, audio) {
  const wave = node.querySelector(".wave");
  const canvas = wave.querySelector("canvas");
  fetchJSON(`/api/peaks?${new URLSearchParams({ id: r.id })}`)
    .then((overview) => {
      const duration = overview.duration || r.end || 1;
      const context = canvas.getContext("2d");
      const { width, height } = canvas;
      context.fillStyle = getComputedStyle(document.documentElement).getPropertyValue("--audio") || "#2a8c6a";
      const step = width / overview.peaks.length;
      overview.peaks.forEach(([low, high], i) => {
        const top = ((1 - high) / 2) * height;
        context.fillRect(i * step, top, Math.max(1, step - 0.5), Math.max(1, ((high - low) / 2) * height));
      });
      const mark = wave.querySelector(".segment-mark");
      mark.style.left = `${(100 * r.start) / duration}%`;
      mark.style.width = `${(100 * (r.end - r.start)) / duration}%`;
      wave.dataset.duration = duration;
      wave.dataset.ready = "true";
      audio.addEventListener("timeupdate", () => {
        wave.querySelector(".playhead").style.left = `${(100 * audio.currentTime) / duration}%`;
      });
      wave.addEventListener("click", (event) => {
        const box = wave.getBoundingClientRect();
        audio.currentTime = (Math.min(Math.max(event.clientX - box.left, 0), box.width) / box.width) * duration;
        audio.play().catch(() => {});
      });
    })
    .catch((error) => {
      wave.dataset.ready = "error";
      wave.title = error.message;
    });
}

function copyPath(button, path) {
  const done = () => {
    button.textContent = "Copied";
    button.dataset.copied = path;
    setState(document.body.dataset.state, `Copied ${path}`);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(path).then(done, () => copyByCommand(path) && done());
  } else if (copyByCommand(path)) {
    done();
  }
}

function copyByCommand(text) {
  const area = document.createElement("textarea");
  area.value = text;
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  return copied;
}

// Keyboard: the selected result (j / ArrowDown next, k / ArrowUp previous), space plays or stops it.
function select(node, scroll = true) {
  for (const other of document.querySelectorAll("#results > li.selected")) other.classList.remove("selected");
  node.classList.add("selected");
  if (scroll) node.focus();
}

function onKey(event) {
  if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  const results = [...document.querySelectorAll("#results > li.result")];
  if (!results.length) return;
  const at = results.findIndex((node) => node.classList.contains("selected"));
  if (event.key === "j" || event.key === "ArrowDown") {
    select(results[Math.min(at + 1, results.length - 1)]);
  } else if (event.key === "k" || event.key === "ArrowUp") {
    select(results[Math.max(at - 1, 0)]);
  } else if (event.key === " " && at >= 0) {
    const audio = results[at].querySelector("audio");
    if (audio.paused) {
      for (const other of document.querySelectorAll("#results audio")) if (other !== audio) other.pause();
      audio.play().catch(() => {});
    } else {
      audio.pause();
      audio.currentTime = Number(audio.dataset.start) || 0;
    }
  } else {
    return;
  }
  event.preventDefault();
}

// What each part of the vectors (audio, metadata) added to the score: a bar per part and its value.
function scoreSplit(explain) {
  const entries = Object.entries(explain);
  const total = entries.reduce((sum, [, value]) => sum + Math.abs(value), 0) || 1;
  return entries.map(([name, value]) => {
    const row = document.createElement("span");
    row.className = `part part-${name}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(8 * Math.abs(value)) / total}rem`; // the parts' bars add up to 8rem
    const label = document.createElement("span");
    label.textContent = entries.length === 1 ? `${name} cosine ${value.toFixed(3)}` : `${name} ${value >= 0 ? "+" : ""}${value.toFixed(3)}`;
    row.append(bar, label);
    return row;
  });
}

function metadataRows(metadata) {
  const fields = FIELDS.filter((f) => f in metadata).concat(Object.keys(metadata).filter((f) => !FIELDS.includes(f)));
  if (!fields.length) return [term("metadata"), definition("none")];
  return fields.flatMap((f) => [term(f), definition(Array.isArray(metadata[f]) ? metadata[f].join(", ") : String(metadata[f]))]);
}

function term(text) {
  const dt = document.createElement("dt");
  dt.textContent = text;
  return dt;
}

function definition(text) {
  const dd = document.createElement("dd");
  dd.textContent = text;
  return dd;
}

function listItem(text) {
  const li = document.createElement("li");
  li.textContent = text;
  return li;
}

function searchFile(file) {
  if (!file) return;
  if (file.size > info.upload_limit) {
    setState("error", `${file.name} is larger than the upload limit of ${Math.round(info.upload_limit / 2 ** 20)} MiB`);
    return;
  }
  run({ kind: "file", file, offset: 0 });
}

function fillSelect(id, options) {
  for (const [value, label] of options) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    $(id).append(option);
  }
}

function turnPage(step) {
  if (current) run({ ...current, offset: Math.max(0, current.offset + step * PAGE) });
}

function main() {
  const searchNow = () => {
    const text = $("query").value.trim();
    const filters = filterValues();
    if (text || Object.keys(filters).length) run({ kind: "text", text, filters, offset: 0 });
  };
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    searchNow();
  });
  for (const id of Object.values(FILTERS)) $(id).addEventListener("change", searchNow);
  document.addEventListener("keydown", onKey);
  $("example").addEventListener("change", () => searchFile($("example").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    searchFile(event.dataTransfer.files[0]);
  });
  $("previous").addEventListener("click", () => turnPage(-1));
  $("next").addEventListener("click", () => turnPage(1));

  fetchJSON("/api/info")
    .then((got) => {
      info = got;
      $("index-info").textContent = `${got.items} sounds · ${got.kind} index (${got.fusion} fusion) · ${fileName(got.index)}`;
    })
    .catch((error) => setState("error", error.message));

  const saved = new URLSearchParams(location.search || location.hash.slice(1));
  fetchJSON("/api/facets")
    .then((facets) => {
      fillSelect("folder", facets.folders.map((f) => [f.folder, `${f.folder} (${f.items})`]));
      fillSelect("category", facets.categories.map((c) => [c.category, `${c.category} (${c.items})`]));
    })
    .catch(() => {})
    .finally(() => {
      for (const [name, id] of Object.entries(FILTERS)) if (saved.has(name)) $(id).value = saved.get(name);
      const filters = filterValues();
      if (saved.get("q") || Object.keys(filters).length) {
        $("query").value = saved.get("q") || "";
        run({ kind: "text", text: $("query").value.trim(), filters, offset: Number(saved.get("offset")) || 0 });
      } else {
        document.body.dataset.state = "idle";
      }
    });
}

main();
