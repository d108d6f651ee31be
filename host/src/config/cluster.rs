//! `[cluster]`, resolved: which etcd, this node's name, the URL other nodes
//! reach it at, and the cluster's shared token. `NANNY_ETCD`, `NANNY_NODE`,
//! `NANNY_ADVERTISE` and `NANNY_CLUSTER_TOKEN_FILE` override the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::error::Source;
use super::file::RawCluster;
use super::{keys, ConfigError};

/// Where the cluster's keys live unless `prefix` says.
pub const DEFAULT_PREFIX: &str = "/nanny/v1";
/// How long a silent node stays listed unless `lease_ttl` says.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// `[cluster]` after overrides and checks; present only when `etcd` names endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterConfig {
    pub etcd: Vec<String>,
    pub node: String,
    /// `http://host:port`, without a trailing slash; empty until the daemon
    /// binds when not configured (then the listener's own address).
    pub advertise: String,
    pub prefix: String,
    pub lease_ttl: Duration,
    /// The first line of `token_file`.
    #[serde(skip)]
    pub token: Option<String>,
}

/// Reads `[cluster]`, pushing what is wrong onto `errors` (each naming its key).
pub(super) fn resolve(
    source: &Source<'_>,
    config: &Path,
    raw: &RawCluster,
    listen: SocketAddr,
    errors: &mut Vec<ConfigError>,
) -> Option<ClusterConfig> {
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let at = |key: &str| keys::offset_of(source.text, &["cluster", key]).unwrap_or(0);
    let mut problem = |variable: Option<&str>, key: &str, message: String| {
        errors.push(match variable {
            Some(variable) => ConfigError {
                file: source.path.to_path_buf(),
                line: 0,
                key: variable.to_string(),
                message: format!("{message} (from the environment)"),
            },
            None => source.error(at(key), format!("cluster.{key}"), message),
        });
    };
    let (etcd, etcd_from): (Vec<String>, _) = match env("NANNY_ETCD") {
        Some(list) => (
            list.split(',')
                .map(|url| url.trim().to_string())
                .filter(|url| !url.is_empty())
                .collect(),
            Some("NANNY_ETCD"),
        ),
        None => (
            raw.etcd.iter().map(|url| url.get_ref().clone()).collect(),
            None,
        ),
    };
    if etcd.is_empty() {
        return None;
    }
    for url in &etcd {
        if let Err(message) = host_and_port(url) {
            problem(etcd_from, "etcd", format!("`{url}`: {message}"));
        }
    }
    let (node, node_from) = match env("NANNY_NODE") {
        Some(node) => (node, Some("NANNY_NODE")),
        None => match &raw.node {
            Some(node) => (node.get_ref().clone(), None),
            None => (host_name().to_lowercase(), None),
        },
    };
    if !crate::names::is_valid(&node) {
        problem(
            node_from,
            "node",
            format!(
                "`{}` is no node name: lowercase letters, digits and `_.-`, at most 63 (the host name is the default; set `cluster.node`)",
                node.escape_default()
            ),
        );
    }
    let (advertise, advertise_from) = match env("NANNY_ADVERTISE") {
        Some(url) => (Some(url), Some("NANNY_ADVERTISE")),
        None => (
            raw.advertise.as_ref().map(|url| url.get_ref().clone()),
            None,
        ),
    };
    let advertise = match advertise {
        Some(url) => {
            let url = url.trim_end_matches('/').to_string();
            match host_and_port(&url) {
                Ok((host, _)) if is_wildcard(&host) => problem(
                    advertise_from,
                    "advertise",
                    format!(
                        "`{url}` is no address another machine can reach; name this machine's own"
                    ),
                ),
                Ok(_) => {}
                Err(message) => problem(advertise_from, "advertise", format!("`{url}`: {message}")),
            }
            url
        }
        None if listen.ip().is_unspecified() => {
            problem(
                None,
                "advertise",
                format!("`daemon.listen` is {listen}, a wildcard: say which URL other nodes reach this one at (`advertise = \"http://10.0.0.5:{}\"`)", listen.port()),
            );
            String::new()
        }
        // The address bound, once it is (a port of 0 is picked then).
        None => String::new(),
    };
    let prefix = match &raw.prefix {
        None => DEFAULT_PREFIX.to_string(),
        Some(prefix) => {
            let prefix = prefix.get_ref().trim_end_matches('/').to_string();
            if !prefix.starts_with('/') || prefix.contains("//") {
                problem(
                    None,
                    "prefix",
                    format!("`{prefix}` is no key prefix like `/nanny/v1`"),
                );
            }
            prefix
        }
    };
    let lease_ttl = raw.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
    if lease_ttl < Duration::from_secs(2) {
        problem(
            None,
            "lease_ttl",
            "at least 2s: etcd will not keep a shorter lease".into(),
        );
    }
    let token_file = match env("NANNY_CLUSTER_TOKEN_FILE") {
        Some(path) => Some((PathBuf::from(path), Some("NANNY_CLUSTER_TOKEN_FILE"))),
        None => raw.token_file.as_ref().map(|path| {
            let relative = config.parent().unwrap_or(Path::new("."));
            (relative.join(path.get_ref()), None)
        }),
    };
    let token = match token_file {
        None => {
            if !listen.ip().is_loopback() {
                problem(
                    None,
                    "token_file",
                    format!("nodes that listen beyond loopback ({listen}) need the cluster's shared token: set `cluster.token_file`"),
                );
            }
            None
        }
        Some((path, from)) => match std::fs::read_to_string(&path) {
            Ok(text) => match text.lines().next().map(str::trim) {
                Some(token) if !token.is_empty() => Some(token.to_string()),
                _ => {
                    problem(from, "token_file", format!("{} is empty", path.display()));
                    None
                }
            },
            Err(error) => {
                problem(
                    from,
                    "token_file",
                    format!("cannot read {}: {error}", path.display()),
                );
                None
            }
        },
    };
    Some(ClusterConfig {
        etcd,
        node,
        advertise,
        prefix,
        lease_ttl,
        token,
    })
}

/// The host and port of an `http://host:port` URL (no path).
pub fn host_and_port(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only `http://host:port` URLs are understood")?;
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err("a URL here has no path".into());
    }
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or("the URL needs its port (`http://10.0.0.5:7878`)")?;
    let port: u16 = port.parse().map_err(|_| format!("`{port}` is no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err("the URL needs a host and a port".into());
    }
    Ok((host.to_string(), port))
}

fn is_wildcard(host: &str) -> bool {
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// This machine's name, as `uname -n` says.
fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into a buffer this function owns.
    let written = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if written != 0 {
        return "localhost".into();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/nanny/nanny.toml"), text.into())
            .map_err(|errors| errors.to_string())
    }

    #[test]
    fn a_cluster_is_read_with_its_defaults() {
        assert!(parse("").unwrap().cluster.is_none(), "no etcd, no cluster");
        let config =
            parse("[cluster]\netcd = [\"http://10.0.0.9:2379\"]\nnode = \"gpu-a\"\n").unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.node, "gpu-a");
        assert_eq!(cluster.prefix, DEFAULT_PREFIX);
        assert_eq!(cluster.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(cluster.advertise, "", "the bound address, once bound");
    }

    #[test]
    fn a_wrong_cluster_names_each_key_and_line() {
        let errors = parse(
            "[daemon]\nlisten = \"0.0.0.0:7878\"\ntoken_file = \"/dev/null\"\n\n[cluster]\netcd = [\"10.0.0.9:2379\"]\nnode = \"GPU A\"\nlease_ttl = \"1s\"\nprefix = \"nanny\"\n",
        )
        .err().unwrap();
        for expected in [
            "nanny.toml:6: `cluster.etcd`",
            "nanny.toml:7: `cluster.node`",
            "nanny.toml:8: `cluster.lease_ttl`",
            "nanny.toml:9: `cluster.prefix`",
            "`cluster.advertise`: `daemon.listen` is 0.0.0.0:7878, a wildcard",
            "`cluster.token_file`: nodes that listen beyond loopback",
        ] {
            assert!(errors.contains(expected), "{expected} in:\n{errors}");
        }
        let errors = parse("[cluster]\netcd = [\"http://a:1\"]\nnode = \"a\"\nadvertise = \"http://0.0.0.0:7878\"\n").err().unwrap();
        assert!(
            errors.contains("no address another machine can reach"),
            "{errors}"
        );
        let errors = parse("[cluster]\netcd = [\"http://a:1\"]\nnode = \"a\"\nttl = \"5s\"\n")
            .err()
            .unwrap();
        assert!(errors.contains("`ttl`: unknown key"), "{errors}");
    }

    #[test]
    fn urls_are_http_host_and_port_only() {
        assert_eq!(
            host_and_port("http://10.0.0.5:7878").unwrap(),
            ("10.0.0.5".to_string(), 7878)
        );
        assert_eq!(
            host_and_port("http://[::1]:2379/").unwrap(),
            ("::1".to_string(), 2379)
        );
        for bad in [
            "10.0.0.5:7878",
            "https://a:1",
            "http://a",
            "http://a:x",
            "http://a:1/v1",
            "http://:1",
            "http://a:0",
        ] {
            assert!(host_and_port(bad).is_err(), "{bad}");
        }
        assert!(is_wildcard("0.0.0.0") && is_wildcard("::") && !is_wildcard("10.0.0.5"));
    }
}
