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

function request(search) {
  const params = new URLSearchParams({ offset: search.offset, limit: PAGE });
  if (search.kind === "text") {
    params.set("q", search.text);
    return fetchJSON(`/api/search?${params}`);
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
  if (search.kind === "text") history.replaceState(null, "", `#${new URLSearchParams({ q: search.text, offset: search.offset })}`);
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
  setState("ready", `${shown} for “${data.query}”`);
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
  const similar = part(".similar");
  similar.setAttribute("aria-label", `Sounds similar to ${title}`);
  similar.addEventListener("click", () => run({ kind: "similar", id: r.id, start: r.start, offset: 0 }));
  return node;
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

function turnPage(step) {
  if (current) run({ ...current, offset: Math.max(0, current.offset + step * PAGE) });
}

function main() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("query").value.trim();
    if (text) run({ kind: "text", text, offset: 0 });
  });
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

  const saved = new URLSearchParams(location.hash.slice(1));
  if (saved.get("q")) {
    $("query").value = saved.get("q");
    run({ kind: "text", text: saved.get("q"), offset: Number(saved.get("offset")) || 0 });
  } else {
    document.body.dataset.state = "idle";
  }
}

main();
