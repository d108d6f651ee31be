// Playground: a chat message to any model through the gateway, the answer
// streamed in; a stopped model is started and its loading shown.

import { get, stream, escape } from "./api.js";

export async function render(root, chosen, signal) {
  const listed = await get("/v1/models");
  root.innerHTML = `<h2>Playground</h2>
    <p><select id="model">${listed.data.map((m) =>
      `<option value="${escape(m.id)}" ${m.id === chosen ? "selected" : ""}>${escape(m.id)} (${escape(m.status)})</option>`).join("")}</select></p>
    <p><textarea id="prompt" rows="3" cols="60">Say hello.</textarea></p>
    <p><button id="send">send</button> <span id="status" class="muted"></span></p>
    <div class="answer" id="answer"></div>`;
  const answer = root.querySelector("#answer");
  const status = root.querySelector("#status");
  root.querySelector("#send").addEventListener("click", async () => {
    answer.textContent = "";
    answer.classList.remove("error");
    status.textContent = "asking…";
    const began = performance.now();
    const body = {
      model: root.querySelector("#model").value,
      messages: [{ role: "user", content: root.querySelector("#prompt").value }],
      stream: true,
    };
    try {
      await stream("/v1/chat/completions", (event, data) => {
        if (event === "comment") { status.textContent = data.replace(/^nanny: /, ""); return; }
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        answer.textContent += chunk.choices?.[0]?.delta?.content ?? "";
        status.textContent = "streaming…";
      }, { body, signal });
      status.textContent = `done in ${((performance.now() - began) / 1000).toFixed(2)}s`;
    } catch (error) {
      if (error.name === "AbortError") return;
      answer.classList.add("error");
      answer.textContent = error.message;
      status.textContent = "";
    }
  });
}
