// The job form's "Use the batch API" box: shown only while the chosen teacher has a batch API (its names
// are in the field's data-batch-teachers); hidden, it is unticked, so the job runs synchronously. Job
// creation refuses batch mode with any other teacher, with or without this script. Fields that only batch
// mode reads (data-batch-only: Self-Instruct's batch_spares) are shown only while the box is ticked;
// hidden, they keep their value, which a synchronous job ignores.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const box = document.querySelector('[data-field="batch"][data-batch-teachers]');
  const teacher = document.querySelector('select[name="teacher"]');
  const batchOnly = document.querySelectorAll("[data-batch-only]");
  if (!box || !teacher) {
    batchOnly.forEach((field) => { field.hidden = true; });
    return;
  }
  const offered = new Set(box.dataset.batchTeachers.split(",").filter(Boolean));
  const input = box.querySelector('input[name="batch"]');
  const sync = () => {
    const ok = offered.has(teacher.value);
    box.hidden = !ok;
    if (!ok) input.checked = false;
    batchOnly.forEach((field) => { field.hidden = !input.checked; });
  };
  teacher.addEventListener("change", sync);
  input.addEventListener("change", sync);
  sync();
});
