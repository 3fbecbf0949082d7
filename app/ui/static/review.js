// The keyboard review page. Every action is at most one request, sent in order; the reply of each
// decision refills the buffer, so the next record is always already on the page.
"use strict";

(() => {
  const data = JSON.parse(document.getElementById("review-data").textContent);
  const DS = data.dataset_id;
  const PREFETCH = data.prefetch;
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

  function enqueue(fn, item) {
    S.inflight += 1;
    S.chain = S.chain
      .then(fn)
      .catch((err) => failed(err, item))
      .finally(() => {
        S.inflight -= 1;
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
    render();
    enqueue(async () => {
      const want = need();
      const res = await IF.api("POST", `/api/v1/review/records/${item.id}/decision`, {
        action,
        version: item.version,
        ...extra,
        prefetch_after: maxId(),
        prefetch: want,
      });
      Object.assign(item, res.record);
      addItems(res.next);
      if (want && res.next.length < want) S.exhausted = true;
      if (ADVANCING.has(action)) {
        S.reviewed += 1;
        if (item.assigned && action !== "skip" && action !== "flag" && S.openAssignments) S.openAssignments -= 1;
      }
    }, item);
  }

  function refillIfDry() {
    if (S.inflight || S.exhausted || current()) return;
    enqueue(async () => {
      const res = await IF.api("GET", `/api/v1/review/datasets/${DS}/queue?after_id=${maxId()}&limit=${PREFETCH}`);
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
      banner(`Undid ${res.undone_action} on record #${it.id}.`);
    });
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
        paintHistory(item.id, res.history);
      } finally {
        $("save").disabled = false;
      }
    }, item);
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

  function paintHistory(rid, revisions) {
    S.historyFor = rid;
    const box = $("history");
    box.replaceChildren();
    if (!revisions.length) box.append(h("p", { class: "muted" }, "Never edited."));
    for (const rev of revisions) {
      const sec = h("div", { class: "revision" },
        h("div", { class: "rev-head" }, `v${rev.version} by ${rev.edited_by || "unknown"} · ${rev.edited_at}${rev.note ? ` — ${rev.note}` : ""}`));
      for (const [field, parts] of Object.entries(rev.changes)) {
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
      paintHistory(rid, await IF.api("GET", `/api/v1/review/records/${rid}/history`));
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
      if (item.system) box.append(field("System", item.system, "system"));
      if (item.messages && item.messages.length && !item.instruction) {
        item.messages.forEach((m, i) => box.append(field(`Turn ${i + 1} · ${m.role}`, m.content, `turn ${m.role}`)));
      } else {
        box.append(field("Instruction", item.instruction, "instruction"));
        if (item.input) box.append(field("Input", item.input, "input"));
        box.append(field("Output", item.output, "output"));
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

  // ------------------------------------------------------------ keys

  const KEYS = {
    a: () => decide("accept", {}, true),
    r: () => ask("Reason for rejecting:", "", (reason) => decide("reject", { reason: reason || null }, true)),
    e: startEdit,
    t: () => ask("Tags, comma-separated:", (current().tags || []).join(", "), (v) => decide("tag", { tags: v.split(",").map((x) => x.trim()).filter(Boolean) }, false)),
    s: () => decide("skip", {}, true),
    f: () => ask("Note for the curator (optional):", "", (note) => decide("flag", { note }, true)),
    u: undo,
    j: () => {
      if (S.pos < S.items.length) S.pos += 1;
      refillIfDry();
      render();
    },
    k: () => {
      if (S.pos > 0) S.pos -= 1;
      render();
    },
    h: () => {
      if (!$("history-box").hidden && S.historyFor === current().id) $("history-box").hidden = true;
      else showHistory(current().id);
    },
  };

  document.addEventListener("keydown", (ev) => {
    if (S.mode === "edit" && ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      save();
      return;
    }
    if (ev.key === "Escape") {
      if (S.mode === "edit") stopEdit();
      else if (S.mode === "prompt") closePrompt();
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || S.mode !== "view") return;
    const t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable)) return;
    const key = ev.key.toLowerCase();
    if (/^[1-5]$/.test(key)) {
      if (current()) decide("rate", { rating: Number(key) }, false);
      ev.preventDefault();
      return;
    }
    const fn = KEYS[key];
    if (!fn) return;
    if (!current() && !["u", "k"].includes(key)) return;
    ev.preventDefault();
    fn();
  });

  document.addEventListener("DOMContentLoaded", () => {
    $("save").addEventListener("click", save);
    $("cancel-edit").addEventListener("click", stopEdit);
    $("dismiss").addEventListener("click", clearBanner);
    $("reload").addEventListener("click", () => {
      const rid = Number($("reload").dataset.rid);
      if (rid) reload(rid).catch((err) => failed(err));
    });
    render();
  });
})();
