//! nanny as an MCP server, driven by the real Python `mcp` client (PyPI, in a
//! venv under the test cache): over Streamable HTTP at `/mcp`, over stdio
//! (`nanny mcp`), and a service that is an MCP server itself reached through
//! `/mcp/services/{name}`.

use nanny_tests::{call, daemon_with_fake_gpus, nanny_bin, python_with, run_python, Daemon};

const MCP: &str = "mcp==1.26.0";

/// Initialises, lists the tools and drives start, logs, a GPU conflict,
/// explain, stop, a bad name, a resource and the events. argv: the MCP URL,
/// then the bearer token ("" for none).
const OVER_HTTP: &str = r#"
import asyncio, json, sys
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

def text(result):
    return result.content[0].text if result.content else ""

async def main():
    out = {}
    headers = {"Authorization": "Bearer " + sys.argv[2]} if sys.argv[2] else None
    async with streamablehttp_client(sys.argv[1], headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            out["tools"] = {tool.name: [tool.annotations.readOnlyHint, tool.annotations.destructiveHint] for tool in tools}
            out["schemas"] = {tool.name: sorted(tool.inputSchema.get("properties", {})) for tool in tools}
            started = await session.call_tool("start_service", {"name": "chat"})
            out["started"] = [started.isError, json.loads(text(started))["state"]]
            logs = await session.call_tool("get_logs", {"name": "chat", "grep": "LISTENING ON"})
            out["logs"] = [line["text"] for line in json.loads(text(logs))["lines"]]
            ready = await session.call_tool("list_services", {"state": "ready"})
            out["ready"] = sorted(service["name"] for service in json.loads(text(ready)))
            conflict = await session.call_tool("start_service", {"name": "big-b"})
            out["conflict"] = [conflict.isError, text(conflict)]
            explained = await session.call_tool("explain", {"name": "big-b"})
            out["explained"] = json.loads(text(explained))["explanation"]
            stopped = await session.call_tool("stop_service", {"name": "chat"})
            out["stopped"] = json.loads(text(stopped))["state"]
            bad = await session.call_tool("get_service", {"name": "../etc"})
            out["bad"] = [bad.isError, text(bad)]
            unknown = await session.call_tool("get_service", {"name": "nobody"})
            out["unknown"] = [unknown.isError, text(unknown)]
            resource = await session.read_resource("nanny://services/chat")
            out["resource"] = json.loads(resource.contents[0].text)["state"]
            listed = await session.list_resources()
            out["resources"] = sorted(str(r.uri) for r in listed.resources)
            events = await session.call_tool("recent_events", {"service": "chat"})
            out["events"] = [event["to"] for event in json.loads(text(events))]
    print(json.dumps(out))

asyncio.run(main())
"#;

fn config() -> &'static str {
    r#"
[services.chat]
backend = "mock"
autostart = false
settings = { models = ["mock-chat"] }

[services.big-a]
backend = "mock"
gpus = [0]
settings = { models = ["mock-a"] }

[services.big-b]
backend = "mock"
gpus = [0]
autostart = false
settings = { models = ["mock-b"] }
"#
}

#[test]
fn an_assistant_starts_reads_and_stops_services_over_http() {
    let python = python_with(MCP);
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_fake_gpus(dir.path(), config());
    daemon.expect(|line| line.starts_with("[big-a] ready"));
    let out = run_python(&python, OVER_HTTP, &[&format!("{}/mcp", daemon.url), ""]);

    let tools = &out["tools"];
    for name in [
        "list_services",
        "get_service",
        "start_service",
        "stop_service",
        "restart_service",
        "get_logs",
        "list_models",
        "list_gpus",
        "recent_events",
        "explain",
    ] {
        assert!(tools.get(name).is_some(), "no tool {name}: {tools}");
    }
    assert_eq!(tools["list_services"][0], true, "reading is read-only");
    assert_eq!(tools["stop_service"][1], true, "stopping is destructive");
    assert_eq!(
        out["schemas"]["start_service"],
        serde_json::json!(["force", "name", "wait"])
    );
    assert_eq!(out["started"], serde_json::json!([false, "ready"]));
    assert!(
        out["logs"].as_array().is_some_and(|lines| !lines.is_empty()
            && lines
                .iter()
                .all(|l| l.as_str().unwrap_or_default().contains("listening on"))),
        "{}",
        out["logs"]
    );
    assert_eq!(out["ready"], serde_json::json!(["big-a", "chat"]));
    // The API's 409, as a tool error naming the holder and suggesting `force`.
    let conflict = out["conflict"][1].as_str().unwrap_or_default();
    assert_eq!(out["conflict"][0], true, "{conflict}");
    assert!(
        conflict.contains("`big-a`") && conflict.contains("force"),
        "{conflict}"
    );
    let explained = out["explained"].as_str().unwrap_or_default();
    assert!(explained.contains("`big-b` is stopped"), "{explained}");
    assert_eq!(out["stopped"], "stopped");
    assert_eq!(out["bad"][0], true);
    assert!(
        out["bad"][1]
            .as_str()
            .is_some_and(|text| text.contains("is not a service name")),
        "{}",
        out["bad"]
    );
    assert_eq!(
        out["unknown"],
        serde_json::json!([true, "no service named `nobody`"])
    );
    assert_eq!(out["resource"], "stopped");
    let resources = out["resources"].to_string();
    for uri in [
        "nanny://services",
        "nanny://gpus",
        "nanny://events",
        "nanny://services/chat/logs",
    ] {
        assert!(resources.contains(&format!("\"{uri}\"")), "{resources}");
    }
    // Started, ready, stopping, stopped: in order, with nothing else of chat's.
    let events: Vec<&str> = out["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event.as_str())
        .collect();
    let ready = events.iter().position(|to| *to == "ready");
    let stopped = events.iter().rposition(|to| *to == "stopped");
    assert!(
        ready.is_some() && stopped.is_some() && ready < stopped,
        "{events:?}"
    );
}

/// A daemon guarded by the token `sesame`, with `services` after its `[daemon]` table.
fn with_token(dir: &std::path::Path, services: &str) -> Daemon {
    let config = dir.join("nanny.toml");
    let text = format!("[daemon]\n{}\n\n{services}", nanny_tests::port_range_line());
    std::fs::write(&config, text).unwrap();
    Daemon::up_with(&config, dir, &[("NANNY_TOKEN", "sesame")])
}

#[test]
fn mcp_over_http_keeps_the_daemon_token() {
    let python = python_with(MCP);
    let dir = tempfile::tempdir().unwrap();
    let daemon = with_token(
        dir.path(),
        "[services.chat]\nbackend = \"mock\"\nautostart = false\n",
    );
    let mcp = format!("{}/mcp", daemon.url);
    assert_eq!(call("POST", &mcp, None).0, 401);
    assert_eq!(call("POST", &mcp, Some("not-sesame")).0, 403);
    const LIST: &str = r#"
import asyncio, json, sys
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

async def main():
    headers = {"Authorization": "Bearer " + sys.argv[2]}
    async with streamablehttp_client(sys.argv[1], headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.call_tool("list_services", {})
            print(json.dumps([s["name"] for s in json.loads(listed.content[0].text)]))

asyncio.run(main())
"#;
    let names = run_python(&python, LIST, &[&mcp, "sesame"]);
    assert_eq!(names, serde_json::json!(["chat"]));
}

/// `nanny mcp` as an assistant launches it: a subprocess on stdio, its tools
/// answered by the daemon at `--url` (with `NANNY_TOKEN`).
const OVER_STDIO: &str = r#"
import asyncio, json, sys
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

async def main():
    out = {}
    for token in ["sesame", "wrong"]:
        server = StdioServerParameters(command=sys.argv[1], args=["mcp", "--url", sys.argv[2]], env={"NANNY_TOKEN": token})
        async with stdio_client(server) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                out[token + "_tools"] = len((await session.list_tools()).tools)
                models = await session.call_tool("list_models", {})
                out[token] = [models.isError, models.content[0].text]
    print(json.dumps(out))

asyncio.run(main())
"#;

#[test]
fn nanny_mcp_serves_the_same_tools_on_stdio() {
    let python = python_with(MCP);
    let dir = tempfile::tempdir().unwrap();
    let daemon = with_token(
        dir.path(),
        "[services.chat]\nbackend = \"mock\"\nautostart = false\nmodels = [\"my-chat\"]\n",
    );
    let nanny = nanny_bin();
    let out = run_python(
        &python,
        OVER_STDIO,
        &[&nanny.display().to_string(), &daemon.url],
    );
    assert_eq!(out["sesame_tools"], 10);
    assert_eq!(out["sesame"][0], false);
    let models: serde_json::Value =
        serde_json::from_str(out["sesame"][1].as_str().unwrap()).unwrap();
    assert_eq!(models["data"][0]["id"], "my-chat");
    assert_eq!(out["wrong"], serde_json::json!([true, "wrong token"]));
}

/// A tiny MCP server (the `mcp` package's FastMCP) on the port nanny gives it.
const TOOL_SERVER: &str = r#"
import sys
from mcp.server.fastmcp import FastMCP

server = FastMCP("shouter", host="127.0.0.1", port=int(sys.argv[1]))

@server.tool()
def shout(text: str) -> str:
    """Says it louder."""
    return text.upper() + "!"

server.run(transport="streamable-http")
"#;

const USE_TOOL: &str = r#"
import asyncio, json, sys
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

async def main():
    async with streamablehttp_client(sys.argv[1]) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            names = [tool.name for tool in (await session.list_tools()).tools]
            shouted = await session.call_tool("shout", {"text": "hello"})
            print(json.dumps({"tools": names, "shouted": shouted.content[0].text}))

asyncio.run(main())
"#;

#[test]
fn a_service_that_is_an_mcp_server_starts_on_demand_and_stops_when_idle() {
    let python = python_with(MCP);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
{}

[services.shouter]
backend = "command"
autostart = false
idle_timeout = "2s"
mcp = {{ path = "/mcp" }}
settings = {{ command = [{:?}, "-c", {:?}, "{{port}}"], health_path = "", ready_line = "Uvicorn running on" }}
"#,
            nanny_tests::port_range_line(),
            python.display().to_string(),
            TOOL_SERVER
        ),
    )
    .unwrap();
    let daemon = Daemon::up(&config, dir.path());
    let (_, listed) = call("GET", &format!("{}/v1/services", daemon.url), None);
    assert_eq!(listed[0]["mcp"], "/mcp/services/shouter");
    assert_eq!(listed[0]["state"], "stopped");
    let out = run_python(
        &python,
        USE_TOOL,
        &[&format!("{}/mcp/services/shouter", daemon.url)],
    );
    assert_eq!(out["tools"], serde_json::json!(["shout"]));
    assert_eq!(out["shouted"], "HELLO!");
    // The session is over: nothing in flight, so idleness stops it.
    daemon.expect(|line| line == "[shouter] stopped: idle for 2s");
    // Not an MCP server: a clear 404.
    let (status, body) = call("POST", &format!("{}/mcp/services/nobody", daemon.url), None);
    assert_eq!(status, 404, "{body}");
}
