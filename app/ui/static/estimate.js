// The job form's Estimate button: posts the form as it stands to the page's estimate endpoint (the same
// parsing as Start, so the estimate prices exactly the job Start would queue) and shows calls, tokens and
// cost, or the refusal, as text. Nothing is started.
"use strict";

(() => {
  const { h } = IF;
  const money = (usd, places = 4) => `$${Number(usd).toFixed(places)}`;
  const count = (n) => Math.round(n).toLocaleString("en-US");

  function shown(est) {
    const calls = est.total_calls;
    const tin = est.tokens_in_per_call * calls;
    const tout = est.tokens_out_per_call * calls;
    return h("dl", { class: "kv", "data-role": "estimate-result" },
      h("dt", {}, "Cost"), h("dd", { "data-role": "estimate-cost" }, `≈ ${money(est.estimated_cost_usd)} (${money(est.cost_per_call_usd, 6)} a call)${est.batch ? " at batch API prices" : ""}`),
      h("dt", {}, "Calls"), h("dd", { "data-role": "estimate-calls" }, `≈ ${count(calls)} (from ${est.sampled_calls} sampled)`),
      h("dt", {}, "Tokens"), h("dd", { "data-role": "estimate-tokens" }, `≈ ${count(tin)} in + ${count(tout)} out (${count(est.tokens_in_per_call)} + ${count(est.tokens_out_per_call)} a call)`));
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.querySelector("form[data-estimate]");
    if (!form) return;
    const btn = form.querySelector('[data-role="estimate"]');
    const out = form.querySelector('[data-role="estimate-out"]');
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      out.replaceChildren(h("span", { class: "muted" }, "Estimating… (a few real calls to the teacher)"));
      try {
        out.replaceChildren(shown(await IF.api("POST", form.dataset.estimate, new FormData(form))));
      } catch (err) {
        out.replaceChildren(h("p", { class: "error", role: "alert", "data-role": "estimate-error" }, `Could not estimate: ${err.message}`));
      } finally {
        btn.disabled = false;
      }
    });
  });
})();
