// An evaluation's page: while its job runs, poll the API about every 1.5 s and show status, stage and
// progress; when it ends, reload so the server draws the results. Filters apply as soon as one changes;
// Cancel and Resume call the API. All text goes in with textContent (IF.h): answers and rationales are
// model output.
"use strict";

(() => {
  const FINAL = new Set(["succeeded", "failed", "cancelled", "paused"]);

  async function poll(box) {
    const id = box.dataset.evaluationId;
    const find = (role) => box.querySelector(`[data-role="${role}"]`);
    let ev;
    try {
      ev = await IF.api("GET", `/api/v1/evaluations/${id}`);
    } catch (err) {
      setTimeout(() => poll(box), 5000);
      return;
    }
    find("status").textContent = ev.status;
    find("stage").textContent = ev.counters && ev.counters.stage ? `— ${ev.counters.stage}` : "";
    const bar = find("bar");
    if (bar) {
      bar.max = ev.progress_total || 1;
      bar.value = ev.progress_total ? ev.progress_done : 0;
    }
    const pct = find("pct");
    if (pct) pct.textContent = ev.progress_total ? `${Math.round((100 * ev.progress_done) / ev.progress_total)}%` : "–";
    const count = find("count");
    if (count) count.textContent = ev.progress_total ? `${ev.progress_done}/${ev.progress_total}` : String(ev.progress_done);
    const cost = find("cost");
    if (cost) cost.textContent = `$${Number(ev.cost_usd || 0).toFixed(4)}`;
    const error = find("error");
    error.textContent = ev.error || "";
    error.hidden = !ev.error;
    if (FINAL.has(ev.status)) window.location.reload();
    else setTimeout(() => poll(box), 1500);
  }

  function wireButtons(box) {
    for (const button of box.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", async () => {
        const action = button.dataset.action;
        if (action === "cancel" && !window.confirm("Cancel this evaluation? Stored answers and verdicts are kept.")) return;
        button.disabled = true;
        try {
          await IF.api("POST", `/api/v1/evaluations/${box.dataset.evaluationId}/${action}`);
          window.location.reload();
        } catch (err) {
          button.disabled = false;
          const error = box.querySelector('[data-role="error"]');
          error.textContent = err.message;
          error.hidden = false;
        }
      });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const box = document.getElementById("evaluation");
    if (box) {
      wireButtons(box);
      if (box.dataset.active === "1") poll(box);
    }
    const filters = document.querySelector('[data-role="filters"]');
    if (filters) {
      for (const select of filters.querySelectorAll("select")) {
        select.addEventListener("change", () => {
          // A new pair or category starts from its first page, with the outcome counted afresh.
          if (select.name === "pair") filters.querySelector('select[name="outcome"]').value = "";
          filters.requestSubmit();
        });
      }
    }
  });
})();
