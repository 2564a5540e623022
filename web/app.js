// ctfleet web: upload a study straight to S3 with presigned POSTs, follow it, review results.
"use strict";
const api = (path, opts) => fetch("/api" + path, opts).then(async (r) => {
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`${body.error || r.status}: ${body.message || "request failed"}`);
  return body;
});
const $ = (id) => document.getElementById(id);
const facility = () => $("facility").value.trim();
const FINAL = new Set(["DONE", "REJECTED", "FAILED"]);

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
      body: JSON.stringify({ facility: facility(), priority: $("priority").value, files: listing }) });
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
  const { studies } = await api(`/studies?facility=${encodeURIComponent(facility())}`);
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
    "Severity (0–24)": st.severity_score, Model: st.model_version, "GPU seconds": st.gpu_seconds, "Cost (USD)": st.cost_usd };
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
$("facility").addEventListener("change", refresh);
window.addEventListener("hashchange", route);
refresh().catch(() => {});
route();
