// Live job progress: poll each active job about once a second until it finishes; cancel and resume buttons.
"use strict";

(() => {
  const FINAL = new Set(["succeeded", "failed", "cancelled", "paused"]);

  function counters(obj) {
    return Object.entries(obj || {})
      .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
      .join(" · ");
  }

  function paint(el, job) {
    const set = (role, text) => { const n = el.querySelector(`[data-role="${role}"]`); if (n) n.textContent = text; };
    const bar = el.querySelector('[data-role="bar"]');
    if (bar) {
      bar.max = job.progress_total || 1;
      bar.value = job.progress_total ? job.progress_done : (job.status === "succeeded" ? 1 : 0);
    }
    const pct = job.progress_total ? Math.round((100 * job.progress_done) / job.progress_total) : (job.status === "succeeded" ? 100 : null);
    set("pct", pct === null ? "–" : `${pct}%`);
    set("count", job.progress_total ? `${job.progress_done}/${job.progress_total}` : `${job.progress_done}`);
    set("status", job.status);
    set("counters", counters(job.counters));
    set("cost", `$${Number(job.cost_usd || 0).toFixed(4)}`);
    set("tokens", `${job.tokens_in} in / ${job.tokens_out} out`);
    set("error", job.error || "");
    set("result", JSON.stringify(job.result || {}, null, 1));
    if (FINAL.has(job.status)) {
      el.dataset.active = "0";
      const btn = el.querySelector("[data-cancel]");
      if (btn && job.status !== "paused") btn.remove();
    }
  }

  async function poll() {
    const active = [...document.querySelectorAll('[data-job-id][data-active="1"]')];
    await Promise.all(active.map(async (el) => {
      try {
        paint(el, await IF.api("GET", `/api/v1/jobs/${el.dataset.jobId}`));
      } catch (err) {
        if (err.status === 404) el.dataset.active = "0";
      }
    }));
    if (document.querySelector('[data-job-id][data-active="1"]')) setTimeout(poll, 1000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const btn of document.querySelectorAll("[data-cancel]")) {
      btn.addEventListener("click", async () => {
        btn.disabled = true;
        try {
          const el = btn.closest("[data-job-id]");
          paint(el, await IF.api("POST", `/api/v1/jobs/${btn.dataset.cancel}/cancel`));
          el.dataset.active = "1";
          setTimeout(poll, 1000);
        } catch (err) {
          btn.disabled = false;
          window.alert(`Could not cancel: ${err.message}`);
        }
      });
    }
    for (const btn of document.querySelectorAll("[data-resume]")) {
      btn.addEventListener("click", async () => {
        btn.disabled = true;
        try {
          const el = btn.closest("[data-job-id]");
          paint(el, await IF.api("POST", `/api/v1/jobs/${btn.dataset.resume}/resume`));
          btn.remove();
          el.dataset.active = "1";
          setTimeout(poll, 1000);
        } catch (err) {
          btn.disabled = false;
          window.alert(`Could not resume: ${err.message}`);
        }
      });
    }
    if (document.querySelector('[data-job-id][data-active="1"]')) setTimeout(poll, 1000);
  });
})();
