// The dashboard's only script: refresh the jobs table every few seconds, and send the
// approve / reject decisions of retraining requests. Nothing is loaded from elsewhere.
"use strict";
(() => {
  const body = document.body;
  const project = body.dataset.project;
  const poll = Number(body.dataset.poll) || 2000;
  const statusNames = { started: "running", queued: "queued", deferred: "waiting",
                        scheduled: "scheduled", finished: "finished", failed: "failed",
                        stopped: "stopped", canceled: "canceled" };

  const cell = (row, text, className) => {
    const td = document.createElement("td");
    if (text instanceof Node) td.appendChild(text); else td.textContent = text ?? "—";
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  };

  const when = (iso) => {
    if (!iso) return "—";
    const date = new Date(iso.endsWith("Z") || iso.includes("+") ? iso : iso + "Z");
    return isNaN(date) ? iso : date.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  };

  const progress = (job) => {
    const box = document.createElement("div");
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    const share = job.progress == null ? 0 : job.progress;
    fill.style.width = `${Math.round(share * 100)}%`;
    bar.appendChild(fill);
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuenow", String(Math.round(share * 100)));
    bar.dataset.job = job.id;
    const text = document.createElement("div");
    text.className = "progress-text";
    const parts = [];
    if (job.phase) parts.push(job.phase);
    if (job.total) parts.push(`${job.done} of ${job.total}${job.phase === "training" ? " epochs" : ""}`);
    if (job.progress != null) parts.push(`${Math.round(share * 100)}%`);
    if (job.rate) parts.push(`${job.rate} tasks/s`);
    if (job.rate && job.eta_s != null && job.status === "started") parts.push(`ETA ${Math.round(job.eta_s)} s`);
    text.textContent = parts.join(" · ") || "—";
    box.append(bar, text);
    return box;
  };

  const renderJobs = (jobs) => {
    const table = document.getElementById("jobs-body");
    if (!table) return;
    const rows = jobs.map((job) => {
      const row = document.createElement("tr");
      row.dataset.job = job.id;
      cell(row, `${job.project} · ${job.kind}`);
      const badge = document.createElement("span");
      badge.className = `badge ${job.status}`;
      badge.textContent = statusNames[job.status] || job.status;
      cell(row, badge);
      cell(row, progress(job));
      cell(row, when(job.enqueued_at));
      cell(row, when(job.ended_at));
      cell(row, job.error || "", "small");
      return row;
    });
    if (!rows.length) {
      const row = document.createElement("tr");
      const td = cell(row, "No jobs right now.", "empty");
      td.colSpan = 6;
      rows.push(row);
    }
    table.replaceChildren(...rows);
    const stamp = document.getElementById("jobs-updated");
    if (stamp) stamp.textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
  };

  const refreshJobs = async () => {
    const query = project ? `?project=${encodeURIComponent(project)}` : "";
    try {
      const response = await fetch(`/dashboard/api/jobs${query}`, {
        credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) return;
      renderJobs((await response.json()).jobs);
    } catch (error) {
      // the server restarting: try again at the next tick
    }
  };

  const show = (text, kind) => {
    const box = document.getElementById("message");
    if (!box) return;
    box.textContent = text;
    box.className = `message shown ${kind}`;
  };

  document.querySelectorAll("button[data-action]").forEach((button) => {
    button.addEventListener("click", async () => {
      const { action, request } = button.dataset;
      document.querySelectorAll(`button[data-request="${CSS.escape(request)}"]`)
        .forEach((b) => { b.disabled = true; });
      try {
        const response = await fetch(
          `/dashboard/api/retraining/${encodeURIComponent(request)}/${action}`, {
            method: "POST", credentials: "same-origin",
            headers: { "X-Labelpilot-Dashboard": "1", Accept: "application/json" } });
        const answer = await response.json();
        if (!response.ok) {
          show(answer.error || `${action} failed (${response.status})`, "error");
          document.querySelectorAll(`button[data-request="${CSS.escape(request)}"]`)
            .forEach((b) => { b.disabled = false; });
          return;
        }
        show(action === "approve" ? "Approved: the new version is serving now. Reloading…"
                                  : "Rejected: the current version keeps serving. Reloading…",
             "ok");
        setTimeout(() => window.location.reload(), 800);
      } catch (error) {
        show(`could not reach the server: ${error}`, "error");
      }
    });
  });

  if (document.getElementById("jobs-body")) {
    refreshJobs();
    setInterval(refreshJobs, poll);
  }
})();
