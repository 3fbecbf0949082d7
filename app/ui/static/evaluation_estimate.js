// The new-evaluation form's Estimate button: posts the form as it stands to the page's estimate endpoint (the
// same parsing as Start) and shows judge and teacher calls, tokens and the most it may cost, or the refusal,
// as text. Nothing is started and no teacher is called (see docs/evaluation.md, "Estimate").
"use strict";

(() => {
  const { h } = IF;
  const money = (usd, places = 4) => `$${Number(usd).toFixed(places)}`;
  const count = (n) => Math.round(n).toLocaleString("en-US");
  const WHAT = { judge_pairs: "judge, pairs (both orders)", judge_scores: "judge, single scores", teacher_answers: "answers" };

  function shown(est) {
    const rows = est.lines.map((l) => h("li", { "data-role": "estimate-line" },
      `${WHAT[l.purpose] || l.purpose}${l.system ? ` of ${l.system}` : ""} · ${l.teacher}: ${count(l.calls)} calls, ` +
      `${count(l.tokens_in)} in + ≤ ${count(l.tokens_out)} out tokens, ≤ ${money(l.cost_usd)}`));
    return h("div", { "data-role": "estimate-result" },
      h("dl", { class: "kv" },
        h("dt", {}, "Cost"), h("dd", { "data-role": "estimate-cost" }, `at most ${money(est.estimated_cost_usd)}`),
        h("dt", {}, "Calls"), h("dd", { "data-role": "estimate-calls" },
          `${count(est.total_calls)} (${count(est.judge_calls)} judge, ${count(est.answer_calls)} teacher answers) for ${count(est.prompts)} prompts × ${count(est.pairs)} pairs`),
        h("dt", {}, "Tokens"), h("dd", { "data-role": "estimate-tokens" }, `${count(est.tokens_in)} in + ≤ ${count(est.tokens_out)} out`),
        h("dt", {}, "Local answers"), h("dd", {}, `${count(est.local_answers)} (generated on the gpu worker, no teacher cost)`)),
      h("ul", {}, ...rows),
      h("p", { class: "muted small" }, est.basis));
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.querySelector("form[data-estimate]");
    if (!form) return;
    const btn = form.querySelector('[data-role="estimate"]');
    const out = form.querySelector('[data-role="estimate-out"]');
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      out.replaceChildren(h("span", { class: "muted" }, "Estimating…"));
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
