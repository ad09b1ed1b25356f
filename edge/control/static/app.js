// The edge dashboard: polls the control plane's JSON API with the token the operator typed
// (kept in sessionStorage) and renders it. Data only ever becomes text (textContent), never
// markup. Buttons call the same endpoints as the CLI; the API checks the token's scope.

const POLL_MS = 1500;
const KEY = "edge-token";
const $ = (id) => document.getElementById(id);

let timer = null;

class ApiError extends Error {
  constructor(status, reason, message) {
    super(message);
    this.status = status;
    this.reason = reason;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { authorization: `Bearer ${sessionStorage.getItem(KEY)}` } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(r.status, data.error || "http_error", data.message || r.statusText);
  return data;
}

function say(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function button(label, onClick, enabled = true) {
  const b = el("button", label);
  b.type = "button";
  b.disabled = !enabled;
  b.addEventListener("click", onClick);
  return b;
}

// Replaces a table's rows only when what they show changed, so a button is not swapped out
// under the pointer at every poll.
function fill(id, rows, signature, empty) {
  const body = $(id).tBodies[0];
  if (body.dataset.signature === signature) return;
  body.dataset.signature = signature;
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = body.insertRow();
    tr.append(el("td", empty, "empty"));
    tr.cells[0].colSpan = $(id).tHead.rows[0].cells.length;
    return;
  }
  // A cell is a string or number, {text, cls}, or {nodes: [elements]}.
  for (const cells of rows) {
    const tr = body.insertRow();
    for (const c of cells) {
      if (c !== null && typeof c === "object") {
        const td = el("td", c.text, c.cls);
        if (c.nodes) td.append(...c.nodes);
        tr.append(td);
      } else {
        tr.append(el("td", c));
      }
    }
  }
}

const num = (v, digits) => ({ text: v === null || v === undefined ? "-" : v.toFixed(digits), cls: "num" });

// Nodes up by the control plane's own /healthz checks where the server sends it.
const upNodes = (r) => r.up_nodes ?? r.healthy_nodes;

function health(r) {
  if (r.nodes === 0) return "no nodes";
  if (upNodes(r) === r.nodes) return "healthy";
  return upNodes(r) === 0 ? "down" : "degraded";
}

// --- actions ---------------------------------------------------------------------------------

// True when the API said yes.
async function act(what, method, path, body) {
  let done = false;
  try {
    const r = await api(method, path, body);
    say(`${what}: ${r.state ?? "done"}${r.changed === false ? " (unchanged)" : ""}, revision ${r.revision}`);
    done = true;
  } catch (e) {
    say(`${what}: ${e.message}`, true);
    if (e.status === 401) {
      signOut("the token was refused");
      return false;
    }
  }
  await refresh().catch(() => {}); // the next poll says what is wrong
  return done;
}

function regionAction(name, action) {
  const over_s = Number($("ramp").value);
  return act(`${action} ${name}`, "POST", `/v1/regions/${encodeURIComponent(name)}/${action}`, { over_s });
}

function forgetNode(id) {
  return act(`forget node ${id}`, "DELETE", `/v1/nodes/${encodeURIComponent(id)}`);
}

function functionAction(name, action) {
  const body = action === "rollback" ? { to: null } : {};
  return act(`${action} ${name}`, "POST", `/v1/functions/${encodeURIComponent(name)}/${action}`, body);
}

// Deleting is not undone by a click (the routes go; a deploy brings the function back), so the
// operator types its name first, as a typo-proof confirmation of which one.
let deleting = null; // the function the dialog asks about

function askDelete(name) {
  deleting = name;
  $("delete-name").textContent = name;
  $("delete-confirm").value = "";
  $("delete-ok").disabled = true;
  $("delete-dialog").showModal();
  $("delete-confirm").focus();
}

function closeDelete() {
  deleting = null;
  if ($("delete-dialog").open) $("delete-dialog").close();
}

$("delete-confirm").addEventListener("input", () => {
  $("delete-ok").disabled = $("delete-confirm").value !== deleting;
});
$("delete-cancel").addEventListener("click", closeDelete);
$("delete-dialog").addEventListener("close", () => { deleting = null; });
$("delete-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = deleting;
  if (name === null || $("delete-confirm").value !== name) return;
  closeDelete();
  act(`delete ${name}`, "DELETE", `/v1/functions/${encodeURIComponent(name)}`);
});

// --- configuration values ------------------------------------------------------------------

let configOf = null; // the function whose configuration is shown, if any
let configSecrets = new Set(); // its secret keys, as last shown

const configPath = (name) => `/v1/functions/${encodeURIComponent(name)}/config`;

function showConfig(name) {
  configOf = name;
  configSecrets = new Set();
  $("config-name").textContent = name;
  fill("config", [], `loading ${name}`, "loading");
  $("config-section").hidden = false;
  refresh().catch(() => {}); // polls say why
}

function closeConfig() {
  configOf = null;
  $("config-section").hidden = true;
}

// A secret could only be changed into a shown value here: its old value would be lost for good
// (nobody can read it back), so secrets are set and removed with the CLI.
$("config-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = configOf;
  const key = $("config-key").value.trim();
  if (name === null) return;
  if (configSecrets.has(key)) {
    say(`${key} of ${name} is a secret: change it with edge config set --secret`, true);
    return;
  }
  const body = { values: { [key]: $("config-value").value } };
  if (await act(`set ${key} of ${name}`, "PUT", configPath(name), body)) {
    $("config-key").value = "";
    $("config-value").value = "";
  }
});
$("config-close").addEventListener("click", closeConfig);

function unsetConfig(name, key) {
  return act(`unset ${key} of ${name}`, "PUT", configPath(name), { values: { [key]: null } });
}

// As `edge config list`: one row per key config.get finds, the value it reads and where from.
function renderConfig(name, answer) {
  if (answer instanceof Error) {
    fill("config", [], `error ${name} ${answer.message}`, `${name}: ${answer.message}`);
    return;
  }
  const toml = answer.edge_toml;
  const fromToml = new Map(toml === null ? [] : Object.entries(toml.config));
  const rows = new Map();
  for (const v of answer.values) {
    const over = fromToml.has(v.key) ? ` (over edge.toml v${toml.version})` : "";
    rows.set(v.key, [
      v.key,
      v.secret ? { text: "(secret)", cls: "secret" } : { text: v.value, cls: "value" },
      `edge config${over}`,
      // A secret has no Remove here for the reason the form refuses one.
      { nodes: v.secret ? [] : [button("Remove", () => unsetConfig(name, v.key))] },
    ]);
  }
  for (const [key, value] of fromToml) {
    if (!rows.has(key)) {
      rows.set(key, [key, { text: value, cls: "value" }, `edge.toml v${toml.version}`, ""]);
    }
  }
  configSecrets = new Set(answer.values.filter((v) => v.secret).map((v) => v.key));
  const keys = [...rows.keys()].sort();
  const empty = toml === null ? "no values, and no edge.toml (not deployed)"
    : `no values, and no [config] in edge.toml v${toml.version}`;
  fill("config", keys.map((k) => rows.get(k)), JSON.stringify([name, answer]), empty);
}

// --- rendering -------------------------------------------------------------------------------

function renderRegions(data) {
  const rows = data.regions.map((r) => [
    r.name,
    { text: r.state, cls: `state-${r.state}` },
    `${Math.round(r.share * 100)}%`,
    r.weight ?? "-",
    { text: health(r), cls: health(r) === "healthy" ? "" : "bad" },
    `${upNodes(r)}/${r.nodes}` + (r.stale_nodes ? ` (${r.stale_nodes} stale)` : ""),
    num(r.requests_per_s, 1),
    { nodes: [
      button("Drain", () => regionAction(r.name, "drain"), r.state !== "drained"),
      button("Undrain", () => regionAction(r.name, "undrain"), r.state !== "active"),
    ] },
  ]);
  const sig = JSON.stringify(data.regions.map((r) => [r.name, r.state, r.share, r.weight,
    r.nodes, upNodes(r), r.stale_nodes, r.requests_per_s]));
  fill("regions", rows, sig, "no regions yet");
}

function renderNodes(status) {
  $("revision").textContent = `revision ${status.revision}`;
  const rows = status.nodes.map((n) => [
    n.id,
    n.region,
    { text: n.applied_revision + (n.current ? "" : " (behind)"), cls: n.current ? "num" : "num bad" },
    { text: n.stale ? "stale" : n.healthy ? "yes" : "no", cls: n.healthy && !n.stale ? "" : "bad" },
    { text: n.check ?? "unknown", cls: n.check === "down" ? "bad" : "" },
    `${Math.round(n.last_seen_s_ago)} s ago`,
    { text: n.last_error || "", cls: "bad" },
    // Only a node that stopped reporting can be forgotten (the API refuses a live one).
    { nodes: n.stale ? [button("Forget", () => forgetNode(n.id))] : [] },
  ]);
  const sig = JSON.stringify(status.nodes.map((n) => [n.id, n.region, n.applied_revision,
    n.current, n.healthy, n.check, n.stale, Math.round(n.last_seen_s_ago), n.last_error]));
  fill("nodes", rows, sig, "no node has reported yet");
}

// As the CLI prints times: UTC to the second.
const utc = (unix) => new Date(unix * 1000).toISOString().slice(0, 19).replace("T", " ") + "Z";

// Versions are numbered 1..version_count (never deleted), so the count names them all.
function versionList(f) {
  return Array.from({ length: f.version_count }, (_, i) => {
    const v = i + 1;
    const tag = v === f.stable ? " stable" : v === f.canary ? " canary" : "";
    return el("span", `v${v}${tag} `, v === f.stable ? "stable" : "");
  });
}

function renderFunctions(listing) {
  const rows = listing.functions.map((f) => {
    const deployed = f.stable !== null;
    return [
      f.name,
      deployed ? `v${f.stable}` : { text: f.deleted ? "deleted" : "-", cls: f.deleted ? "bad" : "" },
      f.canary === null ? "-" : `v${f.canary} at ${f.canary_percent}% (${f.sticky})`,
      { nodes: versionList(f) },
      f.routes.join(" "),
      utc(f.created_unix),
      utc(f.updated_unix),
      { nodes: [
        button("Promote", () => functionAction(f.name, "promote"), f.canary !== null),
        button("Roll back", () => functionAction(f.name, "rollback"), deployed),
        button("Delete", () => askDelete(f.name), deployed),
        button("Config", () => showConfig(f.name)),
      ] },
    ];
  });
  fill("functions", rows, JSON.stringify(listing.functions), "no functions yet");
}

function renderTraffic(t) {
  $("window").textContent = `(last ${t.window_s} s)`;
  const byVersion = (row) => Object.entries(row.versions).map(([v, r]) => `v${v}: ${r.toFixed(1)}`).join("  ");
  const rows = [];
  for (const f of t.functions) {
    rows.push([{ text: f.function, cls: "stable" }, "all", num(f.requests_per_s, 1),
      num(f.p50_ms, 2), num(f.p99_ms, 2), byVersion(f)]);
    for (const r of t.regions.filter((r) => r.function === f.function)) {
      rows.push(["", r.region, num(r.requests_per_s, 1), num(r.p50_ms, 2), num(r.p99_ms, 2),
        byVersion(r)]);
    }
  }
  fill("traffic", rows, JSON.stringify([t.functions, t.regions]), "no requests in the window");
}

async function refresh() {
  const functions = $("show-deleted").checked ? "/v1/functions?deleted=1" : "/v1/functions";
  const name = configOf;
  // The config answer failing (say a 404) is said in its own table, not the page-wide message.
  const config = name === null ? null
    : api("GET", configPath(name)).catch((e) => (e.status === 401 ? Promise.reject(e) : e));
  const [regions, status, listing, traffic, values] = await Promise.all([
    api("GET", "/v1/regions"), api("GET", "/v1/status"), api("GET", functions),
    api("GET", "/v1/traffic"), config,
  ]);
  renderRegions(regions);
  renderNodes(status);
  renderFunctions(listing);
  renderTraffic(traffic);
  if (name !== null && name === configOf) renderConfig(name, values);
}

let pollFailed = false;

async function poll() {
  try {
    await refresh();
    if (pollFailed) say("");
    pollFailed = false;
  } catch (e) {
    if (e.status === 401) return signOut("the token was refused");
    say(e instanceof ApiError ? e.message : `control plane unreachable (${e.message})`, true);
    pollFailed = true;
  }
  timer = setTimeout(poll, POLL_MS);
}

// --- session ---------------------------------------------------------------------------------

function signOut(reason) {
  clearTimeout(timer);
  closeDelete();
  closeConfig();
  sessionStorage.removeItem(KEY);
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  say(reason || "", Boolean(reason));
}

function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  say("");
  poll();
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("token").value.trim());
  $("token").value = "";
  start();
});
$("logout").addEventListener("click", () => signOut());
$("show-deleted").addEventListener("change", () => refresh().catch(() => {})); // polls say why

if (sessionStorage.getItem(KEY)) start();
else signOut();
