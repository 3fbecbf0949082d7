// Live job progress: poll each active job about once a second until it finishes; cancel and resume buttons.
// Counters, result, times and durations are written as app/ui/jobview.py writes them on the server, rule
// for rule, so a live page reads exactly as the same page reloaded.
"use strict";

(() => {
  const FINAL = new Set(["succeeded", "failed", "cancelled", "paused"]);
  const { h } = IF;
  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

  // jobview.shown
  function shown(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "number") return String(Number.isInteger(v) ? v : Math.round(v * 1e4) / 1e4);
    if (Array.isArray(v)) {
      if (!v.length) return "none";
      if (v.every((x) => x === null || typeof x !== "object")) return v.map(shown).join(", ");
      return `${v.length} item${v.length === 1 ? "" : "s"}`;
    }
    if (isObject(v)) {
      const n = Object.keys(v).length;
      return n ? `${n} entr${n === 1 ? "y" : "ies"}` : "none";
    }
    return String(v);
  }

  // jobview.rows
  function rows(data) {
    const out = [];
    for (const [key, value] of Object.entries(data || {})) {
      const label = key.replaceAll("_", " ");
      const nested = isObject(value) ? Object.entries(value).filter(([, v]) => v !== null && v !== undefined) : [];
      if (nested.length) {
        out.push({ label, value: "", depth: 0 });
        for (const [k, v] of nested) out.push({ label: k, value: shown(v), depth: 1 });
      } else if (isObject(value)) {
        out.push({ label, value: "none", depth: 0 });
      } else {
        out.push({ label, value: shown(value), depth: 0 });
      }
    }
    return out;
  }

  // jobview.line
  function line(table) {
    const parts = [];
    for (const r of table) {
      if (r.depth === 0 || !parts.length) parts.push(r.value ? `${r.label}: ${r.value}` : `${r.label}:`);
      else parts[parts.length - 1] += `${parts[parts.length - 1].endsWith(":") ? " " : ", "}${r.label} ${r.value}`;
    }
    return parts.join(" · ");
  }

  // jobview.when
  const when = (iso) => (iso ? `${new Date(iso).toISOString().slice(0, 19).replace("T", " ")} UTC` : "–");

  // jobview.duration over jobview.run_time
  function duration(started, finished) {
    if (!started) return "–";
    const seconds = ((finished ? new Date(finished) : new Date()) - new Date(started)) / 1000;
    if (seconds < 59.95) return `${Math.max(seconds, 0).toFixed(1)} s`;
    const whole = Math.floor(seconds + 0.5);
    if (whole < 3600) return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
    return `${Math.floor(whole / 3600)} h ${String(Math.floor((whole % 3600) / 60)).padStart(2, "0")} min`;
  }

  function table(node, data) {
    if (!node) return;
    const trs = rows(data).map((r) => h("tr", { class: `depth-${r.depth}` }, h("th", { scope: "row" }, r.label), h("td", {}, r.value)));
    node.tBodies[0].replaceChildren(...(trs.length ? trs : [h("tr", {}, h("td", { class: "muted" }, "none yet"))]));
  }

  function paint(el, job) {
    const find = (role) => el.querySelector(`[data-role="${role}"]`);
    const set = (role, text) => { const n = find(role); if (n) n.textContent = text; };
    // On the job's page, a value is shown only once there is one: its <dd> and the <dt> naming it (the
    // list's cells stay, or its columns would shift).
    const detail = el.classList.contains("job-detail");
    const reveal = (role, on) => {
      if (!detail) return;
      for (const n of el.querySelectorAll(`[data-role="${role}"], [data-for="${role}"]`)) n.hidden = !on;
    };
    const bar = find("bar");
    if (bar) {
      bar.max = job.progress_total || 1;
      bar.value = job.progress_total ? job.progress_done : (job.status === "succeeded" ? 1 : 0);
    }
    const pct = job.progress_total ? Math.round((100 * job.progress_done) / job.progress_total) : (job.status === "succeeded" ? 100 : null);
    set("pct", pct === null ? "–" : `${pct}%`);
    set("count", job.progress_total ? `${job.progress_done}/${job.progress_total}` : `${job.progress_done}`);
    set("status", job.status);
    set("started", when(job.started_at));
    set("finished", when(job.finished_at));
    set("duration", duration(job.started_at, job.finished_at));
    set("attempts", String(job.attempts));
    reveal("started", !!job.started_at);
    reveal("finished", !!job.finished_at);
    reveal("duration", !!job.started_at);
    reveal("attempts", job.attempts > 0);
    table(find("counters"), job.counters);
    set("counters-line", line(rows(job.counters)));
    table(find("result"), job.result);
    set("result-json", JSON.stringify(job.result || {}, null, 1));
    set("cost", `$${Number(job.cost_usd || 0).toFixed(4)}`);
    set("tokens", `${job.tokens_in} in / ${job.tokens_out} out`);
    set("error", job.error || "");
    reveal("error", !!job.error);
    if (FINAL.has(job.status)) {
      el.dataset.active = "0";
      const btn = el.querySelector("[data-cancel]");
      if (btn && job.status !== "paused") btn.remove();
      // "job N queued" is news no longer once the job has ended.
      if (detail) for (const f of document.querySelectorAll("main > .flash")) f.remove();
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
    // A job that ended before its page loaded (a small import, a fast dedup) is no longer "queued" either.
    const detail = document.querySelector(".job-detail");
    if (detail && FINAL.has(detail.querySelector('[data-role="status"]').textContent)) {
      for (const f of document.querySelectorAll("main > .flash")) f.remove();
    }
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
