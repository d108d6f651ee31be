// The one module that talks to the daemon: JSON calls and Server-Sent Event
// streams (read with fetch, so that the token can go in a header), with the
// token asked once and kept in this tab's session storage.

const TOKEN = "nanny-token";

function headers(extra = {}) {
  const token = sessionStorage.getItem(TOKEN);
  const all = { "X-Nanny-Client": "ui", ...extra };
  if (token) all.Authorization = `Bearer ${token}`;
  return all;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function send(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (response.status === 401 && askToken()) return send(method, path, body);
  return response;
}

/** Asks for the daemon's token when it wants one; true when one was given. */
function askToken() {
  const token = window.prompt("This nanny needs its token (NANNY_TOKEN):");
  if (!token) return false;
  sessionStorage.setItem(TOKEN, token.trim());
  return true;
}

async function json(method, path, body) {
  const response = await send(method, path, body);
  const text = await response.text();
  let value = null;
  try { value = text ? JSON.parse(text) : null; } catch { value = null; }
  if (!response.ok) {
    throw new ApiError(response.status, value?.error?.message ?? `${response.status} ${text}`);
  }
  return value;
}

export const get = (path) => json("GET", path);
export const post = (path, body) => json("POST", path, body);

/**
 * Reads the event stream at `path` (GET, or POST with `body`), calling
 * `each(event, data)` for every event; resolves when it ends. `signal` stops it.
 */
export async function stream(path, each, { body, signal } = {}) {
  const init = { method: body ? "POST" : "GET", signal, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  let response = await fetch(path, init);
  if (response.status === 401 && askToken()) return stream(path, each, { body, signal });
  if (!response.ok) {
    const text = await response.text();
    let message = text;
    try { message = JSON.parse(text).error.message; } catch { /* as text */ }
    throw new ApiError(response.status, message);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  let event = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += value;
    let end;
    while ((end = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, end).replace(/\r$/, "");
      buffered = buffered.slice(end + 1);
      if (line === "") {
        if (data.length) each(event, data.join("\n"));
        event = "message";
        data = [];
      } else if (line.startsWith(":")) {
        each("comment", line.slice(1).trim());
      } else if (line.startsWith("event:")) {
        event = line.slice(6).trim();
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).trimStart());
      }
    }
  }
}

/** Text made safe to put in HTML. */
export function escape(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function state(name) {
  return `<span class="state state-${escape(name)}" data-state="${escape(name)}">${escape(name)}</span>`;
}

export function since(unixMs) {
  if (!unixMs) return "-";
  const seconds = Math.max(0, Math.round((Date.now() - unixMs) / 1000));
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  return `${Math.floor(seconds / 3600)}h${Math.floor((seconds % 3600) / 60)}m`;
}
