// The dataset page: the import upload (the stats follow it without a reload), the filtered-records choice
// for the charts, and the bulk form's confirmation that names how many records it will change.
"use strict";

(() => {
  const FINAL = new Set(["succeeded", "failed", "cancelled", "paused"]);
  const POLL_MS = 1000;

  function includeFiltered() {
    const box = document.querySelector('[data-role="stats-options"] input[name="include_filtered"]');
    return Boolean(box && box.checked);
  }

  // Fetch the stats section again and swap it in. The server rendered (and escaped) it; DOMParser runs no
  // script and the nodes are moved in, never assigned as HTML.
  async function refreshStats(datasetId) {
    const url = `/ui/datasets/${datasetId}/stats?include_filtered=${includeFiltered()}`;
    const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (!resp.ok) throw new Error(`stats: ${resp.status} ${resp.statusText}`);
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    const fresh = doc.getElementById("dataset-stats");
    const current = document.getElementById("dataset-stats");
    if (!fresh || !current) return;
    current.replaceWith(document.adoptNode(fresh));
    const total = document.querySelector('[data-role="record-total"]');
    if (total) total.textContent = fresh.dataset.total;
  }

  function wireStatsOptions(datasetId) {
    // Delegated: the section (and its checkbox) is replaced on every refresh.
    document.addEventListener("change", (ev) => {
      if (!ev.target.closest('[data-role="stats-options"]')) return;
      const url = new URL(window.location.href);
      if (includeFiltered()) url.searchParams.set("include_filtered", "true");
      else url.searchParams.delete("include_filtered");
      window.history.replaceState(null, "", url);
      refreshStats(datasetId).catch((err) => { window.alert(err.message); });
    });
  }

  const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

  // A large file becomes an import job: follow it here, then refresh the figures once it has ended.
  async function followJob(jobId, out) {
    const link = IF.h("a", { href: `/ui/jobs/${jobId}` }, `import job #${jobId}`);
    for (;;) {
      const job = await IF.api("GET", `/api/v1/jobs/${jobId}`);
      const pct = job.progress_total ? Math.round((100 * job.progress_done) / job.progress_total) : 0;
      out.replaceChildren(link, ` ${job.status}`, FINAL.has(job.status) ? "" : ` ${pct}%`);
      if (FINAL.has(job.status)) return job;
      await sleep(POLL_MS);
    }
  }

  function wireImport(datasetId) {
    const form = document.getElementById("import-form");
    if (!form) return;
    const out = form.querySelector('[data-role="import-result"]');
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      out.textContent = "Uploading…";
      const fd = new FormData(form);
      if (!fd.get("skip_bad")) fd.set("skip_bad", "false");
      try {
        const res = await IF.api("POST", `/api/v1/datasets/${datasetId}/import`, fd);
        if (res.job_id) {
          const job = await followJob(res.job_id, out);
          const r = job.result || {};
          if (job.status === "succeeded") out.append(`: imported ${r.imported} records (${r.bad_count || 0} bad lines).`);
        } else {
          out.textContent = `Imported ${res.imported} records (${res.skipped_duplicates} duplicates skipped, ${res.bad.length} bad lines).`;
        }
        await refreshStats(datasetId);
        form.reset();
      } catch (err) {
        out.textContent = `Import failed: ${err.message}`;
      }
    });
  }

  // The filter fields of the bulk form as a query string (its CSRF token, status and reason are not filters).
  function filterQuery(form) {
    const query = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (["csrf_token", "target_status", "set_reason"].includes(name) || value === "") continue;
      query.append(name, value);
    }
    return query;
  }

  // The count behind the confirmation. A filter the server refuses comes back as its error page: its
  // message (which names the field) is what the curator sees.
  async function countMatching(form) {
    const resp = await fetch(`${form.dataset.countUrl}?${filterQuery(form)}`, { credentials: "same-origin" });
    const body = await resp.text();
    if (!resp.ok) {
      const error = new DOMParser().parseFromString(body, "text/html").querySelector(".error");
      throw new Error(error ? error.textContent : `${resp.status} ${resp.statusText}`);
    }
    return JSON.parse(body).count;
  }

  function wireBulk() {
    const form = document.getElementById("bulk-form");
    if (!form) return;
    const out = form.querySelector('[data-role="bulk-result"]');
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      out.textContent = "Counting…";
      let count;
      try {
        count = await countMatching(form);
      } catch (err) {
        out.textContent = `Nothing changed: ${err.message}`;
        return;
      }
      out.textContent = "";
      const status = form.querySelector('[name="target_status"]').value;
      if (count === 0) {
        out.textContent = "No record matches this filter: nothing to change.";
        return;
      }
      const noun = count === 1 ? "record" : "records";
      if (window.confirm(`Set ${count} ${noun} matching this filter to ${status}?`)) form.submit();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const datasetId = document.getElementById("import-form")?.dataset.dataset;
    if (!datasetId) return;
    wireStatsOptions(datasetId);
    wireImport(datasetId);
    wireBulk();
  });
})();
