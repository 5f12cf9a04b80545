// FedKeys operator dashboard: log in with the admin token, then refresh every few seconds.
// The token stays in this tab (sessionStorage) and travels as a bearer header, never a cookie,
// so no other site can make the browser send it.
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const KEY = "fedkeys-admin-token";
  const params = new URLSearchParams(location.search);
  // Between 0.5 s and an hour: past 2^31 ms the browser's timer wraps and fired continuously.
  const REFRESH_MS = Math.min(3600000, Math.max(500, Number(params.get("refresh_ms")) || 5000));
  let timer = null, chart = null, refreshes = 0;

  const fmtEps = (x) => (x === null || x === undefined) ? "–"
    : (typeof x === "number" ? (x >= 1000 ? x.toExponential(1) : x.toFixed(2)) : String(x).replace("inf", "∞"));
  const pct = (x) => (typeof x === "number") ? x.toFixed(1) + "%" : "–";
  const when = (iso) => iso ? iso.replace("T", " ").replace(/\.\d+Z$|Z$/, "") : "";

  function cells(tr, values) {
    for (const [v, cls] of values) {
      const td = document.createElement("td");
      td.textContent = (v === null || v === undefined) ? "" : String(v);
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
  }
  function fill(tbody, rows) {
    tbody.replaceChildren();
    for (const r of rows) { const tr = document.createElement("tr"); cells(tr, r); tbody.appendChild(tr); }
  }

  async function fetchData(token) {
    const resp = await fetch("/v1/admin/dashboard", { headers: { Authorization: "Bearer " + token } });
    if (resp.status === 401) throw Object.assign(new Error("the coordinator did not accept this token"), { auth: true });
    if (resp.status === 429) {   // too many wrong tokens from this address: say when to try again
      const body = await resp.json().catch(() => ({}));
      const wait = resp.headers.get("Retry-After");
      throw Object.assign(new Error((body.message || "too many requests") + (wait ? `; try again in ${wait} s` : "")),
                          { limited: true });
    }
    if (!resp.ok) {   // the coordinator answered: its message says what is wrong (a database, a disk)
      const body = await resp.json().catch(() => ({}));   // a proxy's 502 page is not the coordinator's word
      throw Object.assign(new Error(body.message || "HTTP " + resp.status), { answered: Boolean(body.message) });
    }
    return resp.json();
  }

  function showLogin(message) {
    showTrouble([], false);   // the banner was about the session that ends here
    clearInterval(timer);
    timer = null;
    sessionStorage.removeItem(KEY);
    $("#panels").hidden = true;
    $("#logout").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
    $("#token").focus();
  }

  function renderRound(r, d) {
    if (!r) { $("#round-id").textContent = "– none yet"; $("#round-status").textContent = ""; return; }
    $("#round-id").textContent = String(r.round_id);
    const plan = r.plan || {};
    let mode = plan.discover_words ? "word discovery, secure" : plan.secure_aggregation ? "secure" : "";
    if (mode && r.status === "open" && r.secure_phase) mode += ` (${r.secure_phase} step)`;
    $("#round-status").textContent = mode ? `${r.status} · ${mode}` : r.status;
    const n = d.rounds;   // how many rounds ended which way: a failing streak shows here
    $("#round-history").textContent = n ? `${n.total} rounds: ${n.done} done, ${n.failed} failed` : "";
    const set = (name, value, max, text) => {
      const m = $("#m-" + name);
      m.max = Math.max(1, max);
      m.value = value;
      $("#t-" + name).textContent = text;
    };
    set("selected", r.selected, r.max_selected, `${r.selected} of up to ${r.max_selected}`);
    set("uploaded", r.uploaded, r.goal_count, `${r.uploaded} (${r.rejected} rejected` +
        (r.masked > r.accepted ? `; ${r.masked} masked, accepted once summed)` : ")"));
    set("accepted", r.accepted, r.goal_count, `${r.accepted} of goal ${r.goal_count} (min ${r.min_count})`);
    const left = (Date.parse(r.deadline) - Date.parse(d.server_time)) / 1000;
    $("#round-deadline").textContent = r.status === "open"
      ? `deadline ${when(r.deadline)} UTC (${left > 0 ? Math.round(left) + " s left" : "passed"})`
      : `closed ${when(r.closed_at)} UTC${r.result_version_id ? " → " + r.result_version_id : ""}`;
    $("#round-reason").textContent = r.reason || "";
    const reasons = new Set([...Object.keys(r.rejection_reasons || {}), ...Object.keys(d.rejections_total)]);
    fill($("#rejections tbody"), [...reasons].sort().map((k) =>
      [[k], [(r.rejection_reasons || {})[k] || 0], [d.rejections_total[k] || 0]]));
  }

  function renderChart(versions) {
    const rows = versions.filter((v) => v.candidate_top3_pct !== null);
    const data = {
      labels: rows.map((v) => v.version_id),
      datasets: [
        { label: "candidate top-3 (%)", data: rows.map((v) => v.candidate_top3_pct), borderColor: "#2563eb",
          backgroundColor: "#2563eb", tension: 0 },
        { label: "stable it was compared with (%)", data: rows.map((v) => v.stable_top3_pct), borderColor: "#9ca3af",
          backgroundColor: "#9ca3af", borderDash: [4, 4], tension: 0 },
      ],
    };
    if (typeof Chart === "undefined") return;
    if (!chart) {
      chart = new Chart($("#history"), {
        type: "line", data,
        options: {
          animation: false, maintainAspectRatio: false,
          scales: {
            x: { title: { display: true, text: "version" } },
            y: { title: { display: true, text: "top-3 accuracy (%)" }, ticks: { callback: (v) => v + "%" } },
          },
        },
      });
    } else {
      chart.data = data;
      chart.update();
    }
  }

  // Above everything: what stops the service (a full disk), or why the figures below stopped
  // refreshing. An answer of 503 read "coordinator unreachable" in small print, beside panels
  // that went on showing the last figures, a countdown included (an operator's probe).
  function showTrouble(lines, stale) {
    const t = $("#trouble");
    t.textContent = lines.join(" · ");
    t.hidden = lines.length === 0;
    $("#panels").classList.toggle("stale", Boolean(stale));
  }

  function render(d) {
    showTrouble(d.trouble || [], false);
    $("#stable").textContent = d.stable_version_id || "none";
    $("#pinned").textContent = d.pinned ? "pinned: automatic promotion off" : "automatic promotion on";
    $("#candidate").textContent = d.candidate_version_id || "none";
    const c = d.canary;
    $("#canary-state").textContent = c.candidate_version_id ? `canary: ${c.would} (${c.reason})` : "no canary running";
    $("#devices").textContent = `${d.devices.enrolled} · ${d.devices.active_24h}`;
    $("#eps-local").textContent = fmtEps(d.privacy.epsilon_local);
    $("#eps-rounds").textContent = d.privacy.rounds === 1 ? "1 round" : `${d.privacy.rounds} rounds`;
    $("#eps").textContent = fmtEps(d.privacy.epsilon);
    $("#delta").textContent = String(d.privacy.delta);
    const pp = d.privacy.population || {};
    $("#population").textContent = pp.sampling ? `sampled ε: each round's q is ${pp.sampling}` : "";
    renderRound(d.round, d);
    fill($("#decisions tbody"), d.decisions.map((x) =>
      [[when(x.at)], [x.version_id], [x.action, x.action], [x.actor], [x.reason]]));
    fill($("#versions tbody"), [...d.versions].reverse().map((v) =>
      [[v.version_id], [v.files_pruned ? `${v.status} · files deleted` : v.status, v.status], [v.parent_id], [v.round_id], [v.canary_reports],
        [pct(v.candidate_top3_pct)], [pct(v.stable_top3_pct)], [fmtEps(v.epsilon_local)], [fmtEps(v.epsilon)]]));
    renderChart(d.versions);
    refreshes += 1;
    const u = $("#updated");
    u.dataset.refreshes = String(refreshes);
    u.textContent = "updated " + new Date().toLocaleTimeString() + ` · every ${REFRESH_MS / 1000} s`;
  }

  let inFlight = false, again = false;
  async function refresh() {
    const token = sessionStorage.getItem(KEY);
    if (!token) { showLogin(); return; }
    if (inFlight) { again = true; return; }   // a slow coordinator: no pile of overlapping requests
    inFlight = true;
    try {
      const data = await fetchData(token);
      // Logged out (or in again) while the answer was on its way: it is not shown.
      if (sessionStorage.getItem(KEY) !== token) return;
      render(data);
      $("#panels").hidden = false;
      $("#login").hidden = true;
      $("#logout").hidden = false;
    } catch (e) {
      if (sessionStorage.getItem(KEY) !== token) return;   // an answer for a session since ended
      if (e.auth) showLogin(e.message);
      else if (e.limited) $("#updated").textContent = e.message + " (retrying)";
      else showTrouble([(e.answered ? "the coordinator says: " : "coordinator unreachable: ") + e.message +
                        " — the figures below are from " + ($("#updated").textContent.replace(/^updated /, "")
                        .split(" · ")[0] || "no refresh yet") + " (retrying)"], true);
    } finally {
      inFlight = false;
      if (again) { again = false; refresh(); }   // e.g. a login while an old refresh was on its way
    }
  }

  function start() {
    clearInterval(timer);
    refresh();
    timer = setInterval(refresh, REFRESH_MS);
  }

  $("#login").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = $("#token").value.trim();
    try {
      await fetchData(token);
    } catch (err) {
      $("#login-error").textContent = err.message;
      return;
    }
    sessionStorage.setItem(KEY, token);
    $("#token").value = "";
    start();
    $("#logout").focus();              // the form that had the focus is hidden now
  });
  $("#logout").addEventListener("click", () => showLogin("logged out"));

  if (sessionStorage.getItem(KEY)) start(); else showLogin();
})();
