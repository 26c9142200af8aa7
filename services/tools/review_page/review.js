// Trapline review page: walks through events (bursts), keyboard first. Talks to the JSON routes
// of services/tools/review.py; the server pages the events, so this page holds one page of 50 event
// summaries at a time, the event shown and a few photos, never the whole list.
"use strict";

const PAGE = 50;
const state = {
  meta: null,
  filter: { deployment: "", label: "", min: "", max: "", unreviewed: false },
  pos: 0,
  total: 0,
  pages: new Map(), // page start -> event summaries
  event: null, // the event shown (with photos)
  frame: 0,
  names: [],
  matches: [],
  active: 0,
  request: 0, // increments on every navigation; stale answers are dropped
  photos: new Map(), // photo url -> object URL (a few, oldest dropped)
  details: new Map(), // event id -> detail promise (prefetch)
  saving: false,
};
const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem("trapline-token");
}

async function api(path, options = {}, tries = 0) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const name = sessionStorage.getItem("trapline-reviewer");
  if (name) headers["X-Reviewer"] = name;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 429 && tries < 5) { // the upload API's rate limit: wait as told
    const wait = Number(response.headers.get("Retry-After") || 1);
    await new Promise((resolve) => setTimeout(resolve, 1000 * wait));
    return api(path, options, tries + 1);
  }
  if (response.status === 401) {
    const given = window.prompt("Token (your program's upload API token, or the review token):");
    if (given) {
      sessionStorage.setItem("trapline-token", given.trim());
      return api(path, options);
    }
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response;
}

const json = async (path, options) => (await api(path, options)).json();

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function query(offset) {
  const f = state.filter;
  const q = new URLSearchParams({ offset: String(offset), limit: String(PAGE) });
  if (f.deployment) q.set("deployment", f.deployment);
  if (f.label) q.set("label", f.label);
  if (f.min !== "") q.set("min_conf", f.min);
  if (f.max !== "") q.set("max_conf", f.max);
  if (f.unreviewed) q.set("unreviewed", "true");
  return q.toString();
}

function showProgress(p) {
  const share = p.total ? (100 * p.reviewed) / p.total : 0;
  $("progress-fill").style.width = `${share}%`;
  $("progress-text").textContent =
    `${p.reviewed.toLocaleString()} of ${p.total.toLocaleString()} events reviewed (${share.toFixed(1)} %)`;
}

async function summaryAt(pos) {
  const start = Math.floor(pos / PAGE) * PAGE;
  if (!state.pages.has(start)) {
    const page = await json(`api/events?${query(start)}`);
    state.total = page.total;
    showProgress(page.progress);
    state.pages.set(start, page.events);
    if (state.pages.size > 6) state.pages.delete(state.pages.keys().next().value);
  }
  return state.pages.get(start)[pos - start] || null;
}

function detail(eventId) {
  if (!state.details.has(eventId)) {
    const promise = json(`api/events/${encodeURIComponent(eventId)}`);
    promise.catch(() => state.details.delete(eventId));
    state.details.set(eventId, promise);
    if (state.details.size > 20) state.details.delete(state.details.keys().next().value);
  }
  return state.details.get(eventId);
}

function photoUrl(event, photo) {
  return `api/photos/${encodeURIComponent(event.event_id)}/${encodeURIComponent(photo.media_id)}`;
}

async function photoBlob(url) {
  if (!state.photos.has(url)) {
    const promise = api(url).then(async (r) => URL.createObjectURL(await r.blob()));
    promise.catch(() => state.photos.delete(url));
    state.photos.set(url, promise);
    while (state.photos.size > 24) {
      const [oldest, old] = state.photos.entries().next().value;
      state.photos.delete(oldest);
      old.then((u) => URL.revokeObjectURL(u)).catch(() => {});
    }
  }
  return state.photos.get(url);
}

async function show(pos) {
  const request = ++state.request;
  if ($("status").className === "error") status(""); // an old error is not about this event
  try {
    if (pos < 0) pos = 0;
    let summary = await summaryAt(pos);
    if (!summary && pos > 0 && state.total > 0) {
      pos = state.total - 1; // past the end (after a save under "not yet reviewed")
      summary = await summaryAt(pos);
    }
    if (request !== state.request) return;
    state.pos = pos;
    if (!summary) {
      state.event = null;
      document.body.dataset.eventId = "";
      $("stage").hidden = true;
      $("no-event").hidden = false;
      $("frames").textContent = "";
      $("position").textContent = "0 events";
      fillInfo(null);
      return;
    }
    const event = await detail(summary.event_id);
    if (request !== state.request) return;
    state.event = Object.assign({}, event, summary); // the summary is fresher (reviews)
    state.frame = 0;
    $("stage").hidden = false;
    $("no-event").hidden = true;
    $("position").textContent = `Event ${(pos + 1).toLocaleString()} of ${state.total.toLocaleString()}`;
    fillInfo(state.event);
    const review = state.event.review;
    $("count").value = review
      ? (review.count ?? "")
      : (state.event.observation_type === "animal" ? state.event.suggested_count : "");
    $("comment").value = review ? (review.comment || "") : "";
    renderFrames();
    await showFrame(0);
    document.body.dataset.eventId = state.event.event_id;
    prefetch(pos + 1);
  } catch (error) {
    if (request === state.request) status(String(error.message || error), true);
  }
}

async function prefetch(pos) {
  try {
    if (pos >= state.total) return;
    const next = await summaryAt(pos);
    if (!next) return;
    const event = await detail(next.event_id);
    if (event.photos.length && !event.photos[0].hidden) photoBlob(photoUrl(event, event.photos[0]));
  } catch (_) { /* prefetch only */ }
}

function fillInfo(e) {
  $("i-event").textContent = e ? e.event_id : "";
  $("i-deployment").textContent = e ? e.deployment_id : "";
  $("i-time").textContent = e ? `${(e.start || "no time").replace("T", " ").slice(0, 19)} · ${e.media_count} photo(s)` : "";
  $("i-machine").textContent = e
    ? `${e.machine_label}${e.probability != null ? ` (${(100 * e.probability).toFixed(0)} %)` : ""}`
    : "";
  const r = e && e.review;
  $("i-review").textContent = r
    ? `${r.label}${r.count != null ? ` ×${r.count}` : ""} by ${r.reviewer}${r.comment ? ` · “${r.comment}”` : ""}`
    : (e ? "not yet" : "");
  $("i-review").className = r ? "reviewed" : "";
  $("b-accept").firstChild.textContent = e ? `Accept: ${e.label} ` : "Accept ";
}

function renderFrames() {
  const nav = $("frames");
  nav.textContent = "";
  state.event.photos.forEach((p, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = String(i + 1);
    b.title = `${p.name}${p.timestamp ? " · " + p.timestamp.slice(11, 19) : ""}${p.blurred ? " · people blurred" : ""}`;
    b.addEventListener("click", () => showFrame(i));
    nav.appendChild(b);
  });
}

async function showFrame(i) {
  const e = state.event;
  if (!e || !e.photos.length) {
    $("photo").removeAttribute("src");
    $("boxes").textContent = "";
    return;
  }
  state.frame = (i + e.photos.length) % e.photos.length;
  const photo = e.photos[state.frame];
  [...$("frames").children].forEach((b, k) => b.classList.toggle("current", k === state.frame));
  const img = $("photo");
  img.alt = `${photo.name} (${state.frame + 1} of ${e.photos.length})${photo.blurred ? ", people blurred" : ""}`;
  $("boxes").textContent = "";
  if (photo.hidden) {
    img.removeAttribute("src");
    status("This video shows people and cannot be blurred: start the review with --show-people to see it.");
    return;
  }
  let url;
  try {
    url = await photoBlob(photoUrl(e, photo));
  } catch (error) { // a file moved since the run: the event can still be reviewed
    if (state.event === e) {
      img.removeAttribute("src");
      status(`${photo.name}: ${error.message || error}`, true);
    }
    return;
  }
  if (state.event !== e || e.photos[state.frame] !== photo) return;
  if (img.src !== url) {
    img.src = url;
    try { await img.decode(); } catch (_) { /* shown broken; status below */ }
  }
  for (const b of photo.boxes) {
    const div = document.createElement("div");
    div.className = `box ${b.category}${b.static ? " static" : ""}`;
    Object.assign(div.style, {
      left: `${100 * b.x}%`, top: `${100 * b.y}%`, width: `${100 * b.w}%`, height: `${100 * b.h}%`,
    });
    const tag = document.createElement("span");
    tag.textContent = `${b.label || b.category} ${(100 * (b.probability ?? b.confidence)).toFixed(0)}%`;
    div.appendChild(tag);
    $("boxes").appendChild(div);
  }
}

async function save(label) {
  const e = state.event;
  if (!e || state.saving) return;
  state.saving = true;
  const countText = $("count").value.trim();
  const body = {
    event_id: e.event_id,
    label,
    count: label === "blank" || countText === "" ? null : Number(countText),
    comment: $("comment").value.trim() || null,
  };
  try {
    const saved = await json("api/reviews", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Trapline-Review": "1" },
      body: JSON.stringify(body),
    });
    showProgress(saved.progress);
    const r = saved.event.review;
    status(`Saved ${e.event_id}: ${r.label}${r.count != null ? ` ×${r.count}` : ""}`);
    document.body.dataset.saved = String(Number(document.body.dataset.saved || 0) + 1);
    if (state.filter.unreviewed) {
      state.pages.clear(); // the event left the list: the same position is the next one
      await show(state.pos);
    } else {
      for (const events of state.pages.values()) {
        const k = events.findIndex((x) => x.event_id === e.event_id);
        if (k >= 0) events[k] = saved.event;
      }
      if (state.pos + 1 < state.total) await show(state.pos + 1);
      else { await show(state.pos); status(`Saved ${e.event_id}: ${r.label}. That was the last event.`); }
    }
  } catch (error) {
    status(`Not saved: ${error.message || error}`, true);
  } finally {
    state.saving = false;
  }
}

// ---- taxon search ----

function search(text) {
  const q = text.trim().toLowerCase();
  const scored = [];
  for (const n of state.names) {
    const label = n.label.toLowerCase();
    const sci = (n.scientific_name || "").toLowerCase();
    let score = -1;
    if (!q) score = 3;
    else if (label === q || sci === q) score = 0;
    else if (label.startsWith(q) || sci.startsWith(q)) score = 1;
    else if (label.includes(q) || sci.includes(q)) score = 2;
    if (score >= 0) scored.push([score, n]);
  }
  scored.sort((a, b) => a[0] - b[0]);
  const found = scored.slice(0, 40).map((s) => s[1]);
  if (q && !found.some((n) => n.label.toLowerCase() === q || (n.scientific_name || "").toLowerCase() === q)) {
    found.push({ label: text.trim(), scientific_name: null, rank: null, source: "typed" });
  }
  return found;
}

function renderMatches() {
  const list = $("taxon-list");
  list.textContent = "";
  state.matches.forEach((n, i) => {
    const li = document.createElement("li");
    li.setAttribute("role", "option");
    li.dataset.label = n.label;
    li.className = i === state.active ? "active" : "";
    li.textContent = n.source === "typed" ? `use “${n.label}” as typed ` : `${n.label} `;
    const small = document.createElement("small");
    small.textContent = [n.scientific_name !== n.label ? n.scientific_name : null, n.rank, n.source]
      .filter(Boolean).join(" · ");
    li.appendChild(small);
    li.addEventListener("mousedown", (ev) => { ev.preventDefault(); choose(i); });
    list.appendChild(li);
  });
  list.hidden = state.matches.length === 0 || document.activeElement !== $("taxon");
  $("taxon").setAttribute("aria-expanded", String(!list.hidden));
  const active = list.children[state.active];
  if (active) active.scrollIntoView({ block: "nearest" });
}

function choose(i) {
  const n = state.matches[i];
  if (!n) return;
  $("taxon").value = "";
  $("taxon").blur();
  $("taxon-list").hidden = true;
  save(n.label);
}

// ---- filters ----

function readFilters() {
  state.filter = {
    deployment: $("f-deployment").value,
    label: $("f-label").value,
    min: $("f-min").value,
    max: $("f-max").value,
    unreviewed: $("f-unreviewed").checked,
  };
  state.pages.clear();
  show(0);
}

function fillSelect(select, values) {
  for (const v of values) {
    const o = document.createElement("option");
    o.value = o.textContent = v;
    select.appendChild(o);
  }
}

// ---- keys ----

function onKey(ev) {
  const t = ev.target;
  const typing = (t instanceof HTMLInputElement && t.type !== "checkbox") ||
    t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement;
  if (t === $("taxon")) {
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      const n = state.matches.length;
      if (n) state.active = (state.active + (ev.key === "ArrowDown" ? 1 : n - 1)) % n;
      renderMatches();
    } else if (ev.key === "Enter") {
      ev.preventDefault();
      choose(state.active);
    } else if (ev.key === "Escape") {
      t.value = "";
      t.blur();
      $("taxon-list").hidden = true;
    }
    return;
  }
  if (typing) {
    if (ev.key === "Escape" || (ev.key === "Enter" && (t === $("count") || t === $("comment")))) {
      ev.preventDefault();
      t.blur();
    }
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const key = ev.key;
  const act = {
    a: () => state.event && save(state.event.label),
    Enter: () => state.event && save(state.event.label),
    b: () => save("blank"),
    p: () => save("person"),
    v: () => save("vehicle"),
    t: () => $("taxon").focus(),
    "/": () => $("taxon").focus(),
    c: () => $("comment").focus(),
    ArrowRight: () => show(state.pos + 1 < state.total ? state.pos + 1 : state.pos),
    j: () => show(state.pos + 1 < state.total ? state.pos + 1 : state.pos),
    ArrowLeft: () => show(state.pos - 1),
    Home: () => show(0),
    End: () => show(Math.max(0, state.total - 1)),
    k: () => show(state.pos - 1),
    ".": () => showFrame(state.frame + 1),
    ",": () => showFrame(state.frame - 1),
    "+": () => bump(1),
    "=": () => bump(1),
    "-": () => bump(-1),
    u: () => { $("f-unreviewed").checked = !$("f-unreviewed").checked; readFilters(); },
  }[key.length === 1 ? key.toLowerCase() : key];
  if (act) {
    ev.preventDefault();
    act();
  } else if (/^[0-9]$/.test(key)) {
    ev.preventDefault();
    $("count").value = key;
  }
}

function bump(step) {
  const now = Number($("count").value || 0);
  $("count").value = String(Math.max(0, now + step));
}

async function start() {
  try {
    state.meta = await json("api/meta");
  } catch (error) {
    status(`Cannot load: ${error.message || error}`, true);
    return;
  }
  if (token() && !sessionStorage.getItem("trapline-reviewer")) {
    // the upload API knows the program, not the person: ask once per tab
    const name = (window.prompt("Your name (recorded with each review):") || "").trim();
    if (name) {
      sessionStorage.setItem("trapline-reviewer", name);
      state.meta = await json("api/meta");
    }
  }
  state.names = state.meta.names;
  fillSelect($("f-deployment"), state.meta.deployments);
  fillSelect($("f-label"), state.meta.labels);
  $("reviewer").textContent = state.meta.reviewer ? `Reviewer: ${state.meta.reviewer}` : "";
  showProgress({ reviewed: state.meta.reviewed, total: state.meta.total });
  document.addEventListener("keydown", onKey);
  $("filters").addEventListener("change", readFilters);
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); readFilters(); });
  $("b-accept").addEventListener("click", () => state.event && save(state.event.label));
  $("b-blank").addEventListener("click", () => save("blank"));
  $("b-person").addEventListener("click", () => save("person"));
  $("b-vehicle").addEventListener("click", () => save("vehicle"));
  $("b-next").addEventListener("click", () => show(state.pos + 1 < state.total ? state.pos + 1 : state.pos));
  $("b-prev").addEventListener("click", () => show(state.pos - 1));
  $("taxon").addEventListener("input", () => {
    state.matches = search($("taxon").value);
    state.active = 0;
    renderMatches();
  });
  $("taxon").addEventListener("focus", () => {
    state.matches = search($("taxon").value);
    state.active = 0;
    renderMatches();
  });
  $("taxon").addEventListener("blur", () => { $("taxon-list").hidden = true; });
  await show(0);
  document.body.dataset.ready = "1";
}

start();
