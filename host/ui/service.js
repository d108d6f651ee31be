// One service: what it is, its resolved configuration, its logs following
// live (search, pause), its recent events and its models.

import { get, stream, escape, state, since } from "./api.js";
import { act } from "./services.js";

export async function render(root, name, signal) {
  const path = `/v1/services/${encodeURIComponent(name)}`;
  root.innerHTML = `<h2>${escape(name)} <span id="state"></span></h2>
    <p><button data-act="start">start</button><button data-act="stop">stop</button><button data-act="restart">restart</button>
    <span class="error" id="problem"></span></p>
    <table id="about"></table>
    <details><summary>Configuration, as resolved</summary><pre class="log" id="config"></pre></details>
    <h3>Models</h3><ul id="models"></ul>
    <h3>Logs</h3>
    <p><input id="search" type="search" placeholder="search the log"> <label><input id="pause" type="checkbox"> pause</label></p>
    <pre class="log" id="log"></pre>
    <h3>Recent events</h3><ul id="events"></ul>`;
  // What the service is now; drawn again on each of its state changes.
  const describe = async () => {
    const s = await get(path);
    root.querySelector("#state").innerHTML = state(s.state);
    const about = {
      backend: `${s.backend} ${s.plugin_version}`, port: s.port, "in this state for": since(s.since_unix_ms),
      pid: s.pid ?? s.container_id ?? "-", GPUs: s.gpus.join(", ") || "-", restarts: s.restarts,
      "last failure": s.last_failure ?? "-", reason: s.reason ?? "-", MCP: s.mcp ?? "-",
    };
    root.querySelector("#about").innerHTML = Object.entries(about)
      .map(([key, value]) => `<tr><th>${escape(key)}</th><td>${escape(value)}</td></tr>`).join("");
    root.querySelector("#models").innerHTML = s.models.map((m) => `<li>${escape(m.id)}</li>`).join("")
      || "<li class=muted>none reported</li>";
  };
  await describe();
  get(`${path}/config`).then((config) => {
    root.querySelector("#config").textContent = JSON.stringify(config, null, 2);
  }).catch(() => {});
  const problem = root.querySelector("#problem");
  root.querySelectorAll("button[data-act]").forEach((button) => button.addEventListener("click", () => {
    problem.textContent = "";
    act(name, button.dataset.act, (message) => { problem.textContent = message; });
  }));

  const log = root.querySelector("#log");
  const search = root.querySelector("#search");
  const pause = root.querySelector("#pause");
  const lines = [];
  const draw = () => {
    if (pause.checked) return;
    const needle = search.value.toLowerCase();
    log.textContent = lines.filter((line) => line.toLowerCase().includes(needle)).join("\n");
    log.scrollTop = log.scrollHeight;
  };
  search.addEventListener("input", draw);
  pause.addEventListener("change", draw);

  const changes = root.querySelector("#events");
  const past = [];
  const drawEvents = () => {
    changes.innerHTML = past.slice(-20).reverse().map((e) =>
      `<li>${new Date(e.at_unix_ms).toLocaleTimeString()} ${escape(e.from)} → ${state(e.to)} <span class="muted">${escape(e.reason ?? "")}</span></li>`).join("");
  };
  const following = stream(`${path}/logs?tail=500&follow=true`, (event, data) => {
    if (event !== "line") return;
    lines.push(JSON.parse(data).text);
    if (lines.length > 5000) lines.shift();
    draw();
  }, { signal });
  const watching = stream("/v1/events?last=1000", (event, data) => {
    if (event !== "state") return;
    const change = JSON.parse(data);
    if (change.service !== name) return;
    past.push(change);
    drawEvents();
    describe().catch(() => {});
  }, { signal });
  await Promise.all([following, watching]);
}
