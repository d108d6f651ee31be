// The dashboard's router: one page at a time, chosen by the URL's hash
// (`#/services`, `#/service/chat`, …); leaving a page stops its live streams.

import { escape } from "./api.js";
import * as services from "./services.js";
import * as service from "./service.js";
import * as gpus from "./gpus.js";
import * as models from "./models.js";
import * as playground from "./playground.js";
import * as events from "./events.js";

const pages = { services, service, gpus, models, playground, events };
let leaving = null;

async function show() {
  const [, name, argument] = location.hash.split("/");
  leaving?.abort();
  leaving = new AbortController();
  const page = pages[name] ?? services;
  const root = document.getElementById("page");
  root.innerHTML = "";
  try {
    await page.render(root, decodeURIComponent(argument ?? ""), leaving.signal);
  } catch (error) {
    if (error.name !== "AbortError") {
      root.insertAdjacentHTML("beforeend", `<p class="error">${escape(error.message)}</p>`);
    }
  }
}

window.addEventListener("hashchange", show);
show();
