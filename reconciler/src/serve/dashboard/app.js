// The cplane dashboard: a small script over the JSON API, served by cplane itself (no build
// step, no CDN). Sign-in is OIDC authorization code + PKCE against the configured issuer;
// the access token is kept in sessionStorage and sent as a bearer token, so what a user sees
// is exactly what the API lets them read.

const main = document.getElementById("main");
const who = document.getElementById("who");
const POLL_MS = 5000;
let config = null;
let timer = null;

const esc = (s) =>
  String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

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

async function api(path, init = {}) {
  const token = sessionStorage.getItem("token");
  const r = await fetch(path, {
    ...init,
    headers: { ...(init.headers || {}), authorization: `Bearer ${token}` },
  });
  if (r.status === 401) {
    sessionStorage.removeItem("token");
    render();
    throw new Error("signed out");
  }
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  return { status: r.status, body };
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

async function overview() {
  const [status, workspaces, clusters] = await Promise.all([api("/v1/status"), api("/v1/workspaces"), api("/v1/clusters")]);
  const run = status.body.last_run || {};
  const ws = Array.isArray(workspaces.body) ? workspaces.body : [];
  const cl = Array.isArray(clusters.body) ? clusters.body : [];
  const byRegion = {};
  for (const c of cl) {
    const k = `${c.region} / ${c.environment}`;
    byRegion[k] = (byRegion[k] || 0) + 1;
  }
  return `
    <h1>Overview</h1>
    <div class="card">Last run: <b class="${run.outcome === "converged" ? "ok" : "wait"}">${esc(run.outcome || "none yet")}</b>
      at commit <code>${esc((run.commit || "").slice(0, 12))}</code>, ${esc(run.steps ?? 0)} steps;
      errors: ${esc((run.errors || []).length)}</div>
    <h2>Regions × environments</h2>
    <table><tr><th>Region / environment</th><th>Clusters</th></tr>
      ${Object.entries(byRegion).map(([k, n]) => `<tr><td>${esc(k)}</td><td>${n}</td></tr>`).join("")}</table>
    <h2>Workspaces (${ws.length})</h2>
    <table id="workspaces"><tr><th>Workspace</th><th>Region</th><th>Environment</th><th>Stacks</th><th>Ready</th></tr>
      ${ws.map((w) => `<tr><td><a href="#/workspaces/${esc(w.id)}">${esc(w.id)}</a></td><td>${esc(w.spec.region)}</td>
        <td>${esc(w.spec.environment)}</td><td>${esc((w.spec.stacks || []).map((s) => s.name).join(", "))}</td>
        <td>${readyCell(w.status)}</td></tr>`).join("")}</table>`;
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
  const [w, stacks, cs] = await Promise.all([
    api(`/v1/workspaces/${encodeURIComponent(id)}`),
    api("/v1/stacks"),
    api(`/v1/clusters/w-${encodeURIComponent(id)}/status`),
  ]);
  if (w.status !== 200) return `<h1>Workspace ${esc(id)}</h1><p class="bad">${esc(w.body.error || w.status)}</p>`;
  const ws = w.body;
  const declared = Object.fromEntries((Array.isArray(stacks.body) ? stacks.body : []).map((s) => [s.name, s.spec.values]));
  const c = cs.status === 200 ? cs.body : null;
  const report = c?.reported?.report;
  const objects = Array.isArray(report?.objects) ? report.objects : [];
  return `
    <h1>Workspace ${esc(ws.id)}</h1>
    <div class="card">Region <b>${esc(ws.spec.region)}</b>, environment <b>${esc(ws.spec.environment)}</b>,
      account <b>${esc(ws.spec.account)}</b>; file <code>${esc(ws.file)}</code> at commit <code id="commit">${esc(ws.commit.slice(0, 12))}</code></div>
    <h2>Conditions</h2>
    <table id="conditions"><tr><th>Type</th><th>Status</th><th>Reason</th><th>Message</th></tr>
      ${(ws.status?.conditions || []).map((x) => `<tr><td>${esc(x.type)}</td><td>${esc(x.status)}</td><td>${esc(x.reason)}</td><td>${esc(x.message)}</td></tr>`).join("")}</table>
    <h2>Cluster w-${esc(ws.id)}</h2>
    <div class="card" id="agent">${
      c
        ? `State <b>${esc(c.state ?? (c.in_sync ? "in-sync" : "behind"))}</b>, in sync: <b>${esc(c.in_sync)}</b>;
           agent ${esc(report?.agent_version || "unknown")}, ${report ? `${report.healthy ? '<span class="ok">healthy</span>' : '<span class="bad">not healthy</span>'}: ${esc(report.message)}` : "no report yet"}`
        : "no cluster published yet"
    }</div>
    ${objects.length ? `<table id="objects"><tr><th>Object</th><th>Result</th><th>Health</th><th>Message</th></tr>
      ${objects.map((o) => `<tr><td>${esc(o.kind)} ${esc(o.namespace ? o.namespace + "/" : "")}${esc(o.name)}</td><td>${esc(o.result)}</td><td>${esc(o.health)}</td><td>${esc(o.message)}</td></tr>`).join("")}</table>` : ""}
    <h2>Stacks</h2>
    ${ws.spec.stacks
      .map(
        (s) => `<form class="card stack" data-stack="${esc(s.name)}"><h3>${esc(s.name)}</h3>
          <table>${valueInputs(ws, s.name, declared[s.name])}</table>
          <button type="submit">Commit ${esc(s.name)}</button> <span class="result"></span></form>`,
      )
      .join("")}`;
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
  const out = form.querySelector(".result");
  if (!Object.keys(values).length) {
    out.textContent = "nothing changed";
    return;
  }
  out.textContent = "committing…";
  // Leave the outcome on screen for a full poll interval before the page is redrawn.
  clearTimeout(timer);
  timer = setTimeout(render, POLL_MS);
  const r = await api(`/v1/workspaces/${encodeURIComponent(id)}/stacks/${encodeURIComponent(form.dataset.stack)}`, {
    method: "PATCH",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ values }),
  });
  if (r.status === 200 || r.status === 201) {
    out.innerHTML = r.body.changed
      ? `<span class="ok">committed <code>${esc(r.body.commit.slice(0, 12))}</code></span>`
      : `<span>no change</span>`;
  } else {
    const errs = r.body.errors || [{ message: r.body.error || `HTTP ${r.status}` }];
    out.innerHTML = `<div class="errors">${errs.map((e) => esc(e.file ? `${e.file}:${e.line}:${e.column}: ${e.message}` : e.message)).join("\n")}</div>`;
  }
}

async function clusters() {
  const r = await api("/v1/clusters");
  const all = Array.isArray(r.body) ? r.body : [];
  const q = (document.getElementById("q")?.value || "").toLowerCase();
  const shown = all.filter((c) => !q || c.id.includes(q) || c.region.includes(q) || c.environment.includes(q));
  return `<h1>Clusters (${all.length})</h1>
    <p><input type="text" id="q" placeholder="filter by id, region or environment" value="${esc(q)}"> ${shown.length} match</p>
    <table id="clusters"><tr><th>Cluster</th><th>Kind</th><th>Region</th><th>Environment</th><th>Generation</th><th>Digest</th></tr>
      ${shown
        .slice(0, 200)
        .map((c) => `<tr><td>${c.kind === "tenant" ? `<a href="#/workspaces/${esc(c.id.slice(2))}">${esc(c.id)}</a>` : esc(c.id)}</td><td>${esc(c.kind)}</td>
          <td>${esc(c.region)}</td><td>${esc(c.environment)}</td><td>${esc(c.generation)}</td><td><code>${esc(c.digest.slice(7, 19))}</code></td></tr>`)
        .join("")}</table>${shown.length > 200 ? `<p>first 200 of ${shown.length}; filter to narrow</p>` : ""}`;
}

async function page() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  if (parts[0] === "workspaces" && parts[1]) return workspace(decodeURIComponent(parts[1]));
  if (parts[0] === "clusters") return clusters();
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
    who.textContent = me.body.principal?.email || "";
    // Keep what the user is typing: a page with a form being edited is not redrawn.
    const editing = document.activeElement && document.activeElement.tagName === "INPUT" && document.activeElement.id !== "q";
    if (!editing) {
      const focus = document.activeElement?.id;
      main.innerHTML = await page();
      if (focus) document.getElementById(focus)?.focus();
    }
  } catch (e) {
    if (e.message !== "signed out") main.innerHTML = `<p class="bad">${esc(e.message)}</p>`;
    return;
  }
  timer = setTimeout(render, POLL_MS);
}

main.addEventListener("submit", (e) => {
  e.preventDefault();
  submitStack(e.target);
});
main.addEventListener("input", (e) => {
  if (e.target.id === "q") render();
});
window.addEventListener("hashchange", render);
render();
