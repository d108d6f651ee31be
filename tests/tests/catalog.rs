//! The model catalog over a folder of real GGUF files: the tiny model the
//! llama.cpp test set-up writes, copied under several names, as a split model
//! and cut short; read through `GET /v1/catalog`, `nanny models` and
//! `GET /v1/models`, rescanned when a file is added, and served on demand.

use nanny_tests::{call, llama_cpp, nanny_bin, port_range_line, Daemon};

/// The `openai` SDK asks for a model by name; prints what it answered.
const ASK: &str = r#"
import json, sys
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="not-needed-on-loopback", max_retries=0, timeout=120)
answer = client.chat.completions.create(model=sys.argv[2], messages=[{"role": "user", "content": "hi"}], max_tokens=4)
print(json.dumps({"content": answer.choices[0].message.content}))
"#;

#[test]
fn a_folder_of_ggufs_is_a_catalog_of_models() {
    let model = std::fs::read(&llama_cpp().model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("more")).unwrap();
    std::fs::write(models.join("Tiny-Llama.gguf"), &model).unwrap();
    std::fs::write(models.join("more/tiny-llama.gguf"), &model).unwrap();
    std::fs::write(models.join("twin-00001-of-00002.gguf"), &model).unwrap();
    std::fs::write(models.join("twin-00002-of-00002.gguf"), &model).unwrap();
    std::fs::write(models.join("cut.gguf"), &model[..model.len().min(200)]).unwrap();
    std::fs::write(models.join("readme.txt"), "not a model").unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
{}

[catalog]
dirs = ["models"]

[[catalog.templates]]
match = "*.gguf"
backend = "llama-cpp"
idle_timeout = "2s"
settings = {{ program = {:?}, ctx_size = 256 }}

[services.by-hand]
backend = "mock"
autostart = false
models = ["tiny-llama-2"]
"#,
            port_range_line(),
            llama_cpp().server.display().to_string()
        ),
    )
    .unwrap();
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("nanny: the catalog has 3 model(s)"));

    let (status, catalog) = call("GET", &format!("{}/v1/catalog", daemon.url), None);
    assert_eq!(status, 200, "{catalog}");
    let ids: Vec<&str> = catalog["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["tiny-llama", "tiny-llama-2", "twin"], "{catalog:#}");
    let tiny = &catalog["models"][0];
    assert_eq!(tiny["gguf"]["architecture"], "llama", "{tiny:#}");
    assert!(tiny["gguf"]["parameters"].as_u64().is_some_and(|n| n > 0));
    assert!(tiny["vram_estimate_mib"].as_u64().is_some(), "{tiny:#}");
    assert_eq!(tiny["template"], "*.gguf");
    let twin = &catalog["models"][2];
    assert_eq!(twin["parts"], 2);
    assert_eq!(twin["size_bytes"], 2 * model.len() as u64);
    let problems = catalog["problems"].to_string();
    assert!(
        problems.contains("cut.gguf") && problems.contains("cut short"),
        "{problems}"
    );
    assert!(problems.contains("`tiny-llama` is"), "{problems}");

    // `/v1/models`: a service by hand wins its name; the rest are available.
    let (_, listed) = call("GET", &format!("{}/v1/models", daemon.url), None);
    let owner = |id: &str| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| (m["owned_by"].clone(), m["status"].clone()))
    };
    assert_eq!(owner("tiny-llama-2").unwrap().0, "by-hand");
    assert_eq!(
        owner("twin").unwrap(),
        ("catalog".into(), "available".into())
    );

    // The CLI reads the same.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(nanny_bin())
            .args(args)
            .args(["--url", &daemon.url])
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let table = cli(&["models"]);
    assert!(
        table.starts_with("ID") && table.contains("twin") && table.contains("llama"),
        "{table}"
    );
    assert!(cli(&["models", "--errors"]).contains("cut.gguf: "));

    // A file added while nanny runs: the watcher sees it, the catalog rescans.
    std::fs::write(models.join("late.gguf"), &model).unwrap();
    daemon.expect(|line| line.starts_with("nanny: the catalog has 4 model(s)"));
    let (_, catalog) = call("GET", &format!("{}/v1/catalog", daemon.url), None);
    assert!(
        catalog["models"].to_string().contains("\"late\""),
        "{catalog:#}"
    );
    let (_, listed) = call("GET", &format!("{}/v1/models", daemon.url), None);
    assert!(
        listed.to_string().contains("\"late\""),
        "routable: {listed}"
    );

    // Asked for by name through the `openai` SDK: a service made from the
    // template, started through the real llama-server, answers; idle, it is
    // stopped and forgotten.
    let python = nanny_tests::python_with("openai==1.109.1");
    let answer =
        nanny_tests::run_python(&python, ASK, &[&format!("{}/v1", daemon.url), "tiny-llama"]);
    assert!(answer["content"].is_string(), "{answer}");
    let (_, made) = call(
        "GET",
        &format!("{}/v1/services/cat-tiny-llama", daemon.url),
        None,
    );
    assert_eq!(made["backend"], "llama-cpp", "{made}");
    daemon.expect(|line| line == "[cat-tiny-llama] stopped: idle for 2s");
    // Forgotten right after that stop (no event says so): look for a while.
    let gone = (0..100).any(|_| {
        let (status, _) = call(
            "GET",
            &format!("{}/v1/services/cat-tiny-llama", daemon.url),
            None,
        );
        status == 404 || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            false
        }
    });
    assert!(gone, "still listed after its idle stop");
    // Still in the catalog, still routable.
    let (_, listed) = call("GET", &format!("{}/v1/models", daemon.url), None);
    assert!(listed.to_string().contains("\"tiny-llama\""), "{listed}");
}

/// Two catalog models whose template leases GPU 0: asking for one, then the
/// other, swaps them on the (fake) GPU, as configured services are.
#[test]
fn catalog_models_on_one_gpu_are_swapped() {
    let model = std::fs::read(&llama_cpp().model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("left.gguf"), &model).unwrap();
    std::fs::write(models.join("right.gguf"), &model).unwrap();
    let daemon = nanny_tests::daemon_with_fake_gpus(
        dir.path(),
        &format!(
            "[catalog]\ndirs = [{:?}]\n\n[[catalog.templates]]\nmatch = \"*.gguf\"\nbackend = \"mock\"\ngpus = [0]\n",
            models.display().to_string()
        ),
    );
    daemon.expect(|line| line.starts_with("nanny: the catalog has 2 model(s)"));
    let ask = |model: &str| {
        let mut answer = nanny_tests::agent()
            .post(&format!("{}/v1/chat/completions", daemon.url))
            .header("Content-Type", "application/json")
            .send(&format!(
                r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}]}}"#
            ))
            .unwrap();
        let body = answer.body_mut().read_to_string().unwrap();
        assert_eq!(answer.status().as_u16(), 200, "{model}: {body}");
    };
    ask("left");
    ask("right");
    daemon.expect(|line| line.starts_with("[cat-left] stopped") && line.contains("cat-right"));
    let (_, gpus) = call("GET", &format!("{}/v1/gpus", daemon.url), None);
    let leases = gpus["devices"][0]["leases"].to_string();
    assert!(
        leases.contains("cat-right") && !leases.contains("cat-left"),
        "{gpus:#}"
    );
    let (_, right) = call(
        "GET",
        &format!("{}/v1/services/cat-right/config", daemon.url),
        None,
    );
    assert!(
        right["gpu"]["vram_mib"].as_u64().is_some(),
        "the model's estimate: {right:#}"
    );
}
