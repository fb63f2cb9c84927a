// The live view: polls /live/state and shows what the local Mixpanel received.
// Everything received is untrusted: it only ever reaches the page as textContent.
"use strict";

const POLL_MS = 500;
const MAX_ROWS = 500; // newest rows shown; the rest stay counted and filterable
const IDENTITY_EVENTS = new Set(["$identify", "$create_alias", "$merge"]);

const state = { events: [], rejected: [], profiles: [], groups: [], profilesJson: "", selected: null };
const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function show(record) {
  state.selected = record;
  const detail = $("detail");
  detail.className = "";
  detail.textContent = JSON.stringify(record, null, 2);
}

function formatTime(time) {
  if (typeof time !== "number") return "";
  const ms = time > 1e11 ? time : time * 1000; // Mixpanel takes seconds or milliseconds
  const date = new Date(ms);
  return date.toLocaleTimeString([], { hour12: false }) + "." + String(date.getMilliseconds()).padStart(3, "0");
}

function dedupKey(event) {
  const p = event.properties || {};
  return JSON.stringify([event.event, p.distinct_id, p.time, p.$insert_id]);
}

function renderEvents() {
  const nameFilter = $("filter-event").value.trim().toLowerCase();
  const idFilter = $("filter-distinct").value.trim().toLowerCase();
  const matches = (event) => {
    const p = event.properties || {};
    return (!nameFilter || String(event.event).toLowerCase().includes(nameFilter)) &&
      (!idFilter || String(p.distinct_id).toLowerCase().includes(idFilter));
  };
  const seen = new Set();
  const duplicate = state.events.map((event) => {
    const key = dedupKey(event);
    const again = seen.has(key);
    seen.add(key);
    return again;
  });
  const body = $("events").tBodies[0];
  const rows = [];
  for (let i = state.events.length - 1; i >= 0 && rows.length < MAX_ROWS; i--) {
    const event = state.events[i];
    if (!matches(event)) continue;
    const row = el("tr");
    row.dataset.event = String(event.event);
    row.append(el("td", formatTime((event.properties || {}).time)));
    const name = el("td", event.event);
    if (IDENTITY_EVENTS.has(event.event)) name.append(el("span", "identity", "badge"));
    row.append(name, el("td", (event.properties || {}).distinct_id));
    row.append(el("td", duplicate[i] ? "duplicate" : "", duplicate[i] ? "badge dup" : ""));
    if (event === state.selected) row.classList.add("selected");
    row.addEventListener("click", () => { show(event); renderEvents(); });
    rows.push(row);
  }
  body.replaceChildren(...rows);
  $("events-empty").hidden = rows.length > 0;
  $("events-empty").textContent = state.events.length ? "No event matches the filters." : "No events yet. Point an application at this server.";
  const names = [...new Set(state.events.map((event) => String(event.event)))].sort();
  $("event-names").replaceChildren(...names.map((name) => { const option = el("option"); option.value = name; return option; }));
}

function propertyList(properties) {
  const list = el("dl");
  for (const [key, value] of Object.entries(properties)) {
    list.append(el("dt", key), el("dd", typeof value === "string" ? value : JSON.stringify(value)));
  }
  return list;
}

function renderProfiles(targetId, items, title) {
  const target = $(targetId);
  const cards = items.map((item) => {
    const card = el("div", undefined, "profile");
    card.dataset.id = title(item);
    card.append(el("strong", title(item)), propertyList(item.properties));
    return card;
  });
  target.replaceChildren(...(cards.length ? cards : [el("p", "None yet.", "empty")]));
}

function renderRejected() {
  const rows = state.rejected.slice().reverse().map((item) => {
    const row = el("tr");
    row.append(el("td", item.endpoint), el("td", item.reason, "reason"));
    row.addEventListener("click", () => show(item.record));
    return row;
  });
  $("rejected").tBodies[0].replaceChildren(...rows);
}

function renderCounts() {
  $("counts").textContent = `${state.events.length} events · ${state.profiles.length} profiles · ` +
    `${state.groups.length} groups · ${state.rejected.length} rejected`;
}

async function poll() {
  try {
    const query = `events=${state.events.length}&rejected=${state.rejected.length}`;
    const response = await fetch(`/live/state?${query}`, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const update = await response.json();
    // events_from is 0 when the server forgot what we hold (it was cleared): start over.
    const changed = update.events.length > 0 || update.events_from !== state.events.length ||
      update.rejected.length > 0 || update.rejected_from !== state.rejected.length;
    state.events = state.events.slice(0, update.events_from).concat(update.events);
    state.rejected = state.rejected.slice(0, update.rejected_from).concat(update.rejected);
    if (changed) { renderEvents(); renderRejected(); }
    // Re-render profiles only when they changed, so that a selection in them survives a poll.
    const profiles = JSON.stringify([update.profiles, update.groups]);
    if (profiles !== state.profilesJson) {
      state.profilesJson = profiles;
      state.profiles = update.profiles;
      state.groups = update.groups;
      renderProfiles("profiles", state.profiles, (item) => item.distinct_id);
      renderProfiles("groups", state.groups, (item) => `${item.group_key} = ${item.group_id}`);
    }
    renderCounts();
    $("status").textContent = "live";
    $("status").className = "status";
  } catch (error) {
    $("status").textContent = "server unreachable: retrying";
    $("status").className = "status down";
  }
  setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("filter-event").addEventListener("input", renderEvents);
  $("filter-distinct").addEventListener("input", renderEvents);
  renderEvents();
  poll();
});
