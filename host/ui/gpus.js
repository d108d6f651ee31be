// GPUs: each card's memory as a bar, its leases and their holders, and the
// PIDs of stopped services whose memory is not back yet.

import { get, escape } from "./api.js";

export async function render(root, _argument, signal) {
  root.innerHTML = `<h2>GPUs</h2><div id="cards"></div>`;
  const cards = root.querySelector("#cards");
  const draw = async () => {
    const snapshot = await get("/v1/gpus");
    if (!snapshot.devices.length) {
      cards.innerHTML = `<p class="muted">No GPUs (source: ${escape(snapshot.source)}).</p>`;
      return;
    }
    cards.innerHTML = snapshot.devices.map((d) => {
      const percent = d.memory_total_mib ? Math.round((100 * d.memory_used_mib) / d.memory_total_mib) : 0;
      const leases = d.leases.map((l) => `<li>${escape(l.service)} <span class="muted">${escape(l.mode)}${l.vram_mib ? `, ${l.vram_mib} MiB` : ""}</span></li>`).join("");
      const held = d.held_by_stopped_pids.length
        ? `<p class="error">Still held by stopped PIDs ${escape(d.held_by_stopped_pids.join(", "))}</p>` : "";
      return `<section data-gpu="${d.index}"><h3>GPU ${d.index}: ${escape(d.name)}</h3>
        <div class="bar" title="${percent}%"><span style="width:${percent}%"></span></div>
        <p class="muted">${d.memory_used_mib} / ${d.memory_total_mib} MiB</p>
        <ul>${leases || "<li class=muted>no lease</li>"}</ul>${held}</section>`;
    }).join("");
  };
  await draw();
  const ticker = setInterval(() => draw().catch(() => {}), 2000);
  signal.addEventListener("abort", () => clearInterval(ticker));
}
