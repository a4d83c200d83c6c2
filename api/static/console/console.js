// chatfleet console: the live parts of its pages, from the API's own event streams. Text is only
// ever set as text (textContent): model output never becomes markup.
"use strict";

function followJob(el) {
  const status = document.getElementById("status");
  const source = new EventSource(el.dataset.stream);
  let replayed = false;
  source.onmessage = (event) => {
    if (!replayed) { el.textContent = ""; replayed = true; }  // the stream replays from the start
    const data = JSON.parse(event.data);
    const message = (data.chat_completion || {}).message || {};
    if (message.content) el.textContent += message.content;
    if (status && status.textContent !== "running") status.textContent = "running";
  };
  source.addEventListener("throttled", (event) => {
    if (status) status.textContent = "throttled: " + (JSON.parse(event.data).reason || "");
  });
  source.addEventListener("error", (event) => {
    if (event.data) {
      const error = JSON.parse(event.data);
      if (status) status.textContent = "failed: " + (error.code || "") + " " + (error.message || "");
      source.close();
    }
  });
  source.addEventListener("end", (event) => {
    if (status) status.textContent = JSON.parse(event.data).status || "ended";
    el.dataset.done = "true";
    source.close();
  });
}

function followBatch(el) {
  const source = new EventSource(el.dataset.stream);
  const show = (event) => {
    const batch = JSON.parse(event.data);
    const counts = batch.request_counts;
    const done = counts.completed + counts.failed;
    const finished = ["completed", "failed", "expired", "cancelled"].includes(batch.status);
    const percent = counts.total ? Math.floor(100 * done / counts.total) : (finished ? 100 : 0);
    document.getElementById("batch-status").textContent = batch.status;
    document.getElementById("batch-progress").value = percent;
    document.getElementById("batch-percent").textContent = percent + " %";
    document.getElementById("batch-completed").textContent = counts.completed;
    document.getElementById("batch-failed").textContent = counts.failed;
    document.getElementById("batch-total").textContent = counts.total;
    return finished;
  };
  source.addEventListener("progress", show);
  source.addEventListener("end", (event) => { show(event); el.dataset.done = "true"; source.close(); });
}

document.addEventListener("DOMContentLoaded", () => {
  const tokens = document.getElementById("tokens");
  if (tokens && tokens.dataset.done !== "true") followJob(tokens);
  const batch = document.getElementById("batch");
  if (batch && batch.dataset.done !== "true") followBatch(batch);
});
