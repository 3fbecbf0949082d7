// Training runs: start form, and the run page polling its status and drawing the loss curve live (SVG).
"use strict";

(() => {
  const { h } = IF;
  const SVG = "http://www.w3.org/2000/svg";
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);

  function svg(tag, attrs, text) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // metrics rows are {step, values: {loss, eval_loss, ...}} (or flat {step, loss, ...}).
  function series(metrics, key) {
    const pts = [];
    for (const m of metrics) {
      const v = m.values ? m.values[key] : m[key];
      if (typeof v === "number" && Number.isFinite(v)) pts.push([m.step, v]);
    }
    return pts;
  }

  function drawLoss(el, metrics) {
    drawLines(el, metrics, [["loss", "train"], ["eval_loss", "eval"]], "no loss reported yet");
  }

  // Preference runs (dpo, orpo, kto, simpo) log rewards/* per step; SFT runs do not, and the charts stay hidden.
  const REWARDS = [["rewards/chosen", "chosen"], ["rewards/rejected", "rejected"], ["rewards/margins", "margin"], ["eval_rewards/margins", "eval margin"]];
  const ACCURACY = [["rewards/accuracies", "accuracy"], ["eval_rewards/accuracies", "eval accuracy"]];

  function drawPreference(box, metrics) {
    const has = REWARDS.some(([k]) => series(metrics, k).length);
    box.hidden = !has;
    if (!has) return;
    drawLines(box.querySelector('[data-role="rewards-chart"]'), metrics, REWARDS, "no rewards reported yet");
    drawLines(box.querySelector('[data-role="accuracy-chart"]'), metrics, ACCURACY, "no accuracy (kto logs none: its examples are unpaired)");
  }

  // One line per [metric key, legend] that has points, on shared axes.
  function drawLines(el, metrics, keys, empty) {
    el.replaceChildren();
    const W = 640, H = 240, L = 50, R = 130, T = 10, B = 30;
    const lines = keys.map(([k, name]) => [name, series(metrics, k)]).filter(([, p]) => p.length);
    if (!lines.length) {
      el.append(svg("text", { x: 20, y: 30, class: "lbl" }, empty));
      return;
    }
    const all = lines.flatMap(([, p]) => p);
    const x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
    const y0 = Math.min(...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
    const sx = (x) => L + ((x - x0) / Math.max(1e-9, x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / Math.max(1e-9, y1 - y0)) * (H - T - B);
    el.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }), svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
    el.append(svg("text", { x: L - 4, y: T + 8, "text-anchor": "end", class: "lbl small" }, y1.toFixed(3)));
    el.append(svg("text", { x: L - 4, y: H - B, "text-anchor": "end", class: "lbl small" }, y0.toFixed(3)));
    el.append(svg("text", { x: L, y: H - 8, class: "lbl small" }, `step ${x0}`));
    el.append(svg("text", { x: W - R, y: H - 8, "text-anchor": "end", class: "lbl small" }, `step ${x1}`));
    lines.forEach(([name, pts], i) => {
      const d = pts.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
      el.append(svg("path", { d, class: `curve c${i}` }));
      const last = pts[pts.length - 1];
      el.append(svg("text", { x: W - R + 6, y: T + 14 + 16 * i, class: `lbl c${i}`, "data-key": name }, `${name} ${last[1].toFixed(4)}`));
    });
  }

  function kv(dl, obj) {
    dl.replaceChildren();
    for (const [k, v] of Object.entries(obj || {})) {
      dl.append(h("dt", {}, k), h("dd", { class: "pre" }, typeof v === "string" ? v : JSON.stringify(v, null, 1)));
    }
  }

  // samples.jsonl lines, grouped by the step whose weights generated them (null: a file from before steps).
  function drawSamples(el, data) {
    if (!data.written) {
      el.replaceChildren(h("p", { class: "muted" }, "No samples yet: the trainer writes them when training ends."));
      return;
    }
    if (!data.samples.length) {
      el.replaceChildren(h("p", { class: "muted" }, "The trainer wrote no samples (sample_prompts is 0, or no records were held out: val_fraction 0)."));
      return;
    }
    const steps = new Map();
    for (const s of data.samples) {
      if (!steps.has(s.step)) steps.set(s.step, []);
      steps.get(s.step).push(s);
    }
    const parts = [];
    for (const [step, samples] of steps) {
      parts.push(h("h4", {}, step === null ? "After training" : `Step ${step}`));
      const rows = samples.map((s) => h("tr", { "data-role": "sample" },
        h("td", { class: "pre" }, s.prompt.flatMap((m, i) => [i ? "\n" : "", h("strong", {}, `${m.role}: `), m.content])),
        h("td", { class: "pre", "data-role": "generation" }, s.generation || h("span", { class: "muted" }, "(empty)")),
        h("td", { class: "pre" }, s.reference ?? h("span", { class: "muted" }, "(none)"))));
      parts.push(h("table", { class: "samples" },
        h("thead", {}, h("tr", {}, h("th", {}, "Prompt"), h("th", {}, "Generated"), h("th", {}, "Reference"))),
        h("tbody", {}, rows)));
    }
    if (data.skipped_lines) parts.push(h("p", { class: "muted small" }, `${data.skipped_lines} malformed line(s) of samples.jsonl skipped`));
    el.replaceChildren(...parts);
  }

  async function loadSamples(box, id) {
    const el = box.querySelector('[data-role="samples"]');
    try {
      drawSamples(el, await IF.api("GET", `/api/v1/training-runs/${id}/samples`));
    } catch (err) {
      el.replaceChildren(h("p", { class: "muted" }, err.status === 403
        ? "Sample generations are shown to the project's curators and admins: their prompts and references are snapshot data."
        : `Could not load the samples: ${err.message}`));
    }
  }

  async function pollRun(box) {
    const id = box.dataset.runId;
    const q = (role) => box.querySelector(`[data-role="${role}"]`);
    let run;
    try {
      run = await IF.api("GET", `/api/v1/training-runs/${id}`);
    } catch (err) {
      q("notice").textContent = err.status === 404
        ? "Training run not found, or this server has no training-runs API yet."
        : `Could not load the run: ${err.message}`;
      return;
    }
    q("notice").textContent = "";
    q("status").textContent = run.status + (run.error ? ` — ${run.error}` : "");
    q("bar").max = run.progress_total || 1;
    q("bar").value = run.progress_total ? run.progress_done : 0;
    q("count").textContent = run.progress_total ? `${run.progress_done}/${run.progress_total} steps` : "";
    const lineage = run.continued_from ? { "continued from": `run #${run.continued_from}` } : {};
    kv(q("info"), { snapshot: `#${run.snapshot_id}`, "base model": run.base_model, method: run.method, ...lineage, job: `#${run.job_id}`, config: run.config });
    kv(q("summary"), run.summary);
    drawLoss(q("chart"), run.metrics || []);
    drawPreference(q("preference"), run.metrics || []);
    const cancel = q("cancel");
    cancel.hidden = FINAL.has(run.status);
    try {
      const arts = await IF.api("GET", `/api/v1/training-runs/${id}/artifacts`);
      const ul = q("artifacts");
      ul.replaceChildren();
      for (const a of arts) {
        const href = `/api/v1/training-runs/${id}/artifacts/${a.path.split("/").map(encodeURIComponent).join("/")}`;
        ul.append(h("li", {}, h("a", { href, download: "" }, a.path), ` (${a.size} bytes)`));
      }
      if (!arts.length) ul.append(h("li", { class: "muted" }, "none yet"));
    } catch (_) { /* artifacts appear when the run writes them */ }
    if (FINAL.has(run.status)) await loadSamples(box, id);
    else setTimeout(() => pollRun(box), 2000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const box = document.getElementById("run");
    if (box) {
      box.querySelector('[data-role="cancel"]').addEventListener("click", async () => {
        try { await IF.api("POST", `/api/v1/training-runs/${box.dataset.runId}/cancel`); } catch (err) { window.alert(err.message); }
      });
      pollRun(box);
    }
    const form = document.getElementById("train-form");
    if (form) {
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const fd = new FormData(form);
        const out = form.querySelector('[data-role="error"]');
        let hyper;
        try { hyper = JSON.parse(fd.get("hyperparameters") || "{}"); } catch (err) { out.textContent = `Hyperparameters: ${err.message}`; return; }
        try {
          const run = await IF.api("POST", "/api/v1/training-runs", {
            snapshot_id: Number(fd.get("snapshot_id")), base_model: fd.get("base_model"), method: fd.get("method"), objective: fd.get("objective") || "sft", hyperparameters: hyper,
            continue_from: fd.get("continue_from") ? Number(fd.get("continue_from")) : null,
            gpus: fd.get("gpus") ? Number(fd.get("gpus")) : 1,
          });
          window.location.href = `/ui/training/${run.id}`;
        } catch (err) {
          out.textContent = err.status === 404 ? "This server has no training-runs API yet." : err.message;
        }
      });
    }
  });
})();
