// Live updates: each element with data-stream follows a server-sent event stream;
// a "progress" event updates the counters of its run, and (on a run page) the
// fragment with the tables and charts is fetched again.
document.querySelectorAll("[data-stream]").forEach((root) => {
  const source = new EventSource(root.dataset.stream);
  source.addEventListener("progress", (message) => {
    const p = JSON.parse(message.data);
    root.querySelectorAll(`[data-run="${CSS.escape(p.run)}"]`).forEach((row) => {
      for (const [key, value] of Object.entries(p)) {
        row.querySelectorAll(`[data-field="${key}"]`).forEach((el) => {
          el.textContent = key === "mean_auroc" && value !== null ? value.toFixed(3) : (value ?? "—");
        });
      }
      row.querySelectorAll('[data-field="bar"]').forEach((bar) => { bar.max = p.rounds; bar.value = p.round; });
    });
    const status = document.getElementById("run-status");
    if (status && root.dataset.live) { status.textContent = p.status; status.className = `status ${p.status}`; }
    if (root.dataset.live) {
      fetch(root.dataset.live).then((r) => r.text()).then((html) => { document.getElementById("live").innerHTML = html; });
    }
  });
  source.addEventListener("done", () => source.close());
});
