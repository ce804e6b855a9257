// The inspection page: every file is sent to POST /v1/score on its own (a few at a time), so one
// unreadable file does not hide the others and results appear as they come.
"use strict";

const state = { model: null, items: [], sort: { key: "score", dir: -1 }, filter: "all", next: 0 };
const CONCURRENT_UPLOADS = 4;
let active = 0;
const waiting = [];
let modelTerms = []; // the score's terms (GET /v1/model: score_terms)

const $ = (id) => document.getElementById(id);

function fmt(value, digits = 3) {
  return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "–";
}

async function loadModel() {
  try {
    const response = await fetch("/v1/model");
    const info = await response.json();
    state.model = info;
    $("m-name").textContent = info.model;
    modelTerms = info.score_terms || [];
    $("m-input").textContent = `${info.image_size}×${info.image_size}, ${info.channels === 1 ? "gray" : "RGB"}`;
    $("m-threshold").textContent = fmt(info.threshold);
    $("m-protocol").textContent = info.protocol;
    const ck = info.checkpoint || {};
    $("m-checkpoint").textContent = `${ck.which || "?"}, epoch ${ck.epoch ?? "?"}`;
    $("m-engine").textContent = info.engine || "";
    $("m-map").textContent = fmt(info.normalization && info.normalization.map_high);
    document.body.dataset.ready = "true";
  } catch (error) {
    $("m-name").textContent = "unavailable";
  }
}

function addFiles(files) {
  for (const file of files) {
    const item = { id: state.next++, file, name: file.name, state: "pending" };
    state.items.push(item);
    waiting.push(item);
  }
  render();
  pump();
}

function pump() {
  while (active < CONCURRENT_UPLOADS && waiting.length) {
    const item = waiting.shift();
    active += 1;
    score(item).finally(() => {
      active -= 1;
      pump();
    });
  }
}

async function score(item) {
  const body = new FormData();
  body.append("images", item.file, item.name);
  try {
    const response = await fetch("/v1/score?heatmap=true&reconstruction=true", { method: "POST", body });
    const payload = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) {
      item.state = "error";
      item.error = payload.error || `HTTP ${response.status}`;
    } else {
      Object.assign(item, payload.results[0], { state: "done" });
    }
  } catch (error) {
    item.state = "error";
    item.error = String(error);
  }
  item.file = null; // the browser may free it
  render();
}

function sortValue(item, key) {
  if (key === "index") return item.id;
  if (key === "name") return item.name.toLowerCase();
  if (key === "verdict") return item.state !== "done" ? -1 : item.is_anomalous ? 1 : 0;
  if (key === "score") return item.state === "done" ? item.score : -Infinity;
  if (item.state !== "done" || !item.parts) return -Infinity;
  return item.parts[key] ?? -Infinity;
}

function sorted() {
  const { key, dir } = state.sort;
  return [...state.items].sort((a, b) => {
    const x = sortValue(a, key);
    const y = sortValue(b, key);
    if (x < y) return -dir;
    if (x > y) return dir;
    return a.id - b.id;
  });
}

function gauge(item) {
  const threshold = item.threshold;
  const scale = Math.max(2 * threshold, 1.5);
  const wrap = document.createElement("div");
  const bar = document.createElement("div");
  bar.className = "gauge" + (item.is_anomalous ? " anomalous" : "") + (item.score > scale ? " over" : "");
  bar.setAttribute("role", "meter");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", String(scale));
  bar.setAttribute("aria-valuenow", String(item.score));
  const fill = document.createElement("div");
  fill.className = "fill";
  fill.style.width = `${Math.max(0, Math.min(item.score / scale, 1)) * 100}%`;
  const mark = document.createElement("div");
  mark.className = "mark";
  mark.style.left = `${(threshold / scale) * 100}%`;
  mark.title = `threshold ${fmt(threshold)}`;
  bar.append(fill, mark);
  const text = document.createElement("div");
  text.className = "score-text";
  text.innerHTML = `<b>${fmt(item.score)}</b> vs ${fmt(threshold)} (raw ${fmt(item.raw_score, 5)})`;
  wrap.append(bar, text);
  return wrap;
}

function image(src, className, alt) {
  const img = document.createElement("img");
  img.src = src;
  img.className = className;
  img.alt = alt;
  return img;
}

// The terms of the score as the loaded model declares them (GET /v1/model: score_terms), each
// with this image's value and share; nothing here names a term.
function termList(item) {
  const list = document.createElement("ul");
  list.className = "terms";
  for (const term of modelTerms) {
    const li = document.createElement("li");
    const share = (item.shares && item.shares[term.name]) || 0;
    li.title = `${term.title}; weight ${fmt(term.weight, 3)}`;
    if (term.name === item.leading_term) li.className = "leading";
    const name = document.createElement("span");
    name.className = "term-name";
    name.textContent = term.name;
    const bar = document.createElement("span");
    bar.className = "share";
    const fill = document.createElement("span");
    fill.style.width = `${Math.round(share * 100)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "term-value";
    value.textContent = `${Math.round(share * 100)}% (${fmt(item.parts[term.name], 4)})`;
    li.append(name, bar, value);
    list.append(li);
  }
  return list;
}

function row(item) {
  const tr = document.createElement("tr");
  tr.dataset.state = item.state;
  tr.dataset.id = String(item.id);
  const cells = Array.from({ length: 8 }, () => document.createElement("td"));
  cells[0].className = "num";
  cells[0].textContent = String(item.id + 1);
  cells[1].className = "file";
  cells[1].textContent = item.name;
  cells[1].title = item.name;
  const badge = document.createElement("span");
  badge.className = "badge verdict";
  if (item.state === "pending") {
    badge.classList.add("pending");
    badge.textContent = "scoring…";
  } else if (item.state === "error") {
    badge.classList.add("error");
    badge.textContent = "error";
    const message = document.createElement("div");
    message.className = "error-text";
    message.textContent = item.error;
    cells[3].append(message);
  } else {
    const verdict = item.is_anomalous ? "anomalous" : "normal";
    tr.dataset.verdict = verdict;
    badge.classList.add(verdict);
    badge.textContent = item.is_anomalous ? "ANOMALOUS" : "normal";
    const size = document.createElement("small");
    size.textContent = `${item.width}×${item.height}`;
    cells[1].append(size);
    cells[3].append(gauge(item));
    const input = `data:image/png;base64,${item.input_png}`;
    cells[4].append(image(input, "thumb input", "model input"));
    cells[5].append(image(`data:image/png;base64,${item.reconstruction_png}`, "thumb reconstruction", "reconstruction"));
    const overlay = document.createElement("div");
    overlay.className = "overlay";
    const mapName = item.heatmap_term || "reconstruction";
    overlay.append(image(input, "base", "input"), image(`data:image/png;base64,${item.heatmap_png}`, "heat", `map of ${mapName}`));
    const caption = document.createElement("small");
    caption.className = "map-term";
    caption.textContent = `map of ${mapName}`;
    cells[6].append(overlay, caption);
    cells[7].append(termList(item));
    if (item.out_of_domain) {
      const warning = document.createElement("span");
      warning.className = "badge out-of-domain";
      warning.textContent = "out of domain";
      warning.title = item.domain_reason;
      const reason = document.createElement("div");
      reason.className = "domain-text";
      reason.textContent = item.domain_reason;
      cells[2].append(warning, reason);
    }
  }
  cells[2].append(badge);
  tr.append(...cells);
  const hidden =
    (state.filter === "anomalous" && !(item.state === "done" && item.is_anomalous)) ||
    (state.filter === "normal" && !(item.state === "done" && !item.is_anomalous));
  tr.classList.toggle("hidden", hidden);
  return tr;
}

function render() {
  const body = $("rows");
  body.replaceChildren(...sorted().map(row));
  $("empty").style.display = state.items.length ? "none" : "";
  const done = state.items.filter((i) => i.state === "done");
  const bad = done.filter((i) => i.is_anomalous).length;
  const errors = state.items.filter((i) => i.state === "error").length;
  const pending = state.items.length - done.length - errors;
  const summary = $("summary");
  if (!state.items.length) {
    summary.textContent = "No images scored yet.";
  } else {
    summary.innerHTML =
      `${done.length} scored: <b class="bad">${bad} anomalous</b>, ${done.length - bad} normal` +
      (errors ? `, ${errors} unreadable` : "") +
      (pending ? ` · ${pending} in progress` : "");
  }
  document.querySelectorAll("th[data-sort]").forEach((th) => {
    if (th.dataset.sort === state.sort.key) {
      th.setAttribute("aria-sort", state.sort.dir < 0 ? "descending" : "ascending");
      const arrow = th.querySelector(".arrow");
      if (arrow) arrow.textContent = state.sort.dir < 0 ? "▼" : "▲";
    } else {
      th.removeAttribute("aria-sort");
    }
  });
}

function setup() {
  const drop = $("drop");
  const input = $("files");
  input.addEventListener("change", () => {
    addFiles(Array.from(input.files));
    input.value = "";
  });
  drop.addEventListener("click", (event) => {
    if (event.target !== input && !event.target.closest("label")) input.click();
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(Array.from(event.dataTransfer.files));
  });
  document.querySelectorAll("th[data-sort]").forEach((th) => {
    th.addEventListener("click", () => {
      const key = th.dataset.sort;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : key === "name" || key === "index" ? 1 : -1 };
      render();
    });
  });
  document.querySelectorAll("[data-filter]").forEach((button) => {
    button.addEventListener("click", () => {
      state.filter = button.dataset.filter;
      document.querySelectorAll("[data-filter]").forEach((b) => b.classList.toggle("on", b === button));
      render();
    });
  });
  const opacity = $("opacity");
  const applyOpacity = () => document.documentElement.style.setProperty("--heat-opacity", String(opacity.value / 100));
  opacity.addEventListener("input", applyOpacity);
  applyOpacity();
  $("clear").addEventListener("click", () => {
    state.items = state.items.filter((i) => i.state === "pending");
    render();
  });
  render();
  loadModel();
}

setup();
