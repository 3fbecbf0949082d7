// The keyboard review page. Every action is at most one request, sent in order; the reply of each
// decision refills the buffer, so the next record is always already on the page.
"use strict";

(() => {
  const data = JSON.parse(document.getElementById("review-data").textContent);
  const DS = data.dataset_id;
  const PREFETCH = data.prefetch;
  const COMPARE = !!data.compare; // the compare queue: records with candidates you have not judged yet
  const ADVANCING = new Set(["accept", "reject", "skip", "flag"]);
  const S = {
    items: data.items.slice(),
    pos: 0,
    chain: Promise.resolve(),
    inflight: 0,
    exhausted: data.items.length < PREFETCH,
    mode: "view", // view | edit | prompt
    reviewed: 0,
    openAssignments: data.open_assignments,
    historyFor: null,
    // "n of N": queue records before the first one shown, and the queue's size, when the page opened.
    before: data.position ? data.position.before : 0,
    total: data.position ? data.position.total : data.items.length,
    // Past 1,000 the server stops counting: those figures are lower bounds, shown with a "+".
    beforeMore: !!(data.position && data.position.before_more),
    totalMore: !!(data.position && data.position.total_more),
    writes: 0, // decisions and edits sent and not yet answered
    modeBeforeHelp: "view",
    rank: null, // a ranking being typed: { rid, order: [candidate ids, best first] }
  };
  const { h } = IF;
  const $ = (role) => document.querySelector(`[data-role="${role}"]`);
  const current = () => S.items[S.pos];
  const maxId = () => S.items.reduce((m, it) => Math.max(m, it.id), 0);

  function addItems(list) {
    const have = new Set(S.items.map((it) => it.id));
    for (const it of list || []) if (!have.has(it.id)) S.items.push(it);
  }

  // ------------------------------------------------------------ messages

  function banner(text, reloadId) {
    $("banner-text").textContent = text;
    $("banner").hidden = false;
    const btn = $("reload");
    btn.hidden = reloadId === undefined;
    btn.dataset.rid = reloadId === undefined ? "" : String(reloadId);
  }
  const clearBanner = () => { $("banner").hidden = true; };

  // Neutral news (an undo went through): not an error, so not the red banner.
  function notice(text) {
    $("notice-text").textContent = text;
    $("notice").hidden = false;
  }
  const clearNotice = () => { $("notice").hidden = true; };

  // The "saved" indicator: what the last write did, once the server has stored it.
  function savedState(state, text) {
    const el = $("saved");
    el.className = `saved ${state}`;
    el.textContent = text;
  }
  const clock = () => new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const PAST = { accept: "accepted", reject: "rejected", rate: "rated", tag: "tagged", skip: "skipped", flag: "flagged", edit: "edited", undo: "undone" };

  function failed(err, item) {
    if (err.status === 409 && item) {
      banner(`Record #${item.id} was changed by someone else, so your action was not applied: ${err.message}`, item.id);
    } else if (err.status === 401) {
      banner("Your session has ended: log in again (nothing was saved for the last action).");
    } else {
      banner(`${item ? `Record #${item.id}: ` : ""}${err.message}`, item ? item.id : undefined);
    }
  }

  // ------------------------------------------------------------ requests (serialised)

  // `what` names a write (accept, edit, undo...): the saved indicator follows it; reads pass nothing.
  function enqueue(fn, item, what) {
    S.inflight += 1;
    if (what) {
      S.writes += 1;
      savedState("saving", "Saving…");
    }
    S.chain = S.chain
      .then(async () => {
        const label = await fn();
        if (what && S.writes === 1) savedState("ok", `✓ Saved: ${label || what} · ${clock()}`);
      })
      .catch((err) => {
        if (what) savedState("failed", `Not saved: ${what}${item ? ` on #${item.id}` : ""}`);
        failed(err, item);
      })
      .finally(() => {
        S.inflight -= 1;
        if (what) S.writes -= 1;
        refillIfDry();
        if (S.mode === "view") render();
      });
    return S.chain;
  }

  function need() {
    const left = S.items.length - S.pos; // the current record and those after it
    return Math.max(0, Math.min(20, PREFETCH + 1 - left));
  }

  function decide(action, extra, advance) {
    const item = current();
    if (!item) return;
    if (advance) S.pos += 1; // the next record is already here: show it now
    clearNotice();
    render();
    enqueue(async () => {
      const want = need();
      const res = await IF.api("POST", `/api/v1/review/records/${item.id}/decision`, {
        action,
        version: item.version,
        ...extra,
        prefetch_after: maxId(),
        prefetch: want,
        compare: COMPARE,
      });
      Object.assign(item, res.record);
      addItems(res.next);
      if (want && res.next.length < want) S.exhausted = true;
      if (ADVANCING.has(action)) {
        S.reviewed += 1;
        if (item.assigned && action !== "skip" && action !== "flag" && S.openAssignments) S.openAssignments -= 1;
      }
      if (S.historyFor === item.id) showHistory(item.id); // the open history panel shows the new decision
      return `${PAST[action]} #${item.id}`;
    }, item, action);
  }

  function refillIfDry() {
    if (S.inflight || S.exhausted || current()) return;
    enqueue(async () => {
      const res = await IF.api("GET", `/api/v1/review/datasets/${DS}/queue?after_id=${maxId()}&limit=${PREFETCH}${COMPARE ? "&compare=true" : ""}`);
      addItems(res.items);
      if (res.items.length < PREFETCH) S.exhausted = true;
    });
  }

  function undo() {
    enqueue(async () => {
      const res = await IF.api("POST", `/api/v1/review/datasets/${DS}/undo`);
      const it = res.item;
      const idx = S.items.findIndex((x) => x.id === it.id);
      if (idx >= 0) {
        S.items[idx] = it;
        S.pos = idx;
      } else {
        S.items.splice(S.pos, 0, it);
      }
      if (ADVANCING.has(res.undone_action) && S.reviewed > 0) S.reviewed -= 1;
      clearBanner();
      notice(`Undid ${res.undone_action} on record #${it.id}.`);
      if (S.historyFor === it.id) showHistory(it.id);
      return `undid ${res.undone_action} on #${it.id}`;
    }, undefined, "undo");
  }

  async function reload(rid) {
    const rec = await IF.api("GET", `/api/v1/records/${rid}`);
    const idx = S.items.findIndex((x) => x.id === rec.id);
    if (idx < 0) return;
    const it = S.items[idx];
    for (const k of ["version", "status", "rating", "tags", "flagged", "instruction", "input", "output", "system", "messages"]) it[k] = rec[k];
    if (S.mode === "edit" && current() && current().id === rec.id) {
      banner(`Reloaded record #${rec.id} (now version ${rec.version}). Your text is still in the editor: save to apply it on top.`);
      showHistory(rec.id);
      return;
    }
    S.pos = idx;
    clearBanner();
    render();
  }

  // ------------------------------------------------------------ candidates: choose two, rank three or more

  // Candidates come numbered in the order the page shows them (shuffled per record by the server): the
  // number is the key. Two are compared side by side (1 / 2 / = / b); three or more are ranked by pressing
  // their numbers best first, then Enter (the ones not pressed tie last).
  const cands = (item) => (item && item.candidates) || [];
  const hasCands = (item) => cands(item).length >= 2;
  const isPair = (item) => cands(item).length === 2;
  const rankTyped = (item) => (S.rank && item && S.rank.rid === item.id ? S.rank.order : null);
  const numberOf = (item, id) => { const c = cands(item).find((x) => x.id === id); return c ? c.number : "?"; };
  const CHOICE_TEXT = { a: "prefers #1 over #2", b: "prefers #2 over #1", tie: "#1 and #2 tie", both_bad: "#1 and #2 both bad" };
  const CHOICE_SAVED = { a: "preferred #1", b: "preferred #2", tie: "tie", both_bad: "both bad" };
  const rankText = (item, groups) => "ranks " + groups.map((g) => g.map((id) => `#${numberOf(item, id)}`).join(" = ")).join(" > ");

  function choose(choice) {
    const item = current();
    const [a, b] = cands(item);
    clearNotice();
    enqueue(async () => {
      await IF.api("POST", `/api/v1/records/${item.id}/judgments/pairwise`, { a_id: a.id, b_id: b.id, choice });
      item.my_preference = { kind: "pairwise", choice, candidate_ids: [a.id, b.id], ranking: null, summary: CHOICE_TEXT[choice] };
      if (S.historyFor === item.id) showHistory(item.id);
      return `${CHOICE_SAVED[choice]} on #${item.id}`;
    }, item, "choice");
  }

  function pick(key) {
    const item = current();
    const n = Number(key);
    if (isPair(item)) {
      if (n === 1 || n === 2) choose(n === 1 ? "a" : "b");
      return;
    }
    const c = cands(item).find((x) => x.number === n);
    if (!c) return;
    if (!rankTyped(item)) S.rank = { rid: item.id, order: [] };
    if (!S.rank.order.includes(c.id)) S.rank.order.push(c.id);
    render();
  }

  function takeBack() {
    const order = rankTyped(current());
    if (order && order.length) order.pop();
    render();
  }

  function saveRanking() {
    const item = current();
    const order = (rankTyped(item) || []).slice();
    if (!order.length) return;
    const rest = cands(item).filter((c) => !order.includes(c.id)).map((c) => c.id);
    const ranking = [...order.map((id) => [id]), ...(rest.length ? [rest] : [])];
    S.rank = null;
    clearNotice();
    render();
    enqueue(async () => {
      await IF.api("POST", `/api/v1/records/${item.id}/judgments/ranking`, { ranking });
      item.my_preference = { kind: "ranking", choice: null, candidate_ids: ranking.flat(), ranking, summary: rankText(item, ranking) };
      if (S.historyFor === item.id) showHistory(item.id);
      return `ranked #${item.id}`;
    }, item, "ranking");
  }

  // What a candidate's badge says: your choice or your ranking (the one being typed first).
  function badge(item, c) {
    const order = rankTyped(item);
    if (order) {
      const i = order.indexOf(c.id);
      return i >= 0 ? [`rank ${i + 1}`, "typing"] : ["", ""];
    }
    const mine = item.my_preference;
    if (!mine) return ["", ""];
    if (mine.kind === "pairwise") {
      const won = { a: mine.candidate_ids[0], b: mine.candidate_ids[1] }[mine.choice];
      if (mine.choice === "tie") return ["= tie", "even"];
      if (mine.choice === "both_bad") return ["✗ both bad", "bad"];
      return c.id === won ? ["✓ your choice", "chosen"] : ["", ""];
    }
    const group = (mine.ranking || []).findIndex((g) => g.includes(c.id));
    return group >= 0 ? [`rank ${group + 1}`, group === 0 ? "chosen" : ""] : ["", ""];
  }

  function paintCandidates(box, item) {
    if (item.system) box.append(field("System", item.system, "system"));
    if (item.messages && item.messages.length && !item.instruction) {
      const turns = item.messages.slice();
      if (turns.length && turns[turns.length - 1].role === "assistant") turns.pop(); // the candidates answer it
      turns.forEach((m, i) => box.append(field(`Turn ${i + 1} · ${m.role}`, m.content, `turn ${m.role}`)));
    } else {
      box.append(field("Instruction", item.instruction, "instruction"));
      if (item.input) box.append(field("Input", item.input, "input"));
    }
    const pair = isPair(item);
    const list = h("div", { class: `candidates ${pair ? "pair" : "ranked"}`, "data-role": "candidates" });
    for (const c of cands(item)) {
      const [text, cls] = badge(item, c);
      list.append(h("div", { class: `field candidate ${cls}`, "data-candidate": String(c.number) },
        h("div", { class: "name" }, h("kbd", {}, String(c.number)), ` ${c.source}${c.model ? ` · ${c.model}` : ""} `,
          text ? h("span", { class: "badge", "data-role": "candidate-badge" }, text) : null),
        h("div", { class: "text pre" }, c.content)));
    }
    box.append(list);
    const order = rankTyped(item);
    const hint = pair ? "1 / 2: the better one · =: tie · b: both bad"
      : order ? `ranking: ${order.map((id) => `#${numberOf(item, id)}`).join(" > ")} … Enter saves (the rest tie last) · Backspace takes back`
        : "Press the numbers best first, then Enter (the ones not pressed tie last)";
    box.append(h("p", { class: "muted candidate-hint", "data-role": "candidate-hint" }, hint));
    if (item.my_preference) box.append(h("p", { class: "my-preference", "data-role": "my-preference" }, `Your judgment: ${item.my_preference.summary}`));
  }

  // ------------------------------------------------------------ edit in place

  function editable(item) {
    if (item.messages && item.messages.length && !item.instruction) {
      return item.messages.map((m, i) => ({ key: `turn:${i}`, label: `Turn ${i + 1} · ${m.role}`, value: m.content }));
    }
    const out = [
      { key: "instruction", label: "Instruction", value: item.instruction },
      { key: "input", label: "Input", value: item.input },
      { key: "output", label: "Output", value: item.output },
    ];
    return out;
  }

  function startEdit() {
    const item = current();
    if (!item) return;
    S.mode = "edit";
    const box = $("fields");
    box.replaceChildren();
    for (const f of editable(item)) {
      const ta = h("textarea", { "data-field": f.key, rows: Math.min(16, Math.max(2, f.value.split("\n").length + 1)), "aria-label": f.label });
      ta.value = f.value;
      box.append(h("label", { class: "field" }, h("span", { class: "name" }, f.label), ta));
    }
    $("edit-bar").hidden = false;
    $("note").value = "";
    const first = box.querySelector("textarea");
    if (first) first.focus();
  }

  function stopEdit() {
    S.mode = "view";
    $("edit-bar").hidden = true;
    render();
  }

  function save() {
    const item = current();
    if (!item || S.mode !== "edit") return;
    const body = { note: $("note").value };
    let changed = false;
    if (item.messages && item.messages.length && !item.instruction) {
      const messages = item.messages.map((m, i) => ({ role: m.role, content: document.querySelector(`[data-field="turn:${i}"]`).value }));
      changed = messages.some((m, i) => m.content !== item.messages[i].content);
      body.messages = messages;
    } else {
      for (const key of ["instruction", "input", "output"]) {
        const value = document.querySelector(`[data-field="${key}"]`).value;
        if (value !== item[key]) { body[key] = value; changed = true; }
      }
    }
    if (!changed) { stopEdit(); return; }
    $("save").disabled = true;
    enqueue(async () => {
      body.version = item.version; // read when sent: an earlier queued action may have bumped it
      try {
        const res = await IF.api("POST", `/api/v1/review/records/${item.id}/edit`, body);
        Object.assign(item, res.record);
        if (body.messages) item.messages = body.messages;
        for (const key of ["instruction", "input", "output"]) if (key in body) item[key] = body[key];
        clearBanner();
        stopEdit();
        paintHistory(item.id, res.timeline);
        return `edited #${item.id} (v${item.version})`;
      } finally {
        $("save").disabled = false;
      }
    }, item, "edit");
  }

  // ------------------------------------------------------------ one-line prompts (reason, tags, note)

  function ask(label, value, done) {
    S.mode = "prompt";
    const form = $("prompt");
    $("prompt-label").textContent = label;
    const input = $("prompt-input");
    input.value = value || "";
    form.hidden = false;
    form.onsubmit = (ev) => {
      ev.preventDefault();
      const v = input.value.trim();
      closePrompt();
      done(v);
    };
    input.focus();
  }

  function closePrompt() {
    $("prompt").hidden = true;
    S.mode = "view";
    document.activeElement && document.activeElement.blur();
  }

  // ------------------------------------------------------------ history

  // Edits (with their diffs) and decisions, newest first: GET /review/records/{id}/timeline.
  function paintHistory(rid, entries) {
    S.historyFor = rid;
    const box = $("history");
    box.replaceChildren();
    if (!entries.length) box.append(h("p", { class: "muted" }, "No edits or decisions yet."));
    for (const e of entries) {
      const sec = h("div", { class: `revision history-entry ${e.kind}${e.undone ? " undone" : ""}` },
        h("div", { class: "rev-head" }, h("strong", { class: "action" }, e.action), ` by ${e.by || "unknown"} · ${e.at}`,
          e.undone ? h("small", { class: "undone-mark" }, " undone") : null),
        h("div", { class: "summary" }, `${e.version ? `v${e.version}: ` : ""}${e.summary}${e.note ? ` — ${e.note}` : ""}`));
      for (const [field, parts] of Object.entries(e.changes)) {
        const body = h("div", { class: "pre diff" });
        for (const p of parts) body.append(p.op === "insert" ? h("ins", {}, p.text) : p.op === "delete" ? h("del", {}, p.text) : document.createTextNode(p.text));
        sec.append(h("div", { class: "field-name" }, field), body);
      }
      box.append(sec);
    }
    $("history-link").setAttribute("href", `/ui/records/${rid}/history`);
    $("history-box").hidden = false;
  }

  async function showHistory(rid) {
    try {
      paintHistory(rid, await IF.api("GET", `/api/v1/review/records/${rid}/timeline`));
    } catch (err) {
      failed(err);
    }
  }

  // ------------------------------------------------------------ rendering

  function kv(dl, pairs) {
    dl.replaceChildren();
    for (const [k, v, title] of pairs) {
      if (v === null || v === undefined || v === "" || (Array.isArray(v) && !v.length)) continue;
      dl.append(h("dt", {}, k), h("dd", title ? { title } : {}, v));
    }
  }

  // The dedup job's nearest-neighbour figure says which of three things it is. Below its cutoff the
  // index searches nothing, so the 0.0 it stores there is no score and is never shown as one.
  const fixed2 = (x) => Number(x).toFixed(2);
  function nnFigure(m) {
    const status = m.nn_status || (m.nn_score === null || m.nn_score === undefined ? "not_compared" : "found");
    const cutoff = m.nn_cutoff === null || m.nn_cutoff === undefined ? "the cutoff" : fixed2(m.nn_cutoff);
    if (status === "not_compared") {
      return ["not compared (no dedup run)", "No dedup job (nor generation's ROUGE-L filter) has compared this record with others yet."];
    }
    if (status === "below_cutoff") {
      return [`none ≥ ${cutoff} among records checked before it`,
        `The ROUGE-L check (dedup job or generation filter) compared this record with the records kept before it and searches only for a score at or above ${cutoff}: none reached it. The listed neighbours' scores are computed now.`];
    }
    return [`${fixed2(m.nn_score)}${m.nn_record_id ? ` · record #${m.nn_record_id}` : ""}`,
      "The highest ROUGE-L the check (dedup job or generation filter) found between this record and one kept before it."];
  }

  function adviceText(m, status) {
    if (!m.human_decided || !m.advice.length) return null;
    const decided = status === "pending" ? "a person rated or edited it" : `a person ${status} it`;
    return m.advice.map((a) => `${a.kind}: ${a.detail || a.reason} — ${decided}`).join("\n");
  }

  function relationText(relation, m) {
    if (relation === "nearest") return m.nn_status === "below_cutoff" ? "closest record dedup scored (below the cutoff)" : "dedup's nearest";
    if (relation === "points_here") return "has this one as its nearest";
    return relation;
  }

  function field(label, value, cls) {
    return h("div", { class: `field ${cls || ""}` }, h("div", { class: "name" }, label), h("div", { class: "text pre" }, value));
  }

  function render() {
    const item = current();
    const left = Math.max(0, S.items.length - S.pos);
    $("progress").textContent = `${S.reviewed} reviewed this session · ${left} loaded ahead` +
      (S.openAssignments !== null && S.openAssignments !== undefined ? ` · ${S.openAssignments} assigned to you` : "");
    const total = `${Math.max(S.total, S.before + S.items.length).toLocaleString("en")}${S.totalMore ? "+" : ""}`;
    const n = `${(S.before + S.pos + 1).toLocaleString("en")}${S.beforeMore ? "+" : ""}`;
    $("position").textContent = item ? `${n} of ${total}`
      : S.total ? `end of queue (${total} in it when you opened the page)` : "queue empty";
    $("empty").hidden = !!item;
    $("empty").textContent = S.inflight ? "Loading the next records…" : "Your queue is empty. Nothing more to review right now.";
    $("record").classList.toggle("is-empty", !item);
    if (!item) {
      for (const r of ["fields", "provenance", "machine", "neighbours"]) $(r).replaceChildren();
      for (const r of ["rid", "status", "rating", "tags"]) $(r).textContent = "";
      $("flag").hidden = true;
      return;
    }
    $("rid").textContent = `#${item.id} · v${item.version}`;
    $("status").textContent = item.status;
    $("status").className = `status ${item.status}`;
    $("rating").textContent = item.rating ? "★".repeat(item.rating) + "☆".repeat(5 - item.rating) : "";
    $("tags").textContent = (item.tags || []).map((t) => `#${t}`).join(" ");
    $("flag").hidden = !item.flagged;
    if (S.mode !== "edit") {
      const box = $("fields");
      box.replaceChildren();
      if (hasCands(item)) {
        paintCandidates(box, item);
      } else {
        if (item.system) box.append(field("System", item.system, "system"));
        if (item.messages && item.messages.length && !item.instruction) {
          item.messages.forEach((m, i) => box.append(field(`Turn ${i + 1} · ${m.role}`, m.content, `turn ${m.role}`)));
        } else {
          box.append(field("Instruction", item.instruction, "instruction"));
          if (item.input) box.append(field("Input", item.input, "input"));
          box.append(field("Output", item.output, "output"));
        }
      }
    }
    const p = item.provenance;
    const prov = $("provenance");
    kv(prov, [
      ["Source", p.source],
      ["Teacher", p.teacher_model],
      ["Operation", p.operation],
      ["Round", p.round],
      ["Prompt hash", p.prompt_hash ? p.prompt_hash.slice(0, 12) : null],
    ]);
    if (p.job_id) prov.append(h("dt", {}, "Job"), h("dd", {}, h("a", { href: `/ui/jobs/${p.job_id}` }, `#${p.job_id} ${p.job_kind || ""}`)));
    if (p.parent_id) prov.append(h("dt", {}, "Parent"), h("dd", {}, `#${p.parent_id} `, h("span", { class: "snippet" }, p.parent_instruction || "")));
    const m = item.machine;
    const [nnText, nnTitle] = nnFigure(m);
    kv($("machine"), [
      ["Status reason", m.reason],
      ["Rules", m.rules.map((r) => `${r.code}${r.detail ? `: ${typeof r.detail === "string" ? r.detail : JSON.stringify(r.detail)}` : ""}`).join("\n")],
      ["Judge score", m.judge_score],
      ["Judge rationale", m.judge_rationale],
      ["NN ROUGE-L", nnText, nnTitle],
      ["Label", m.label],
      ["Classification", m.is_classification === null ? null : m.is_classification ? "yes" : "no"],
      ["Labels", m.labels.join(", ")],
      ["Machine advice", adviceText(m, item.status), "A machine job's verdict on a record a person decided: kept beside the decision, never applied over it."],
      ["Candidate verdicts", (item.preference_advice || []).join("\n"), "The LLM judge's and imported datasets' current verdicts on the candidates: advice; a person's judgment outranks them."],
    ]);
    const nb = $("neighbours");
    nb.replaceChildren();
    if (!item.neighbours.length) {
      nb.append(h("li", { class: "muted" }, m.nn_status === "not_compared" ? "none known (run a dedup job)" : "none known"));
    }
    for (const n of item.neighbours) {
      nb.append(h("li", {}, h("span", { class: "score" }, fixed2(n.score)), " ", h("small", { class: "muted" }, `#${n.id} · ${n.status} · ${relationText(n.relation, m)}`), h("div", { class: "snippet" }, n.instruction)));
    }
    if (S.historyFor !== null && S.historyFor !== item.id) {
      $("history-box").hidden = true;
      S.historyFor = null;
    }
  }

  // ------------------------------------------------------------ help

  function openHelp() {
    S.modeBeforeHelp = S.mode;
    S.mode = "help";
    $("help").hidden = false;
    $("help-card").focus(); // screen readers start reading the dialog; Esc still closes it
  }

  function closeHelp() {
    $("help").hidden = true;
    S.mode = S.modeBeforeHelp === "help" ? "view" : S.modeBeforeHelp;
    if (S.mode === "view") render(); // replies that came while the help was open are shown now
  }

  // ------------------------------------------------------------ keys

  // The one table of shortcuts: the key handler dispatches through it, and the help overlay and the footer
  // are drawn from it, so what the page says it does and what it does cannot drift apart. `modes`: where
  // the key works (default: viewing a record); `always`: also with no record on screen.
  const SHORTCUTS = [
    { keys: ["a"], short: "accept", help: "accept, go to the next record", run: () => decide("accept", {}, true) },
    { keys: ["r"], short: "reject", help: "reject: type a reason (suggestions offered), Enter", run: () => ask("Reason for rejecting:", "", (reason) => decide("reject", { reason: reason || null }, true)) },
    { keys: ["e"], short: "edit", help: "edit in place: instruction, input and output, or every turn", run: startEdit },
    { keys: ["1", "2", "3", "4", "5"], show: "1–5", short: "rate", help: "rate the record from 1 to 5 (a record without candidates)", when: (it) => !hasCands(it), run: (key) => decide("rate", { rating: Number(key) }, false) },
    { keys: ["1", "2", "3", "4", "5", "6", "7", "8", "9"], show: "1–9", short: "choose / rank", help: "a record with candidates: 1 or 2 picks the better of two; with three or more, press them best first, then Enter", when: hasCands, run: pick },
    { keys: ["="], help: "two candidates: equally good (a tie gives no pair)", when: isPair, run: () => choose("tie") },
    { keys: ["b"], help: "two candidates: both bad (gives no pair)", when: isPair, run: () => choose("both_bad") },
    { keys: ["t"], short: "tag", help: "tags, comma-separated", run: () => ask("Tags, comma-separated:", (current().tags || []).join(", "), (v) => decide("tag", { tags: v.split(",").map((x) => x.trim()).filter(Boolean) }, false)) },
    { keys: ["s"], short: "skip", help: "skip, go to the next record", run: () => decide("skip", {}, true) },
    { keys: ["j"], short: "next", help: "next record (no request)", always: true, run: () => {
      if (S.pos < S.items.length) S.pos += 1;
      refillIfDry();
      render();
    } },
    { keys: ["k"], short: "prev", help: "previous record (no request)", always: true, run: () => {
      if (S.pos > 0) S.pos -= 1;
      render();
    } },
    { keys: ["u"], short: "undo", help: "undo your last decision; press again to go further back", always: true, run: undo },
    { keys: ["f"], short: "flag", help: "flag for a curator, with an optional note", run: () => ask("Note for the curator (optional):", "", (note) => decide("flag", { note }, true)) },
    { keys: ["h"], short: "history", help: "show or hide the record's history: edits, decisions, ratings, tags", run: () => {
      if (!$("history-box").hidden && S.historyFor === current().id) $("history-box").hidden = true;
      else showHistory(current().id);
    } },
    { keys: ["?"], short: "help", help: "show or hide this help", always: true, modes: ["view", "help"], run: () => (S.mode === "help" ? closeHelp() : openHelp()) },
    { keys: ["Enter"], help: "confirm the reason, tags or note being typed", modes: ["prompt"], run: () => $("prompt").requestSubmit() },
    { keys: ["Enter"], help: "save the ranking being typed (candidates not pressed tie last)", when: (it) => !!rankTyped(it), run: saveRanking },
    { keys: ["Backspace"], help: "take back the last candidate of the ranking being typed", when: (it) => !!rankTyped(it), run: takeBack },
    { keys: ["Ctrl+Enter"], help: "save the edit", modes: ["edit"], run: save },
    { keys: ["Escape"], show: "Esc", help: "close this help, cancel an edit or the reason being typed", modes: ["help", "edit", "prompt"], run: () => {
      if (S.mode === "help") closeHelp();
      else if (S.mode === "edit") stopEdit();
      else closePrompt();
    } },
  ];
  // A key may do different things on different records (1–5 rate, or choose a candidate): the first
  // shortcut whose modes and `when` fit the current record wins.
  const BY_KEY = new Map();
  for (const sc of SHORTCUTS) for (const k of sc.keys) BY_KEY.set(k, [...(BY_KEY.get(k) || []), sc]);

  function keyName(ev) {
    if (ev.key === "Enter") return ev.ctrlKey || ev.metaKey ? "Ctrl+Enter" : "Enter";
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return null; // the browser's own shortcuts stay the browser's
    return ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
  }

  function paintShortcuts() {
    const rows = $("help-keys");
    rows.replaceChildren();
    for (const sc of SHORTCUTS) {
      const label = sc.show ? [sc.show] : sc.keys;
      rows.append(h("tr", {}, h("th", {}, label.map((k) => h("kbd", {}, k))), h("td", {}, sc.help)));
    }
    const foot = $("shortcuts");
    foot.replaceChildren();
    SHORTCUTS.filter((sc) => sc.short).forEach((sc, i) => {
      if (i) foot.append(" · ");
      foot.append(h("kbd", {}, sc.show || sc.keys[0]), ` ${sc.short}`);
    });
  }

  document.addEventListener("keydown", (ev) => {
    const key = keyName(ev);
    const sc = key === null ? undefined : (BY_KEY.get(key) || []).find((x) =>
      (x.modes || ["view"]).includes(S.mode) && (!x.when || x.when(current())));
    if (!sc) return;
    const t = ev.target;
    const typing = t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
    if (S.mode === "view" && typing) return;
    if (S.mode === "view" && !current() && !sc.always) return;
    ev.preventDefault();
    sc.run(key);
  });

  document.addEventListener("DOMContentLoaded", () => {
    $("save").addEventListener("click", save);
    $("cancel-edit").addEventListener("click", stopEdit);
    $("dismiss").addEventListener("click", clearBanner);
    $("notice-dismiss").addEventListener("click", clearNotice);
    $("help-open").addEventListener("click", () => { if (S.mode === "view") openHelp(); });
    $("help").addEventListener("click", (ev) => { if (ev.target === $("help")) closeHelp(); });
    paintShortcuts();
    $("reload").addEventListener("click", () => {
      const rid = Number($("reload").dataset.rid);
      if (rid) reload(rid).catch((err) => failed(err));
    });
    render();
  });
})();
