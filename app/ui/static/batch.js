// The job form's "Use the batch API" box: shown only while the chosen teacher has a batch API (its names
// are in the field's data-batch-teachers); hidden, it is unticked, so the job runs synchronously. Job
// creation refuses batch mode with any other teacher, with or without this script.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const box = document.querySelector('[data-field="batch"][data-batch-teachers]');
  const teacher = document.querySelector('select[name="teacher"]');
  if (!box || !teacher) return;
  const offered = new Set(box.dataset.batchTeachers.split(",").filter(Boolean));
  const input = box.querySelector('input[name="batch"]');
  const sync = () => {
    const ok = offered.has(teacher.value);
    box.hidden = !ok;
    if (!ok) input.checked = false;
  };
  teacher.addEventListener("change", sync);
  sync();
});
