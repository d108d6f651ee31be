// Services: a live table (from /v1/events, no reload), with start, stop and
// restart; a start refused for GPUs offers to take them with `force`.

import { get, post, stream, escape, state, since, ApiError } from "./api.js";

function row(s) {
  const retry = s.next_retry_unix_ms
    ? `retry in ${Math.max(0, Math.round((s.next_retry_unix_ms - Date.now()) / 1000))}s` : "";
  const reason = s.reason ?? retry;
  const loading = s.loading_percent != null
    ? `<div class="bar" title="${s.loading_percent}%"><span style="width:${s.loading_percent}%"></span></div>` : "";
  const uptime = ["ready", "starting", "unhealthy"].includes(s.state) ? since(s.since_unix_ms) : "-";
  return `<tr data-service="${escape(s.name)}">
    <td><a href="#/service/${encodeURIComponent(s.name)}">${escape(s.name)}</a></td>
    <td>${state(s.state)}${loading}</td>
    <td class="wide">${escape(s.backend)}</td>
    <td>${uptime}</td>
    <td>${s.port}</td>
    <td class="wide">${escape(s.gpus.join(", ") || "-")}</td>
    <td class="wide">${s.restarts}</td>
    <td class="wide">${escape(s.models.map((m) => m.id).join(", ") || "-")}</td>
    <td class="muted">${escape(reason || s.last_failure || "")}</td>
    <td><button data-act="start">start</button><button data-act="stop">stop</button><button data-act="restart">restart</button></td>
  </tr>`;
}

/** Starts (or stops, restarts) `name`; a GPU conflict asks whether to force. */
export async function act(name, verb, report) {
  try {
    await post(`/v1/services/${encodeURIComponent(name)}/${verb}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 409 && verb === "start"
        && window.confirm(`${error.message}\n\nStop the holder and start ${name}?`)) {
      await post(`/v1/services/${encodeURIComponent(name)}/start?force=true`);
      return;
    }
    report(error.message);
  }
}

export async function render(root, _argument, signal) {
  root.innerHTML = `<h2>Services</h2><p class="error" id="problem"></p>
    <div class="table-wrap"><table id="services"><thead><tr><th>name</th><th>state</th><th class="wide">backend</th>
    <th>uptime</th><th>port</th><th class="wide">GPUs</th><th class="wide">restarts</th><th class="wide">models</th>
    <th>why</th><th></th></tr></thead><tbody></tbody></table></div>`;
  const body = root.querySelector("tbody");
  const problem = root.querySelector("#problem");
  let listed = [];
  const draw = () => { body.innerHTML = listed.map(row).join(""); };
  const refresh = async () => { listed = await get("/v1/services"); draw(); };
  body.addEventListener("click", (click) => {
    const button = click.target.closest("button[data-act]");
    if (!button) return;
    problem.textContent = "";
    act(button.closest("tr").dataset.service, button.dataset.act, (message) => { problem.textContent = message; });
  });
  await refresh();
  const ticker = setInterval(draw, 5000);
  signal.addEventListener("abort", () => clearInterval(ticker));
  // Each change updates its row; the event carries all the table shows but models.
  await stream("/v1/events", async (event, data) => {
    if (event !== "state") return;
    const change = JSON.parse(data);
    const index = listed.findIndex((s) => s.name === change.service);
    if (index < 0) return refresh();
    listed[index] = await get(`/v1/services/${encodeURIComponent(change.service)}`);
    draw();
  }, { signal });
}
