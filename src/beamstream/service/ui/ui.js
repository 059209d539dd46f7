// The request service's pages (beamstream.service.routes.ui): everything they show comes from the service's API,
// asked with the caller's identity: the browser's client certificate, or a bearer token given once as
// #token=... in the page's address (kept for this tab in sessionStorage; sent as "Authorization: Bearer", or as
// ?token= where a browser sends no headers: EventSource). window.beamstreamUi holds what the page
// shows, for tests.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const root = location.pathname.slice(0, location.pathname.indexOf("/ui/"));
  const token = (() => {
    const given = new URLSearchParams(location.hash.slice(1)).get("token");
    if (given) sessionStorage.setItem("beamstream-token", given);
    return given || sessionStorage.getItem("beamstream-token");
  })();
  const shown = { streams: [], state: null, history: 0, logs: 0, problem: null };
  window.beamstreamUi = shown;
  const FINAL = new Set(["completed", "failed", "cancelled"]);

  async function api(path, as = "json") {
    const answer = await fetch(root + path, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    if (!answer.ok) {
      const problem = await answer.json().catch(() => ({}));
      throw new Error(answer.status === 401
        ? "The service does not know who you are: open this page with your client certificate, or add "
          + "#token=TOKEN to its address (beamstream tokens: POST /v1/tokens)."
        : `${answer.status}: ${problem.detail || answer.statusText}`);
    }
    return as === "json" ? answer.json() : answer.text();
  }

  function withToken(path) {
    const url = new URL(root + path, location.href);
    if (token) url.searchParams.set("token", token);
    return url;
  }

  function problem(error) {
    shown.problem = error ? String(error.message || error) : null;
    $("problem").hidden = !error;
    $("problem").textContent = shown.problem || "";
  }

  function cell(row, text, title) {
    const td = row.insertCell();
    td.textContent = text ?? "";
    if (title) td.title = title;
    return td;
  }

  function badge(element, state) {
    element.textContent = state;
    element.className = `state ${state}`;
  }

  function when(seconds) {
    return new Date(seconds * 1000).toLocaleTimeString();
  }

  function verdictOf(stream) {
    if (!stream.verdict) return "";
    return stream.verdict.complete ? "complete" : "incomplete";
  }

  const previous = new Map(); // stream id → its last figures: events/s between two looks
  function rateOf(id, figures) {
    if (!figures || figures.error || figures.events === undefined) return null;
    const last = previous.get(id);
    previous.set(id, figures);
    if (!last || figures.at <= last.at) return null;
    return (figures.events - last.events) / (figures.at - last.at);
  }

  // The list of the caller's streams, looked at again every second; the running ones with their figures.
  async function listStreams() {
    try {
      const page = await api("/v1/streams?limit=100");
      const running = page.items.filter((stream) => stream.state === "running").slice(0, 20);
      const figures = new Map(await Promise.all(running.map(async (stream) =>
        [stream.id, (await api(`/v1/streams/${stream.id}`)).figures])));
      const body = $("streams").tBodies[0];
      body.replaceChildren();
      for (const stream of page.items) {
        const row = body.insertRow();
        row.dataset.id = stream.id;
        const link = document.createElement("a");
        link.href = `streams/${stream.id}`;
        link.textContent = stream.id;
        cell(row, "").append(link);
        cell(row, stream.name);
        badge(cell(row, "").appendChild(document.createElement("span")), stream.state);
        cell(row, stream.owner);
        cell(row, stream.experiment);
        cell(row, stream.run);
        const rate = rateOf(stream.id, figures.get(stream.id));
        cell(row, rate === null ? "" : Math.round(rate).toLocaleString());
        const events = figures.get(stream.id)?.events;
        cell(row, events === undefined ? "" : events.toLocaleString());
        cell(row, verdictOf(stream), stream.verdict?.summary);
        cell(row, when(stream.updated));
      }
      shown.streams = page.items.map((stream) => ({ id: stream.id, state: stream.state, owner: stream.owner }));
      $("none").hidden = page.items.length > 0;
      problem(null);
    } catch (error) {
      problem(error);
    }
    setTimeout(listStreams, 1000);
  }

  // One stream: its history from the changes feed; its figures and logs looked at again while it runs and at
  // each change.
  function showStream() {
    const id = location.pathname.split("/").filter(Boolean).pop();
    $("stream").textContent = id;
    $("back").href = `${root}/ui/`;
    let timer = null;
    const look = async () => {
      try {
        const stream = await api(`/v1/streams/${id}`);
        facts(stream);
        $("logs").textContent = await api(`/v1/streams/${id}/logs?lines=200`, "text");
        shown.logs = $("logs").textContent.length;
        if (FINAL.has(stream.state)) clearInterval(timer);
        problem(null);
      } catch (error) {
        problem(error);
      }
    };
    const changes = new EventSource(withToken(`/v1/streams/${id}/events`));
    changes.addEventListener("change", (event) => {
      const change = JSON.parse(event.data);
      const row = $("history").tBodies[0].insertRow();
      [event.lastEventId, change.state, when(change.at), change.reason].forEach((text) => cell(row, text));
      shown.history += 1;
      if (FINAL.has(change.state)) changes.close(); // the feed ends with a final change: no reconnecting
      look();
    });
    changes.onerror = () => {
      if (changes.readyState === EventSource.CLOSED) look(); // refused: the API says why
    };
    look();
    timer = setInterval(look, 2000);
  }

  function facts(stream) {
    shown.state = stream.state;
    badge($("state"), stream.state);
    const figures = stream.figures || {};
    const rate = rateOf(stream.id, stream.figures);
    const items = [["owner", stream.owner], ["name", stream.name], ["experiment", stream.experiment],
                   ["run", stream.run], ["events", figures.events?.toLocaleString()],
                   ["events/s", rate === null ? null : Math.round(rate).toLocaleString()],
                   ["MB/s", figures.rate_bytes_per_s === undefined ? null : (figures.rate_bytes_per_s / 1e6).toFixed(1)]];
    $("facts").replaceChildren(...items.filter(([, value]) => value !== null && value !== undefined).map(([name, value]) => {
      const item = document.createElement("div");
      item.append(Object.assign(document.createElement("dt"), { textContent: name }),
                  Object.assign(document.createElement("dd"), { textContent: value }));
      return item;
    }));
    $("verdict").textContent = stream.verdict ? stream.verdict.summary : "";
    if (stream.state === "running" && $("viewer-panel").hidden) {
      $("viewer").src = `${root}/ui/streams/${stream.id}/view/` + (token ? `#token=${encodeURIComponent(token)}` : "");
      $("viewer-panel").hidden = false;
    }
  }

  if (document.body.dataset.page === "streams") listStreams(); else showStream();
})();
