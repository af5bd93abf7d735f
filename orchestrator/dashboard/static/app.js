// The Klein I2I dashboard: polls /dashboard.json every two seconds and draws it.
// Prompts, titles and errors are user input: every text goes through textContent, never HTML.
"use strict";

(() => {
  const POLL_MS = 2000;
  const FETCH_TIMEOUT_MS = 5000;
  const STAGES = [
    ["claim", "claim"], ["translate", "translate"], ["submit", "submit"],
    ["runpod_queue", "RunPod queue"], ["gpu", "GPU run"], ["store", "store"],
    ["title", "title"], ["finalize", "finalize"],
  ];
  const STATUSES = new Set(["pending", "taken", "processing", "completed", "failed", "cancelled"]);
  const WAITING = { pending: "waiting to be claimed", taken: "starting…", processing: "on RunPod" };
  const rows = new Map();

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setText(id, text) {
    document.getElementById(id).textContent = text;
  }

  function duration(s) {
    if (typeof s !== "number") return "–";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function clock(iso) {
    if (typeof iso !== "string") return "";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString();
  }

  function imageUrl(url) {
    if (typeof url !== "string") return null;
    try {
      const parsed = new URL(url, window.location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch {
      return null;
    }
  }

  function progressText(job) {
    const progress = job.progress;
    if (!progress) return WAITING[job.status] || "";
    let text = String(progress.stage);
    if (Number.isInteger(progress.step) && Number.isInteger(progress.steps)) {
      text += ` · step ${progress.step}/${progress.steps}`;
    }
    if (progress.node) text += ` (${progress.node})`;
    return text;
  }

  function progressFraction(job) {
    const progress = job.progress;
    if (job.status === "completed") return 1;
    if (!progress || !Number.isInteger(progress.step) || !(progress.steps > 0)) return 0;
    return Math.min(1, Math.max(0, progress.step / progress.steps));
  }

  // ------------------------------------------------------------------ panels

  function drawQueue(queue) {
    // A backlog's figures are counted up to a cap: one past it reads "1000+" (over_cap).
    const overCap = new Set(Array.isArray(queue.over_cap) ? queue.over_cap : []);
    const figure = (value, path) => `${value}${overCap.has(path) ? "+" : ""}`;
    for (const stage of ["pending", "taken", "processing"]) {
      const tile = document.getElementById(`queue-${stage}`);
      const figures = queue[stage];
      tile.querySelector(".count").textContent = figure(figures.count, `${stage}.count`);
      let detail = figures.count ? `oldest ${duration(figures.oldest_s)}` : "";
      if (figures.delayed) {
        detail += `, ${figure(figures.delayed, `${stage}.delayed`)} waiting to retry`;
      }
      tile.querySelector(".detail").textContent = detail;
    }
    for (const [bucket, count] of Object.entries(queue.by_age)) {
      const cell = document.getElementById(`age-${bucket}`);
      if (cell) cell.textContent = figure(count, `by_age.${bucket}`);
    }
  }

  function drawHour(hour) {
    setText("hour-completed", String(hour.completed));
    setText("hour-failed", String(hour.failed));
    setText("hour-cancelled", String(hour.cancelled));
    setText("hour-per-minute", String(hour.per_minute));
    setText("hour-p50", duration(hour.p50_s));
    setText("hour-p95", duration(hour.p95_s));
  }

  function drawFailures(failures) {
    const body = document.getElementById("failures");
    body.replaceChildren(...failures.map((failure) => {
      const tr = el("tr", "failure");
      tr.append(el("td", "reason", failure.reason), el("td", "count", failure.count),
        el("td", "when", clock(failure.last_at)));
      return tr;
    }));
    document.getElementById("no-failures").hidden = failures.length > 0;
  }

  function drawLegend() {
    const legend = document.getElementById("legend");
    legend.replaceChildren(...STAGES.map(([key, label]) => {
      const item = el("span", "legend-item");
      item.append(el("span", `swatch seg-${key}`), el("span", "", label));
      return item;
    }));
  }

  // ------------------------------------------------------------------ job rows

  function makeRow(jobId) {
    const tr = el("tr", "job");
    tr.dataset.jobId = jobId;
    const parts = {
      img: el("img", "thumb"),
      noImage: el("span", "no-image", "—"),
      title: el("div", "title"),
      id: el("div", "job-id", jobId.slice(0, 8)),
      age: el("div", "age"),
      status: el("span", "status"),
      attempts: el("div", "attempts"),
      error: el("div", "error"),
      prompt: el("div", "prompt"),
      sent: el("div", "sent-prompt"),
      progress: el("div", "progress"),
      fill: el("div", "fill"),
      timeline: el("div", "timeline"),
      total: el("div", "timeline-total"),
      timingsKey: "",
    };
    parts.img.alt = "output image";
    const bar = el("div", "progress-bar");
    bar.append(parts.fill);
    const cells = [
      [parts.img, parts.noImage],
      [parts.title, parts.id, parts.age],
      [parts.status, parts.attempts, parts.error],
      [parts.prompt, parts.sent],
      [parts.progress, bar],
      [parts.timeline, parts.total],
    ];
    for (const children of cells) {
      const td = el("td");
      td.append(...children);
      tr.append(td);
    }
    return { tr, parts };
  }

  function drawThumb(parts, job) {
    const url = imageUrl(job.thumbnail_url);
    parts.img.hidden = url === null;
    parts.noImage.hidden = url !== null;
    if (url !== null && parts.img.getAttribute("src") !== url) parts.img.src = url;
  }

  function drawStatus(parts, job) {
    const status = STATUSES.has(job.status) ? job.status : "unknown";
    parts.status.className = `status status-${status}`;
    parts.status.textContent = status;
    parts.attempts.textContent = job.retries > 0 ? `${job.retries} retries` : "";
    const retrying = job.status === "pending" && job.error;
    const shown = job.status === "failed" || retrying ? job.error || "no reason recorded" : "";
    parts.error.textContent = retrying ? `retrying: ${shown}` : shown;
  }

  function drawPrompt(parts, job) {
    parts.prompt.textContent = job.prompt ?? "";
    if (job.translation === "llm") parts.sent.textContent = `→ ${job.sent_prompt ?? ""}`;
    else if (job.translation === "fallback") parts.sent.textContent = "(sent untranslated)";
    else parts.sent.textContent = "";
  }

  function drawTimeline(parts, job) {
    const key = JSON.stringify(job.timings);
    if (key === parts.timingsKey) return;
    parts.timingsKey = key;
    const known = STAGES.filter(([stage]) => typeof job.timings[stage] === "number");
    const total = known.reduce((sum, [stage]) => sum + job.timings[stage], 0);
    parts.timeline.replaceChildren(...known.map(([stage, label]) => {
      const ms = job.timings[stage];
      const segment = el("span", `segment seg-${stage}`);
      segment.dataset.stage = stage;
      segment.style.width = `${total > 0 ? (100 * ms) / total : 100 / known.length}%`;
      segment.title = `${label}: ${duration(ms / 1000)}`;
      return segment;
    }));
    parts.timeline.hidden = known.length === 0;
    parts.total.textContent = known.length ? `${duration(total / 1000)} in stages` : "";
  }

  function drawJob(parts, job) {
    drawThumb(parts, job);
    parts.title.textContent = job.title ?? "";
    const ended = job.finished_at !== null;
    parts.age.textContent = `${ended ? "took" : "for"} ${duration(job.age_s)}`;
    drawStatus(parts, job);
    drawPrompt(parts, job);
    parts.progress.textContent = progressText(job);
    const fraction = progressFraction(job);
    parts.fill.style.width = `${Math.round(fraction * 100)}%`;
    parts.fill.parentElement.hidden = fraction === 0 && !job.progress;
    drawTimeline(parts, job);
  }

  function drawJobs(jobs) {
    const body = document.getElementById("jobs");
    const seen = new Set();
    const ordered = jobs.map((job) => {
      let entry = rows.get(job.job_id);
      if (!entry) {
        entry = makeRow(job.job_id);
        rows.set(job.job_id, entry);
      }
      seen.add(job.job_id);
      drawJob(entry.parts, job);
      return entry.tr;
    });
    for (const jobId of [...rows.keys()]) {
      if (!seen.has(jobId)) rows.delete(jobId);
    }
    // Moving a row keeps its <img>, so a loaded image is not fetched again every poll.
    body.replaceChildren(...ordered);
    document.getElementById("no-jobs").hidden = jobs.length > 0;
  }

  // ------------------------------------------------------------------ polling

  function connection(text, ok) {
    const banner = document.getElementById("connection");
    banner.textContent = text;
    banner.className = ok ? "connection ok" : "connection down";
  }

  async function fetchSnapshot() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch("/dashboard.json", {
        credentials: "same-origin", cache: "no-store", signal: abort.signal,
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    try {
      const snapshot = await fetchSnapshot();
      drawQueue(snapshot.queue);
      drawHour(snapshot.last_hour);
      drawFailures(snapshot.failures);
      drawJobs(snapshot.jobs);
      connection(`live · updated ${clock(snapshot.generated_at)}`, true);
      document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
    } catch (error) {
      connection(`not updating: ${error.message}; retrying`, false);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  drawLegend();
  poll();
})();
