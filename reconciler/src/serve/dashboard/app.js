// The cplane dashboard: a small script over the JSON API, served by cplane itself (no build
// step, no CDN). Sign-in is OIDC authorization code + PKCE against the configured issuer;
// the access token is kept in sessionStorage and sent as a bearer token, so what a user sees
// is exactly what the API lets them read.
//
// Live updates: the page follows `GET /v1/events` (server-sent events, read with fetch so the
// bearer token can be sent) and redraws when something happens, at most once a second; a
// slow poll catches what sends no event (an agent's routine report).

const main = document.getElementById("main");
const who = document.getElementById("who");
const POLL_MS = 15000;
const REDRAW_GAP_MS = 1000;
// After a write, its outcome stays on screen this long before a live redraw.
const HOLD_MS = 5000;
let config = null;
let holdUntil = 0;
let renders = 0;
// The clusters last fetched: the search and the state filter redraw from them.
let fleet = [];
let timer = null;
let stream = null;
// The newest events received by the live stream (newest last), for the activity page.
const recent = [];

const esc = (s) =>
  String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const when = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "never");
const short = (s) => esc(String(s || "").slice(0, 12));
const STATE_CLASS = { "in-sync": "ok", done: "ok", completed: "ok", behind: "wait", progressing: "wait", baking: "wait", published: "wait", pending: "wait", held: "wait", paused: "bad", failed: "bad", offline: "bad", aborted: "bad", "never-reported": "wait", suspended: "wait" };
const stateCell = (s) => `<span class="${STATE_CLASS[s] || ""}">${esc(s ?? "unknown")}</span>`;

function b64url(bytes) {
  let s = "";
  for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function discovery() {
  const r = await fetch(config.issuer.replace(/\/$/, "") + "/.well-known/openid-configuration");
  if (!r.ok) throw new Error(`issuer discovery: HTTP ${r.status}`);
  return r.json();
}

async function signIn() {
  const d = await discovery();
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
  sessionStorage.setItem("pkce", JSON.stringify({ verifier, state }));
  const q = new URLSearchParams({
    response_type: "code",
    client_id: config.client_id,
    redirect_uri: location.origin + "/ui/",
    scope: "openid email profile",
    state,
    code_challenge: challenge,
    code_challenge_method: "S256",
  });
  location.assign(`${d.authorization_endpoint}?${q}`);
}

async function finishSignIn(params) {
  const saved = JSON.parse(sessionStorage.getItem("pkce") || "{}");
  sessionStorage.removeItem("pkce");
  if (!saved.state || saved.state !== params.get("state")) throw new Error("sign-in: the state does not match");
  const d = await discovery();
  const r = await fetch(d.token_endpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: params.get("code"),
      redirect_uri: location.origin + "/ui/",
      client_id: config.client_id,
      code_verifier: saved.verifier,
    }),
  });
  const body = await r.json();
  if (!r.ok) throw new Error(`sign-in: ${body.error_description || body.error}`);
  sessionStorage.setItem("token", body.access_token);
  history.replaceState(null, "", "/ui/#/");
}

function signOut() {
  sessionStorage.removeItem("token");
  stream?.abort();
  stream = null;
  render();
}

async function api(path, init = {}) {
  const token = sessionStorage.getItem("token");
  const r = await fetch(path, {
    ...init,
    headers: { ...(init.headers || {}), authorization: `Bearer ${token}` },
  });
  if (r.status === 401) {
    signOut();
    throw new Error("signed out");
  }
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  return { status: r.status, body };
}

// Server-sent events as text (`id:`, `event:`, `data:` lines, a blank line between events).
function parseSse(block) {
  const e = { id: null, data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith("id:")) e.id = line.slice(3).trim();
    else if (line.startsWith("data:")) e.data += line.slice(5).trim();
  }
  if (!e.data) return null;
  try {
    return { id: e.id, event: JSON.parse(e.data) };
  } catch {
    return null;
  }
}

// Reads `path` (an SSE response) to its end, calling `each` per event.
async function readEvents(path, signal, each, headers = {}) {
  const r = await fetch(path, { signal, headers: { ...headers, authorization: `Bearer ${sessionStorage.getItem("token")}` } });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  const reader = r.body.getReader();
  const text = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += text.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const e = parseSse(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (e) each(e);
    }
  }
}

// Follows the live stream for as long as the user is signed in, resuming after the last
// event seen (`Last-Event-ID`) when the connection drops.
function live() {
  if (stream) return;
  const controller = new AbortController();
  stream = controller;
  let last = null;
  let lastDraw = 0;
  let pending = null;
  const redraw = () => {
    const wait = Math.max(0, lastDraw + REDRAW_GAP_MS - Date.now(), holdUntil - Date.now());
    if (pending) return;
    pending = setTimeout(() => {
      pending = null;
      lastDraw = Date.now();
      render();
    }, wait);
  };
  (async () => {
    while (stream === controller) {
      try {
        await readEvents("/v1/events", controller.signal, ({ id, event }) => {
          last = id ?? last;
          recent.push(event);
          if (recent.length > 200) recent.shift();
          redraw();
        }, last ? { "last-event-id": last } : {});
      } catch {
        /* dropped: retried below */
      }
      await new Promise((ok) => setTimeout(ok, 3000));
    }
  })();
}

function condition(conds, type) {
  return (conds || []).find((c) => c.type === type);
}

function readyCell(status) {
  const ready = condition(status?.conditions, "Ready");
  if (!ready) return `<span class="wait">pending</span>`;
  const cls = ready.status === "True" ? "ok" : ready.reason === "Reconciling" ? "wait" : "bad";
  return `<span class="${cls}">${esc(ready.reason)}</span>`;
}

const STANDINGS = ["in-sync", "behind", "failed", "offline", "never-reported", "suspended"];

async function overview() {
  const [status, workspaces, clusters, commits] = await Promise.all([
    api("/v1/status"),
    api("/v1/workspaces"),
    api("/v1/clusters"),
    eventsOnce("io.cplane.commit.applied,io.cplane.commit.refused"),
  ]);
  const run = status.body.last_run || {};
  const ws = Array.isArray(workspaces.body) ? workspaces.body : [];
  const cl = Array.isArray(clusters.body) ? clusters.body : [];
  const byRegion = {};
  for (const c of cl) {
    const k = `${c.region} / ${c.environment}`;
    byRegion[k] ??= Object.fromEntries(STANDINGS.map((s) => [s, 0]));
    byRegion[k][c.state] = (byRegion[k][c.state] || 0) + 1;
  }
  const byReady = {};
  for (const w of ws) {
    const r = condition(w.status?.conditions, "Ready")?.reason || "Pending";
    byReady[r] = (byReady[r] || 0) + 1;
  }
  return `
    <h1>Overview</h1>
    <div class="card" id="last-run">Last run: <b class="${run.outcome === "converged" ? "ok" : "wait"}">${esc(run.outcome || "none yet")}</b>
      at commit <code>${short(run.commit)}</code>, ${esc(run.steps ?? 0)} steps;
      errors: ${esc(run.errors_hidden ?? (run.errors || []).length)}</div>
    <h2>Clusters by region × environment</h2>
    <table id="regions"><tr><th>Region / environment</th>${STANDINGS.map((s) => `<th>${esc(s)}</th>`).join("")}</tr>
      ${Object.entries(byRegion)
        .map(([k, n]) => `<tr><td>${esc(k)}</td>${STANDINGS.map((s) => `<td>${n[s] ? `<a href="#/clusters?state=${s}">${n[s]}</a>` : 0}</td>`).join("")}</tr>`)
        .join("")}</table>
    <h2>Workspaces (${ws.length}): ${Object.entries(byReady).map(([r, n]) => `${esc(r)} ${n}`).join(", ")}</h2>
    <table id="workspaces"><tr><th>Workspace</th><th>Region</th><th>Environment</th><th>Stacks</th><th>Ready</th></tr>
      ${ws
        .slice(0, 500)
        .map((w) => `<tr><td><a href="#/workspaces/${esc(w.id)}">${esc(w.id)}</a></td><td>${esc(w.spec.region)}</td>
        <td>${esc(w.spec.environment)}</td><td>${esc((w.spec.stacks || []).map((s) => s.name).join(", "))}</td>
        <td>${readyCell(w.status)}</td></tr>`)
        .join("")}</table>${ws.length > 500 ? `<p>first 500 of ${ws.length}</p>` : ""}
    <h2>Last runs</h2>
    ${eventTable("runs", commits.slice(-10).reverse(), "no commit applied yet (operators only)")}`;
}

function valueInputs(ws, stack, declared) {
  const current = (ws.spec.stacks.find((s) => s.name === stack) || {}).values || {};
  return Object.entries(declared || {})
    .map(([key, d]) => {
      const v = key in current ? current[key] : d.default;
      const shown = d.type === "string" && typeof v === "string" ? v : JSON.stringify(v ?? null);
      return `<tr><td><label for="v-${esc(stack)}-${esc(key)}"><code>${esc(key)}</code></label><br><small>${esc(d.description)}</small></td>
        <td><input type="text" id="v-${esc(stack)}-${esc(key)}" name="${esc(key)}" data-type="${esc(d.type)}" data-initial="${esc(shown)}" value="${esc(shown)}"></td></tr>`;
    })
    .join("");
}

async function workspace(id) {
  const [w, stacks, cs, hist] = await Promise.all([
    api(`/v1/workspaces/${encodeURIComponent(id)}`),
    api("/v1/stacks"),
    api(`/v1/clusters/w-${encodeURIComponent(id)}/status`),
    api(`/v1/workspaces/${encodeURIComponent(id)}/history?limit=10`),
  ]);
  if (w.status !== 200) return `<h1>Workspace ${esc(id)}</h1><p class="bad">${esc(w.body.error || w.status)}</p>`;
  const ws = w.body;
  const declared = Object.fromEntries((Array.isArray(stacks.body) ? stacks.body : []).map((s) => [s.name, s.spec.values]));
  const c = cs.status === 200 ? cs.body : null;
  const report = c?.reported?.report;
  const objects = Array.isArray(report?.objects) ? report.objects : [];
  const steps = ws.status?.steps || [];
  const changes = hist.status === 200 ? hist.body.changes : [];
  const enabled = new Set(ws.spec.stacks.map((s) => s.name));
  const addable = Object.keys(declared).filter((n) => !enabled.has(n));
  return `
    <h1>Workspace ${esc(ws.id)}</h1>
    <div class="card">Region <b>${esc(ws.spec.region)}</b>, environment <b>${esc(ws.spec.environment)}</b>,
      account <b>${esc(ws.spec.account)}</b>; file <code>${esc(ws.file)}</code> at commit <code id="commit">${short(ws.commit)}</code></div>
    <h2>Conditions</h2>
    <table id="conditions"><tr><th>Type</th><th>Status</th><th>Reason</th><th>Message</th></tr>
      ${(ws.status?.conditions || []).map((x) => `<tr><td>${esc(x.type)}</td><td>${esc(x.status)}</td><td>${esc(x.reason)}</td><td>${esc(x.message)}</td></tr>`).join("")}</table>
    <h2>Provisioning steps</h2>
    ${steps.length
      ? `<table id="steps"><tr><th>Step</th><th>State</th><th>Resource</th><th>Attempts</th><th>Error</th><th>Updated</th></tr>
      ${steps.map((s) => `<tr><td>${esc(s.step)}</td><td>${stateCell(s.state)}</td><td><code>${esc(s.resource)}</code></td><td>${esc(s.attempts)}</td><td>${esc(s.error)}</td><td>${when(s.updated_at)}</td></tr>`).join("")}</table>`
      : `<p id="steps">No cloud step has run for this workspace (no cloud is configured, or it is suspended).</p>`}
    <h2>Cluster w-${esc(ws.id)}</h2>
    <div class="card" id="agent">${
      c
        ? `State ${stateCell(c.state)}${c.behind_by ? `, behind by ${esc(c.behind_by)}` : ""}, last seen ${when(c.last_seen)};
           agent ${esc(report?.agent_version || "unknown")}, ${report ? `${report.healthy ? '<span class="ok">healthy</span>' : '<span class="bad">not healthy</span>'}: ${esc(report.message)}` : "no report yet"}
           ${c.rollout ? `<br>Rollout <a href="#/rollouts/${esc(c.rollout.id)}">${esc(c.rollout.id)}</a> has not reached it: ${esc(c.rollout.cluster_state)} ${esc(c.rollout.message)}` : ""}`
        : "no cluster published yet"
    }</div>
    ${objects.length ? `<table id="objects"><tr><th>Object</th><th>Result</th><th>Health</th><th>Message</th></tr>
      ${objects.map((o) => `<tr><td>${esc(o.kind)} ${esc(o.namespace ? o.namespace + "/" : "")}${esc(o.name)}</td><td>${esc(o.result)}</td><td>${esc(o.health)}</td><td>${esc(o.message)}</td></tr>`).join("")}</table>` : ""}
    <h2>Stacks</h2>
    ${ws.spec.stacks
      .map(
        (s) => `<form class="card stack" data-stack="${esc(s.name)}"><h3>${esc(s.name)}</h3>
          <table>${valueInputs(ws, s.name, declared[s.name])}</table>
          ${modeChoice()}<button type="submit">Commit ${esc(s.name)}</button>
          <button type="button" class="disable" data-stack="${esc(s.name)}">Disable ${esc(s.name)}</button> <span class="result"></span></form>`,
      )
      .join("")}
    ${addable.length ? `<form class="card enable" id="enable"><label>Enable a stack <select name="stack">${addable.map((n) => `<option>${esc(n)}</option>`).join("")}</select></label>
      ${modeChoice()}<button type="submit">Enable</button> <span class="result"></span></form>` : ""}
    <h2>History of <code>${esc(ws.file)}</code></h2>
    <table id="history"><tr><th>Commit</th><th>Author</th><th>When</th><th>Message</th></tr>
      ${changes.map((h) => `<tr><td><code>${short(h.commit)}</code></td><td>${esc(h.author)} &lt;${esc(h.email)}&gt;</td><td>${when(h.time * 1000)}</td><td>${esc(h.summary)}</td></tr>`).join("")}</table>`;
}

// "Commit" or "Pull request", where the server has a forge to open pull requests on.
function modeChoice() {
  if (!config.pull_requests) return "";
  return `<label><select name="mode"><option value="commit">Commit to the branch</option><option value="pr">Open a pull request</option></select></label> `;
}

function showWriteResult(out, r) {
  if (r.status === 200 || r.status === 201) {
    if (r.body.pull_request) {
      out.innerHTML = `<span class="ok">pull request <a href="${esc(r.body.pull_request.url)}">#${esc(r.body.pull_request.number)}</a> from <code>${esc(r.body.branch)}</code></span>`;
    } else if (r.body.branch) {
      out.innerHTML = `<span class="ok">pushed branch <code>${esc(r.body.branch)}</code></span>`;
    } else {
      out.innerHTML = r.body.changed ? `<span class="ok">committed <code>${short(r.body.commit)}</code></span>` : `<span>no change</span>`;
    }
  } else {
    const errs = r.body.errors || [{ message: r.body.error || `HTTP ${r.status}` }];
    out.innerHTML = `<div class="errors">${errs.map((e) => esc(e.file ? `${e.file}:${e.line}:${e.column}: ${e.message}` : e.message)).join("\n")}</div>`;
  }
}

// A write through the API, as the signed-in user; the outcome stays on screen for a poll.
async function write(form, method, path, body) {
  const out = form.querySelector(".result");
  const mode = form.querySelector('select[name="mode"]')?.value;
  out.textContent = mode === "pr" ? "opening a pull request…" : "committing…";
  holdUntil = Date.now() + HOLD_MS;
  clearTimeout(timer);
  timer = setTimeout(render, POLL_MS);
  const r = await api(path + (mode === "pr" ? "?mode=pr" : ""), {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  showWriteResult(out, r);
}

async function submitStack(form) {
  const values = {};
  // Only the fields the user changed: the others stay as the file has them (or unset).
  for (const input of form.querySelectorAll("input")) {
    if (input.value === input.dataset.initial) continue;
    const raw = input.value;
    let v = raw;
    if (input.dataset.type !== "string") {
      try {
        v = JSON.parse(raw);
      } catch {
        v = raw; // sent as written: the server says what is wrong with it, and where
      }
    }
    values[input.name] = v;
  }
  const id = location.hash.split("/")[2];
  if (!Object.keys(values).length) {
    form.querySelector(".result").textContent = "nothing changed";
    return;
  }
  await write(form, "PATCH", `/v1/workspaces/${encodeURIComponent(id)}/stacks/${encodeURIComponent(form.dataset.stack)}`, { values });
}

async function stackSwitch(form, enable) {
  const id = location.hash.split("/")[2];
  const stack = enable ? form.querySelector('select[name="stack"]').value : form.dataset.stack;
  const path = `/v1/workspaces/${encodeURIComponent(id)}/stacks/${encodeURIComponent(stack)}`;
  if (!enable && !confirm(`Disable ${stack} on ${id}? Its objects are removed from the cluster.`)) return;
  await (enable ? write(form, "PUT", path, { values: {} }) : write(form, "DELETE", path));
}

function hashQuery() {
  return new URLSearchParams(location.hash.split("?")[1] || "");
}

async function clusters() {
  const r = await api("/v1/clusters");
  fleet = Array.isArray(r.body) ? r.body : [];
  return clustersHtml();
}

// The clusters page from the last fetched list (typing in the search does not refetch it).
function clustersHtml() {
  const all = fleet;
  const q = (document.getElementById("q")?.value ?? hashQuery().get("q") ?? "").toLowerCase();
  const state = document.getElementById("state")?.value ?? hashQuery().get("state") ?? "";
  const shown = all.filter(
    (c) => (!state || c.state === state) && (!q || c.id.includes(q) || c.region.includes(q) || c.environment.includes(q)),
  );
  return `<h1>Clusters (${all.length})</h1>
    <p><input type="text" id="q" placeholder="filter by id, region or environment" value="${esc(q)}">
      <select id="state"><option value="">any state</option>${STANDINGS.map((s) => `<option${s === state ? " selected" : ""}>${s}</option>`).join("")}</select>
      <span id="matches">${shown.length} match</span></p>
    <table id="clusters"><tr><th>Cluster</th><th>Kind</th><th>Region</th><th>Environment</th><th>State</th><th>Generation</th><th>Last seen</th><th>Digest</th></tr>
      ${shown
        .slice(0, 200)
        .map((c) => `<tr><td>${c.kind === "tenant" ? `<a href="#/workspaces/${esc(c.id.slice(2))}">${esc(c.id)}</a>` : esc(c.id)}</td><td>${esc(c.kind)}</td>
          <td>${esc(c.region)}</td><td>${esc(c.environment)}</td><td>${stateCell(c.state)}${c.behind_by ? ` (${esc(c.behind_by)})` : ""}</td><td>${esc(c.generation)}</td>
          <td>${when(c.last_seen)}</td><td><code>${esc(c.digest.slice(7, 19))}</code></td></tr>`)
        .join("")}</table>${shown.length > 200 ? `<p>first 200 of ${shown.length}; filter to narrow</p>` : ""}`;
}

// Redraws `html` in place, keeping the focused control and its caret.
function draw(html) {
  const a = document.activeElement;
  const focus = a?.id;
  const caret = a?.tagName === "INPUT" ? a.selectionStart : null;
  const open = [...main.querySelectorAll("details[open] summary")].map((s) => s.textContent);
  main.innerHTML = html;
  for (const d of main.querySelectorAll("details")) if (open.includes(d.querySelector("summary").textContent)) d.open = true;
  const el = focus && document.getElementById(focus);
  if (el) {
    el.focus();
    if (caret !== null && el.setSelectionRange) el.setSelectionRange(caret, caret);
  }
}

async function rollouts() {
  const r = await api("/v1/rollouts");
  if (r.status !== 200) return `<h1>Rollouts</h1><p class="bad">${esc(r.body.error || r.status)}</p>`;
  const list = r.body.rollouts || [];
  return `<h1>Rollouts</h1>
    ${list.length ? "" : "<p>No rollout yet: a commit that changes bundles starts one.</p>"}
    <table id="rollouts"><tr><th>Rollout</th><th>Stacks</th><th>State</th><th>Wave</th><th>Commit</th><th>Started</th></tr>
      ${list
        .map((x) => `<tr><td><a href="#/rollouts/${esc(x.id)}">${esc(x.id)}</a></td><td>${esc((x.stacks || []).join(", "))}</td><td>${stateCell(x.state)}</td>
          <td>${esc(x.wave + 1)} of ${esc(x.waves)}</td><td><code>${short(x.commit)}</code></td><td>${when(x.created_at)}</td></tr>`)
        .join("")}</table>`;
}

async function rollout(id) {
  const r = await api(`/v1/rollouts/${encodeURIComponent(id)}`);
  if (r.status !== 200) return `<h1>Rollout ${esc(id)}</h1><p class="bad">${esc(r.body.error || r.status)}</p>`;
  const x = r.body;
  const active = ["progressing", "baking", "paused"].includes(x.state);
  const button = (a, label) => `<button type="button" class="control" data-action="${a}" data-id="${esc(x.id)}">${label}</button>`;
  return `<h1>Rollout ${esc(x.id)}</h1>
    <div class="card">State ${stateCell(x.state)}${x.reason ? `: ${esc(x.reason)}` : ""}; wave <b>${esc(x.wave_name)}</b> for ${esc(x.seconds_in_wave)} s;
      stacks ${esc((x.stacks || []).join(", "))}; commit <code>${short(x.commit)}</code></div>
    ${active ? `<p id="controls">${x.state === "paused" ? button("resume", "Resume") : button("pause", "Pause")} ${button("promote", "Promote")} ${button("abort", "Abort")} <span class="result"></span></p>` : ""}
    <table id="waves"><tr><th>Wave</th><th>Clusters</th><th>Done</th><th>Published</th><th>Pending</th><th>Failed</th><th>Skipped</th></tr>
      ${(x.waves || []).map((w) => `<tr class="${w.current ? "current" : ""}"><td>${esc(w.name)}${w.current ? " ◀" : ""}</td><td>${w.clusters}</td><td>${w.done}</td><td>${w.published}</td><td>${w.pending}</td><td>${w.failed}</td><td>${w.skipped}</td></tr>`).join("")}</table>
    <h2>Clusters not done</h2>
    <table id="members"><tr><th>Wave</th><th>Cluster</th><th>State</th><th>Agent</th><th>Message</th></tr>
      ${(x.waves || [])
        .flatMap((w) => w.members.filter((m) => m.state !== "done").map((m) => [w.name, m]))
        .slice(0, 200)
        .map(([w, m]) => `<tr><td>${esc(w)}</td><td>${esc(m.cluster)}</td><td>${stateCell(m.state)}</td><td>${stateCell(m.agent)}</td><td>${esc(m.message)}</td></tr>`)
        .join("")}</table>
    <h2>Events</h2>
    <table id="rollout-events"><tr><th>When</th><th>Who</th><th>What</th><th>Detail</th></tr>
      ${(x.events || []).map((e) => `<tr><td>${when(e.at)}</td><td>${esc(e.actor)}</td><td>${esc(e.action)}</td><td>${esc(e.detail)}</td></tr>`).join("")}</table>`;
}

async function control(button) {
  const out = button.parentElement.querySelector(".result");
  out.textContent = `${button.dataset.action}…`;
  const r = await api(`/v1/rollouts/${encodeURIComponent(button.dataset.id)}/${button.dataset.action}`, { method: "POST" });
  out.innerHTML = r.status < 300 ? `<span class="ok">${esc(button.dataset.action)}: done</span>` : `<span class="bad">${esc(r.body.error || r.status)}</span>`;
  setTimeout(render, 500);
}

const objectName = (o) => esc(`${o.kind} ${o.namespace ? o.namespace + "/" : ""}${o.name}`);

// Plan of the branch head, or of any revision (a branch, a commit, a pull request's ref such
// as refs/pull/7/head), which the server fetches from the remote if it lacks it.
async function plan() {
  const rev = document.getElementById("rev")?.value ?? hashQuery().get("rev") ?? "";
  const r = rev
    ? await api("/v1/plan", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ rev }) })
    : await api("/v1/plan");
  const p = r.body || {};
  const form = `<form id="plan-form" class="card"><label>Revision <input type="text" id="rev" placeholder="branch head; or a branch, commit or refs/pull/N/head" value="${esc(rev)}"></label> <button type="submit">Plan</button></form>`;
  if (r.status >= 400 && r.status !== 422) return `<h1>Plan</h1>${form}<p class="bad">${esc(p.error || r.status)}</p>`;
  if (p.valid === false) {
    return `<h1>Plan of <code>${short(p.commit)}</code></h1>${form}<p class="bad">Invalid: nothing would be applied.</p>
      <div class="errors" id="plan-errors">${(p.errors || []).map((e) => esc(`${e.file}:${e.line}:${e.column}: ${e.message}`)).join("\n")}</div>`;
  }
  const steps = p.plan?.steps || [];
  const clusters = p.clusters || [];
  return `<h1>Plan of <code id="plan-commit">${short(p.commit)}</code></h1>${form}
    <h2>Cloud and database steps (${steps.length})</h2>
    <table id="plan-steps"><tr><th>Workspace</th><th>Action</th><th>Why</th></tr>
      ${steps.map((s, i) => `<tr><td>${esc(s.workspace)}</td><td>${esc(s.action)}${(p.skipped || []).includes(i) ? " (skipped: no cloud)" : ""}</td><td>${esc(s.reason)}</td></tr>`).join("")}</table>
    <h2>Clusters (${clusters.length} changed)</h2>
    ${clusters
      .slice(0, 50)
      .map(
        (c) => `<div class="card plan-cluster"><h3>${esc(c.cluster)}</h3>
        ${(c.added || []).map((o) => `<div class="ok">+ ${objectName(o)}</div>`).join("")}
        ${(c.removed || []).map((o) => `<div class="bad">- ${objectName(o)}</div>`).join("")}
        ${(c.changed || []).map((o) => `<details><summary>~ ${objectName(o)}</summary><pre class="diff">${esc(o.diff)}</pre></details>`).join("")}</div>`,
      )
      .join("")}
    ${(p.notes || []).map((n) => `<p class="wait">${esc(n)}</p>`).join("")}`;
}

// Events retained in the outbox of the given types (`follow=false`: what is there, then the end).
async function eventsOnce(types) {
  const out = [];
  try {
    await readEvents(`/v1/events?after=0&follow=false&type=${encodeURIComponent(types)}`, undefined, ({ event }) => out.push(event));
  } catch {
    /* shown as none */
  }
  return out;
}

function eventTable(id, events, none) {
  if (!events.length) return `<p id="${id}">${esc(none)}</p>`;
  return `<table id="${id}"><tr><th>When</th><th>Event</th><th>Subject</th><th>What</th></tr>
    ${events
      .map((e) => {
        const d = e.data || {};
        const what = d.repairs || d.repaired || d.errors || d.error || d.message || d.reason || d.commit || "";
        return `<tr><td>${esc(e.time)}</td><td>${esc(e.type.replace("io.cplane.", ""))}</td><td>${esc(e.subject)}</td><td>${esc(Array.isArray(what) ? what.map((x) => (typeof x === "string" ? x : JSON.stringify(x))).join("; ") : typeof what === "string" ? what : JSON.stringify(what))}</td></tr>`;
      })
      .join("")}</table>`;
}

async function activity() {
  const drift = await eventsOnce("drift.*");
  return `<h1>Activity</h1>
    <h2>Drift found and repaired</h2>
    ${eventTable("drift", drift.slice(-100).reverse(), "No drift found: the cloud and the database match the state repo.")}
    <h2>Live (since this page opened)</h2>
    ${eventTable("live", recent.slice().reverse(), "Nothing yet: events appear here as they happen.")}`;
}

async function page() {
  const [path] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/");
  if (parts[0] === "workspaces" && parts[1]) return workspace(decodeURIComponent(parts[1]));
  if (parts[0] === "clusters") return clusters();
  if (parts[0] === "rollouts" && parts[1]) return rollout(decodeURIComponent(parts[1]));
  if (parts[0] === "rollouts") return rollouts();
  if (parts[0] === "plan") return plan();
  if (parts[0] === "activity") return activity();
  return overview();
}

async function render() {
  clearTimeout(timer);
  if (!config) config = await (await fetch("/ui/config.json")).json();
  const params = new URLSearchParams(location.search);
  try {
    if (params.get("code")) await finishSignIn(params);
  } catch (e) {
    main.innerHTML = `<p class="bad">${esc(e.message)}</p>`;
    return;
  }
  if (!sessionStorage.getItem("token")) {
    who.textContent = "";
    main.innerHTML = config.issuer
      ? `<h1>cplane</h1><p>Sign in with ${esc(config.issuer)}.</p><button id="signin">Sign in</button>`
      : `<p class="bad">No OIDC issuer is configured on this server: the dashboard cannot sign anyone in.</p>`;
    document.getElementById("signin")?.addEventListener("click", () => signIn().catch((e) => (main.innerHTML = `<p class="bad">${esc(e.message)}</p>`)));
    return;
  }
  try {
    const me = await api("/v1/me");
    who.innerHTML = `${esc(me.body.principal?.email || "")} <button type="button" id="signout">Sign out</button>`;
    live();
    // Keep what the user is typing: a page with a form being edited is not redrawn.
    const a = document.activeElement;
    const editing = a && (a.tagName === "INPUT" || a.tagName === "SELECT") && !["q", "state", "rev"].includes(a.id);
    if (!editing) {
      // Renders overlap (a live event, the poll, a click): only the newest one draws.
      const mine = ++renders;
      const html = await page();
      if (mine === renders) draw(html);
    }
  } catch (e) {
    if (e.message !== "signed out") main.innerHTML = `<p class="bad">${esc(e.message)}</p>`;
    return;
  }
  timer = setTimeout(render, POLL_MS);
}

main.addEventListener("submit", (e) => {
  e.preventDefault();
  if (e.target.id === "plan-form") render();
  else if (e.target.id === "enable") stackSwitch(e.target, true);
  else submitStack(e.target);
});
main.addEventListener("click", (e) => {
  if (e.target.classList.contains("control")) control(e.target);
  else if (e.target.classList.contains("disable")) stackSwitch(e.target.form, false);
});
main.addEventListener("input", (e) => {
  if (e.target.id === "q" || e.target.id === "state") draw(clustersHtml());
});
who.addEventListener("click", (e) => {
  if (e.target.id === "signout") signOut();
});
window.addEventListener("hashchange", render);
render();
