// Models: every model the gateway routes, running or not, and its service.

import { get, escape, state } from "./api.js";

export async function render(root) {
  const listed = await get("/v1/models");
  root.innerHTML = `<h2>Models</h2><div class="table-wrap"><table><thead><tr><th>model</th><th>service</th><th>state</th></tr></thead>
    <tbody>${listed.data.map((m) => `<tr><td>${escape(m.id)}</td>
      <td><a href="#/service/${encodeURIComponent(m.owned_by)}">${escape(m.owned_by)}</a></td>
      <td>${state(m.status)}</td></tr>`).join("")}</tbody></table></div>
    <p class="muted">Any of them answers at <code>${escape(location.origin)}/v1</code>; a stopped one is started by its first request.</p>`;
}
