// ctfleet web: sign in, upload a study straight to S3 with presigned POSTs, follow it, review results.
"use strict";
const $ = (id) => document.getElementById(id);
const FINAL = new Set(["DONE", "REJECTED", "FAILED"]);

// -- signing in: Cognito's InitiateAuth, called from the page (no SDK); the access token is kept
// for this tab only (sessionStorage) and sent as a bearer token with every API call.
let config = null;
const session = {
  get token() { return sessionStorage.getItem("ctfleet.token"); },
  set(token) { sessionStorage.setItem("ctfleet.token", token); },
  clear() { sessionStorage.removeItem("ctfleet.token"); },
};

async function cognito(action, body) {
  const c = config.cognito;
  const endpoint = c.endpoint || `https://cognito-idp.${c.region}.amazonaws.com/`;
  const r = await fetch(endpoint, { method: "POST", body: JSON.stringify(body), headers: {
    "content-type": "application/x-amz-json-1.1", "x-amz-target": `AWSCognitoIdentityProviderService.${action}` } });
  const out = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(out.message || out.__type || `sign-in failed (HTTP ${r.status})`);
  return out;
}

let challenge = null; // {name, session, username} while an MFA code is awaited
async function signIn(e) {
  e.preventDefault();
  $("signin-error").textContent = "";
  try {
    const username = $("username").value.trim();
    let out;
    if (challenge) {
      out = await cognito("RespondToAuthChallenge", { ClientId: config.cognito.client_id, ChallengeName: challenge.name,
        Session: challenge.session, ChallengeResponses: { USERNAME: challenge.username, SOFTWARE_TOKEN_MFA_CODE: $("mfa").value.trim() } });
    } else {
      out = await cognito("InitiateAuth", { ClientId: config.cognito.client_id, AuthFlow: "USER_PASSWORD_AUTH",
        AuthParameters: { USERNAME: username, PASSWORD: $("password").value } });
    }
    if (out.ChallengeName === "SOFTWARE_TOKEN_MFA") {
      challenge = { name: out.ChallengeName, session: out.Session, username };
      $("mfa-label").hidden = false; $("mfa").focus();
      return;
    }
    if (!out.AuthenticationResult) throw new Error(`sign-in needs a step this page cannot take (${out.ChallengeName})`);
    challenge = null;
    session.set(out.AuthenticationResult.AccessToken);
    $("password").value = ""; $("mfa").value = "";
    signedIn();
  } catch (err) {
    $("signin-error").textContent = err.message;
  }
}

function claims(token) {
  // For display only: the API verifies the token, the page merely shows whose it is.
  const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(part + "=".repeat((4 - part.length % 4) % 4)));
}

function signedIn() {
  const c = claims(session.token);
  const groups = c["cognito:groups"] || [];
  const of = (prefix) => (groups.find((g) => g.startsWith(prefix)) || "").slice(prefix.length);
  $("whoami").textContent = `${c.username || "signed in"} · ${of("role:")} · ${of("facility:")}`;
  $("signin").hidden = true; $("mfa-label").hidden = true;
  $("whoami").hidden = false; $("signout").hidden = false;
  document.querySelector("main").hidden = false;
  refresh().catch(() => {});
  route();
}

function signOut(message) {
  session.clear(); challenge = null;
  document.querySelector("main").hidden = true;
  $("whoami").hidden = true; $("signout").hidden = true; $("signin").hidden = false;
  $("signin-error").textContent = message || "";
}

const api = (path, opts = {}) => fetch("/api" + path, { ...opts,
  headers: { ...(opts.headers || {}), authorization: `Bearer ${session.token}` } }).then(async (r) => {
  const body = await r.json().catch(() => ({}));
  if (r.status === 401) signOut("Your session has ended; sign in again.");
  if (!r.ok) throw new Error(`${body.error || r.status}: ${body.message || "request failed"}`);
  return body;
});

async function sha256(file) {
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function step(text) {
  const li = document.createElement("li");
  li.textContent = text;
  $("progress").appendChild(li);
  return (t) => { li.textContent = t; };
}

async function send(files) {
  files = files.filter((f) => f.size > 0 || files.length === 1);
  if (!files.length) return;
  const say = step(`Preparing ${files.length} files…`);
  try {
    const listing = [];
    for (const f of files) listing.push({ name: f.webkitRelativePath || f.name, size: f.size, sha256: await sha256(f) });
    const up = await api("/uploads", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ priority: $("priority").value, files: listing }) });
    const byName = new Map(files.map((f, i) => [listing[i].name, f]));
    let sent = 0;
    for (const target of up.files) {
      const form = new FormData();
      for (const [k, v] of Object.entries(target.fields)) form.append(k, v);
      form.append("file", byName.get(target.name));
      const r = await fetch(target.url, { method: "POST", body: form });
      if (!r.ok) throw new Error(`upload of a file failed (HTTP ${r.status})`);
      say(`Uploading… ${++sent}/${up.files.length}`);
    }
    await api(`/uploads/${up.upload_id}/complete`, { method: "POST" });
    say(`Upload ${up.upload_id.slice(0, 8)}: received, checking…`);
    follow(up.upload_id, say);
  } catch (err) {
    say(`Upload failed: ${err.message}`);
  }
}

async function follow(uploadId, say) {
  for (;;) {
    const up = await api(`/uploads/${uploadId}`);
    if (up.status === "REJECTED" || up.status === "FAILED") { say(`Upload ${uploadId.slice(0, 8)}: ${up.status} (${up.reason})`); return; }
    if (up.status === "QUEUED") {
      const st = await api(`/studies/${up.study_key}`);
      say(`Study ${up.study_key}: ${st.status}${st.triage_level ? " — " + st.triage_level : ""}`);
      if (FINAL.has(st.status)) { refresh(); return; }
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function refresh() {
  const { studies } = await api("/studies");
  const rows = $("rows");
  rows.replaceChildren();
  if (!studies.length) { rows.innerHTML = '<tr><td colspan="6">No studies yet.</td></tr>'; return; }
  for (const s of studies) {
    const tr = document.createElement("tr");
    const cells = [s.study_key, s.status, s.triage_level || "", s.score != null ? s.score.toFixed(2) : "",
      s.severity_score != null ? `${s.severity_score}/24` : "", s.created_at || ""];
    cells.forEach((c, i) => { const td = document.createElement("td"); td.textContent = c; if (i === 1 || i === 2) td.className = c; tr.appendChild(td); });
    tr.addEventListener("click", () => { location.hash = `#/studies/${s.study_key}`; });
    rows.appendChild(tr);
  }
}

async function showStudy(key) {
  const st = await api(`/studies/${key}`);
  $("study").hidden = false;
  $("study-key").textContent = key;
  const facts = { Status: st.status + (st.reason ? ` (${st.reason})` : ""), Triage: st.triage_level, Score: st.score,
    "Severity (0–24)": st.severity_score, Model: st.model_version };
  const dl = $("study-facts");
  dl.replaceChildren();
  for (const [k, v] of Object.entries(facts)) {
    if (v == null) continue;
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v; if (k === "Triage") dd.className = v;
    dl.append(dt, dd);
  }
  const box = $("overlays");
  box.replaceChildren();
  for (const [name, url] of Object.entries(st.result_urls || {})) {
    if (!name.endsWith(".png")) continue;
    const fig = document.createElement("figure");
    const img = document.createElement("img"); img.src = url; img.alt = name;
    const cap = document.createElement("figcaption"); cap.textContent = name.replace("overlay/", "");
    fig.append(img, cap); box.appendChild(fig);
  }
}

function route() {
  const m = location.hash.match(/^#\/studies\/([0-9a-f]+)$/);
  if (m) showStudy(m[1]).catch((e) => step(`Could not open study: ${e.message}`));
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (e) => {
  e.preventDefault(); drop.classList.remove("over");
  const files = [];
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const f = await new Promise((res, rej) => entry.file(res, rej));
      files.push(new File([f], f.name)); Object.defineProperty(files[files.length - 1], "webkitRelativePath", { value: prefix + f.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const child of batch) await walk(child, prefix + entry.name + "/");
      }
    }
  };
  for (const item of e.dataTransfer.items) { const entry = item.webkitGetAsEntry(); if (entry) await walk(entry, ""); }
  send(files);
});
$("folder").addEventListener("change", (e) => send([...e.target.files]));
$("files").addEventListener("change", (e) => send([...e.target.files]));
$("refresh").addEventListener("click", refresh);
$("signin").addEventListener("submit", signIn);
$("signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
fetch("config.json").then((r) => r.json()).then((c) => {
  config = c;
  if (session.token) signedIn();
}).catch(() => { $("signin-error").textContent = "Could not load the page's configuration."; });
