//! Capability grants: what a third-party plugin's plans may ask the host to
//! run. The sandbox confines a plugin's code; these confine its *plan* — the
//! program, image, mounts and environment it asks for — and are checked
//! before anything runs. Builtin plugins are trusted and not checked.
//!
//! ```toml
//! [plugins.pyhttp]
//! programs = ["python3", "/opt/venvs/*/bin/python"]
//! images = ["vllm/vllm-openai:*"]
//! mounts = ["/srv/models", { path = "/scratch", rw = true }]
//! env = ["HF_*", "VLLM_*"]
//! compose = ["/srv/stacks/*"]
//! ```

use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use super::{Compose, Container, Launch, Process};

/// What the user granted one plugin. Nothing granted: it may launch nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Grants {
    /// Programs its plans may launch: a bare name (as found on PATH) or an
    /// absolute path, `*` matching within one part of a path.
    pub programs: Vec<String>,
    /// Container images, `*` matching anything (`vllm/vllm-openai:*`).
    pub images: Vec<String>,
    /// Host folders it may mount (and what is under them).
    pub mounts: Vec<MountGrant>,
    /// Environment names it may set (`HF_*`), beyond the service's own `env`.
    pub env: Vec<String>,
    /// Compose project folders it may bring up (a compose file can run
    /// anything, so the folder is what the user vouches for).
    pub compose: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountGrant {
    pub path: PathBuf,
    /// Writable too; read-only otherwise.
    pub rw: bool,
}

/// A plan outside its plugin's grants: what it asked for, and the line that
/// would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the plugin `{plugin}` asked to {asked}, which its grants do not allow; {remedy}")]
pub struct Refusal {
    pub plugin: String,
    pub asked: String,
    pub remedy: String,
}

/// Environment names no grant opens: the dynamic loader's (a plugin that sets
/// `LD_PRELOAD` runs its own code in the backend) and nanny's own.
pub fn never_grantable(name: &str) -> bool {
    ["LD_", "DYLD_", "NANNY_"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

impl Grants {
    /// Whether `launch` stays within these grants. `configured_env` is the
    /// service's own `env` (the user wrote it): those names, with those values,
    /// need no grant.
    pub fn check(
        &self,
        plugin: &str,
        launch: &Launch,
        configured_env: &[(String, String)],
    ) -> Result<(), Refusal> {
        let refuse = |asked: String, line: String| Refusal {
            plugin: plugin.to_string(),
            asked,
            remedy: format!("to allow it, add under `[plugins.{plugin}]` in nanny.toml: {line}"),
        };
        let env = match launch {
            Launch::Process(process) => {
                self.check_program(process)
                    .map_err(|(asked, line)| refuse(asked, line))?;
                &process.env
            }
            Launch::Container(container) => {
                self.check_container(container)
                    .map_err(|(asked, line)| refuse(asked, line))?;
                &container.env
            }
            Launch::Compose(compose) => {
                self.check_compose(compose)
                    .map_err(|(asked, line)| refuse(asked, line))?;
                &compose.env
            }
        };
        for (name, value) in env {
            if configured_env
                .iter()
                .any(|(key, given)| key == name && given == value)
            {
                continue;
            }
            if never_grantable(name) {
                return Err(Refusal {
                    plugin: plugin.to_string(),
                    asked: format!("set `{}`", name.escape_default()),
                    remedy: "loader and nanny variables (`LD_*`, `DYLD_*`, `NANNY_*`) are never granted; set it in the service's own `env` if you mean it".into(),
                });
            }
            if !self
                .env
                .iter()
                .any(|pattern| crate::glob::matches(pattern, name))
            {
                return Err(refuse(
                    format!("set `{}`", name.escape_default()),
                    format!("env = [\"{}\"]", name.escape_default()),
                ));
            }
        }
        Ok(())
    }

    fn check_program(&self, process: &Process) -> Result<(), (String, String)> {
        let asked = &process.program;
        // What is matched and shown: a path resolved, a bare name as it is.
        let (shown, granted) = if asked.contains('/') {
            let resolved = normalized(Path::new(asked)).to_string_lossy().into_owned();
            let granted = self.programs.iter().any(|pattern| {
                pattern.contains('/') && crate::glob::matches_path(pattern, &resolved)
            });
            (resolved, granted)
        } else {
            // A bare name runs whatever PATH finds: granted by that name, or
            // by a path grant that matches where PATH finds it (looked up once).
            let found = std::cell::OnceCell::new();
            let granted = self.programs.iter().any(|pattern| {
                if pattern.contains('/') {
                    found
                        .get_or_init(|| {
                            on_path(asked).map(|path| path.to_string_lossy().into_owned())
                        })
                        .as_deref()
                        .is_some_and(|found| crate::glob::matches_path(pattern, found))
                } else {
                    crate::glob::matches(pattern, asked)
                }
            });
            (asked.clone(), granted)
        };
        if granted {
            return Ok(());
        }
        Err((
            format!("run `{}`", shown.escape_default()),
            format!("programs = [\"{}\"]", shown.escape_default()),
        ))
    }

    fn check_container(&self, container: &Container) -> Result<(), (String, String)> {
        let image = &container.image;
        if !self
            .images
            .iter()
            .any(|pattern| crate::glob::matches(pattern, image))
        {
            return Err((
                format!("run the image `{}`", image.escape_default()),
                format!("images = [\"{}\"]", image.escape_default()),
            ));
        }
        for mount in &container.mounts {
            let source = normalized(Path::new(&mount.source));
            let covered = self.mounts.iter().any(|grant| {
                source.is_absolute()
                    && source.starts_with(&grant.path)
                    && (mount.read_only || grant.rw)
            });
            if !covered {
                let shown = source.to_string_lossy();
                let (how, line) = if mount.read_only {
                    (
                        "read-only",
                        format!("mounts = [\"{}\"]", shown.escape_default()),
                    )
                } else {
                    (
                        "writable",
                        format!(
                            "mounts = [{{ path = \"{}\", rw = true }}]",
                            shown.escape_default()
                        ),
                    )
                };
                return Err((format!("mount `{}` ({how})", shown.escape_default()), line));
            }
        }
        Ok(())
    }
}

impl Grants {
    /// The project folder and every compose file outside it must be granted.
    fn check_compose(&self, compose: &Compose) -> Result<(), (String, String)> {
        let folder = normalized(Path::new(compose.work_dir.as_deref().unwrap_or("")));
        let granted = |path: &Path| {
            let shown = path.to_string_lossy();
            path.is_absolute()
                && self.compose.iter().any(|pattern| {
                    crate::glob::matches_path(pattern, &shown)
                        || path.starts_with(Path::new(pattern))
                })
        };
        let asked = std::iter::once(folder.clone()).chain(
            compose
                .files
                .iter()
                .chain(&compose.env_files)
                .map(|file| normalized(&folder.join(file)))
                .filter(|file| !file.starts_with(&folder)),
        );
        for path in asked {
            if !granted(&path) {
                let shown = path.to_string_lossy();
                return Err((
                    format!("bring up the compose project `{}`", shown.escape_default()),
                    format!("compose = [\"{}\"]", shown.escape_default()),
                ));
            }
        }
        Ok(())
    }
}

/// `path` with `.` and `..` worked out by the letters (no file is read: the
/// plugin cannot make links, and a `..` must not walk out of a grant).
fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Where PATH finds `program`, as the launcher would.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .map(|found| normalized(&found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::Mount;

    fn process(program: &str, env: &[(&str, &str)]) -> Launch {
        Launch::Process(Process {
            program: program.into(),
            args: vec!["-c".into(), "id".into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            work_dir: None,
        })
    }

    fn container(image: &str, mounts: &[(&str, bool)]) -> Launch {
        Launch::Container(Container {
            image: image.into(),
            command: Vec::new(),
            env: Vec::new(),
            port: 8000,
            mounts: mounts
                .iter()
                .map(|(source, read_only)| Mount {
                    source: source.to_string(),
                    target: "/m".into(),
                    read_only: *read_only,
                })
                .collect(),
            shm_size_mib: None,
        })
    }

    fn grants() -> Grants {
        Grants {
            programs: vec!["python3".into(), "/opt/venvs/*/bin/python".into()],
            images: vec!["vllm/vllm-openai:*".into()],
            mounts: vec![
                MountGrant {
                    path: "/srv/models".into(),
                    rw: false,
                },
                MountGrant {
                    path: "/scratch".into(),
                    rw: true,
                },
            ],
            env: vec!["HF_*".into()],
            compose: vec!["/srv/stacks/*".into()],
        }
    }

    fn compose(folder: &str, files: &[&str]) -> Launch {
        Launch::Compose(Compose {
            files: files.iter().map(|file| file.to_string()).collect(),
            profiles: Vec::new(),
            env_files: Vec::new(),
            service: None,
            container_port: Some(8000),
            env: Vec::new(),
            work_dir: Some(folder.into()),
        })
    }

    #[test]
    fn a_compose_project_runs_only_from_a_granted_folder() {
        let grants = grants();
        for allowed in [
            compose("/srv/stacks/qwen", &[]),
            compose("/srv/stacks/qwen", &["compose.gpu.yaml", "sub/more.yaml"]),
        ] {
            assert_eq!(grants.check("p", &allowed, &[]), Ok(()), "{allowed:?}");
        }
        for (refused, shown) in [
            (compose("/etc", &[]), "/etc"),
            (compose("/srv/stacks/qwen/../../../etc", &[]), "/etc"),
            (
                compose("/srv/stacks/qwen", &["../../../root/evil.yaml"]),
                "/root/evil.yaml",
            ),
            (compose("relative", &[]), "relative"),
        ] {
            let refusal = grants.check("p", &refused, &[]).unwrap_err();
            assert_eq!(
                refusal.asked,
                format!("bring up the compose project `{shown}`"),
                "{refused:?}"
            );
            assert!(refusal.remedy.contains(&format!("compose = [\"{shown}\"]")));
        }
        assert!(Grants::default()
            .check("p", &compose("/srv/stacks/qwen", &[]), &[])
            .is_err());
    }

    #[test]
    fn plans_within_their_grants_pass() {
        let grants = grants();
        for launch in [
            process("python3", &[("HF_HOME", "/x")]),
            process("/opt/venvs/a/bin/python", &[]),
            process("/opt/venvs/a/./bin/python", &[("PORT", "1")]),
            container(
                "vllm/vllm-openai:v0.6",
                &[("/srv/models/qwen", true), ("/scratch", false)],
            ),
        ] {
            assert_eq!(
                grants.check("p", &launch, &[("PORT".into(), "1".into())]),
                Ok(()),
                "{launch:?}"
            );
        }
    }

    #[test]
    fn plans_beyond_their_grants_are_refused_with_the_line_to_add() {
        let grants = grants();
        let refused = |launch: Launch| {
            grants
                .check("pyhttp", &launch, &[])
                .unwrap_err()
                .to_string()
        };
        let sh = refused(process("/bin/sh", &[]));
        assert!(
            sh.contains("the plugin `pyhttp` asked to run `/bin/sh`"),
            "{sh}"
        );
        assert!(
            sh.contains("[plugins.pyhttp]") && sh.contains("programs = [\"/bin/sh\"]"),
            "{sh}"
        );
        let escape = refused(process("/opt/venvs/../../bin/sh", &[]));
        assert!(
            escape.contains("run `/bin/sh`"),
            "resolved before matching: {escape}"
        );
        assert!(refused(process("sh", &[])).contains("programs = [\"sh\"]"));
        let preload = refused(process("python3", &[("LD_PRELOAD", "/tmp/x.so")]));
        assert!(preload.contains("never granted"), "{preload}");
        assert!(refused(process("python3", &[("NANNY_TOKEN", "x")])).contains("never granted"));
        assert!(refused(process("python3", &[("PORT", "2")])).contains("env = [\"PORT\"]"));
        assert!(refused(container("evil/miner:latest", &[]))
            .contains("images = [\"evil/miner:latest\"]"));
        let root = refused(container("vllm/vllm-openai:v1", &[("/", false)]));
        assert!(
            root.contains("mount `/` (writable)") && root.contains("rw = true"),
            "{root}"
        );
        let out = refused(container(
            "vllm/vllm-openai:v1",
            &[("/srv/models/../../etc", true)],
        ));
        assert!(out.contains("mount `/etc` (read-only)"), "{out}");
        let written = refused(container("vllm/vllm-openai:v1", &[("/srv/models", false)]));
        assert!(written.contains("(writable)"), "{written}");
        let nothing = Grants::default().check("x", &process("python3", &[]), &[]);
        assert!(nothing.is_err(), "no grants: nothing may be launched");
    }
}
