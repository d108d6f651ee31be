// Events: the state-change timeline with reasons, live, filterable by service.

import { stream, escape, state } from "./api.js";

export async function render(root, _argument, signal) {
  root.innerHTML = `<h2>Events</h2>
    <p><input id="filter" type="search" placeholder="only this service"></p>
    <div class="table-wrap"><table><thead><tr><th>time</th><th>service</th><th>change</th><th>why</th></tr></thead>
    <tbody id="timeline"></tbody></table></div>`;
  const timeline = root.querySelector("#timeline");
  const filter = root.querySelector("#filter");
  const changes = [];
  const draw = () => {
    const wanted = filter.value.trim();
    timeline.innerHTML = changes.filter((c) => !wanted || c.service === wanted).slice(-300).reverse().map((c) =>
      `<tr><td>${new Date(c.at_unix_ms).toLocaleTimeString()}</td><td>${escape(c.service)}</td>
       <td>${escape(c.from)} → ${state(c.to)}</td><td class="muted">${escape(c.reason ?? "")}</td></tr>`).join("");
  };
  filter.addEventListener("input", draw);
  await stream("/v1/events?last=1000", (event, data) => {
    if (event !== "state") return;
    changes.push(JSON.parse(data));
    draw();
  }, { signal });
}
