//! The dashboard in a real browser: Debian's headless Chromium driven by
//! Playwright for Python (PyPI, in a venv under the test cache, pointed at the
//! system browser: nothing is downloaded) against a live daemon with mock
//! services. A failing step saves a screenshot, whose path the failure names.
//! With `NANNY_UI_SCREENSHOTS=<dir>`, each page is also saved there (how the
//! README's pictures are made).

use nanny_tests::{python_with, run_python, Daemon};

const PLAYWRIGHT: &str = "playwright==1.49.1";

/// The shared start of every script: a browser, a page that records any
/// request leaving the daemon, and `step(name, action)`, which saves a
/// screenshot when the action fails. argv: daemon URL, chromium, a directory
/// for failure screenshots, a directory for page screenshots ("" for none),
/// what to answer when the page asks for the token.
const PRELUDE: &str = r##"
import json, os, re, sys
from playwright.sync_api import sync_playwright, expect

base, chromium, failures, pictures, token = sys.argv[1:6]
out = {"elsewhere": []}
playwright = sync_playwright().start()
browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
page = browser.new_page(viewport={"width": 1200, "height": 800})
page.on("request", lambda request: request.url.startswith(base) or out["elsewhere"].append(request.url))
dialogs = []
def answer(dialog):
    dialogs.append(dialog.message)
    dialog.accept(token) if dialog.type == "prompt" else dialog.accept()
page.on("dialog", answer)

def step(name, action):
    try:
        action()
    except Exception:
        shot = os.path.join(failures, name + ".png")
        page.screenshot(path=shot, full_page=True)
        print("the step `%s` failed; screenshot: %s" % (name, shot), file=sys.stderr)
        raise

def picture(name):
    if pictures:
        page.screenshot(path=os.path.join(pictures, name + ".png"))

def state_of(service):
    return page.locator('tr[data-service="%s"] [data-state]' % service)
"##;

const SERVICES_LOGS_PLAYGROUND: &str = r##"
def table_lists_both():
    page.goto(base + "/")
    expect(state_of("embeddings")).to_have_text("ready", timeout=60000)
    expect(state_of("chat")).to_have_text("ready", timeout=60000)
    picture("services")
step("table", table_lists_both)

def stop_without_reload():
    page.evaluate("window.loadedOnce = true")
    page.locator('tr[data-service="chat"] button[data-act="stop"]').click()
    expect(state_of("chat")).to_have_text("stopped", timeout=15000)
    out["not_reloaded"] = page.evaluate("window.loadedOnce === true")
step("stop", stop_without_reload)

def log_follows():
    page.goto(base + "/ui/#/service/chat")
    expect(page.locator("#log")).to_contain_text("listening on", timeout=15000)
    before = page.locator("#log").text_content().count("listening on")
    page.locator('button[data-act="start"]').click()
    # One more `listening on` than before: printed after the page loaded.
    expect(page.locator("#log")).to_have_text(re.compile("(listening on[\\s\\S]*){%d}" % (before + 1)), timeout=30000)
    out["lines_before"] = before
    page.locator("summary").click()
    expect(page.locator("#config")).to_contain_text('"backend": "mock"')
    expect(page.locator("#state [data-state]")).to_have_text("ready", timeout=30000)
    picture("service")
step("logs", log_follows)

def playground_streams():
    page.goto(base + "/ui/#/playground/mock-chat")
    page.locator("#send").click()
    expect(page.locator("#status")).to_contain_text("done", timeout=30000)
    out["answer"] = page.locator("#answer").text_content()
    picture("playground")
step("playground", playground_streams)

def other_pages():
    page.goto(base + "/ui/#/models")
    expect(page.locator("td", has_text="mock-embed")).to_be_visible()
    picture("models")
    page.goto(base + "/ui/#/events")
    expect(page.locator("#timeline tr").first).to_be_visible()
    out["events"] = page.locator("#timeline tr").count()
    picture("events")
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(base + "/ui/#/services")
    expect(state_of("chat")).to_be_visible()
    out["phone_overflow"] = page.evaluate("document.documentElement.scrollWidth > window.innerWidth + 1")
step("pages", other_pages)

browser.close()
playwright.stop()
print(json.dumps(out))
"##;

const FORCED_START: &str = r##"
def forced_start():
    page.goto(base + "/")
    expect(state_of("big-a")).to_have_text("ready", timeout=60000)
    page.locator('tr[data-service="big-b"] button[data-act="start"]').click()
    expect(state_of("big-b")).to_have_text("ready", timeout=60000)
    expect(state_of("big-a")).to_have_text("stopped", timeout=15000)
step("forced", forced_start)

def gpus_page():
    page.goto(base + "/ui/#/gpus")
    expect(page.locator('section[data-gpu="0"]')).to_contain_text("big-b")
    picture("gpus")
step("gpus", gpus_page)

out["dialogs"] = dialogs
browser.close()
playwright.stop()
print(json.dumps(out))
"##;

/// Runs `script` after the prelude against `daemon`; `token` is typed in when
/// the page asks for one.
fn in_browser(daemon: &Daemon, script: &str, token: &str) -> Option<serde_json::Value> {
    let chromium = nanny_tests::chromium()?;
    let python = python_with(PLAYWRIGHT);
    let failures = tempfile::Builder::new()
        .prefix("nanny-ui-failure-")
        .tempdir()
        .unwrap()
        .keep();
    let pictures = std::env::var("NANNY_UI_SCREENSHOTS").unwrap_or_default();
    Some(run_python(
        &python,
        &format!("{PRELUDE}{script}"),
        &[
            &daemon.url,
            &chromium.display().to_string(),
            &failures.display().to_string(),
            &pictures,
            token,
        ],
    ))
}

#[test]
fn the_dashboard_lists_stops_follows_logs_and_streams_a_chat() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\n{}\n\n[services.embeddings]\nbackend = \"mock\"\nsettings = {{ models = [\"mock-embed\"] }}\n\n[services.chat]\nbackend = \"mock\"\nsettings = {{ models = [\"mock-chat\"] }}\n",
            nanny_tests::port_range_line()
        ),
    )
    .unwrap();
    let daemon = Daemon::up(&config, dir.path());
    let Some(out) = in_browser(&daemon, SERVICES_LOGS_PLAYGROUND, "") else {
        return;
    };
    assert_eq!(
        out["not_reloaded"], true,
        "the row changed without a reload"
    );
    assert!(
        out["lines_before"].as_u64().is_some_and(|n| n >= 1),
        "{out}"
    );
    assert!(
        out["answer"].as_str().is_some_and(|a| !a.trim().is_empty()),
        "{out}"
    );
    assert!(out["events"].as_u64().is_some_and(|n| n >= 4), "{out}");
    assert_eq!(out["phone_overflow"], false, "fits a phone's width");
    assert_eq!(
        out["elsewhere"],
        serde_json::json!([]),
        "no request leaves the daemon"
    );
}

/// With a token: the page asks for it once; a start refused for GPUs asks
/// whether to take them, and does.
#[test]
fn a_start_refused_for_gpus_is_retried_with_force_once_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = nanny_tests::daemon_with_fake_gpus_and(
        dir.path(),
        "[services.big-a]\nbackend = \"mock\"\ngpus = [0]\nsettings = { models = [\"mock-a\"] }\n\n[services.big-b]\nbackend = \"mock\"\ngpus = [0]\nautostart = false\nsettings = { models = [\"mock-b\"] }\n",
        &[("NANNY_TOKEN", "sesame")],
    );
    let Some(out) = in_browser(&daemon, FORCED_START, "sesame") else {
        return;
    };
    let dialogs = out["dialogs"].to_string();
    assert!(
        dialogs.contains("`big-a`") && dialogs.contains("Stop the holder and start big-b?"),
        "{dialogs}"
    );
    assert!(
        dialogs.contains("needs its token"),
        "asked once for the token: {dialogs}"
    );
    assert_eq!(out["elsewhere"], serde_json::json!([]));
}
