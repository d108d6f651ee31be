//! Whether a service's port is free before it launches, and who holds it when
//! not: a foreign server on the port would answer the service's probes and make
//! it look ready.

use std::io::ErrorKind;

/// `Err` with a reason naming the holder when something listens on `host:port`
/// already. Anything else (an address this machine does not have, say) is left
/// for the launch itself to find out.
pub fn check_free(host: &str, port: u16) -> Result<(), String> {
    match std::net::TcpListener::bind((host, port)) {
        Err(error) if error.kind() == ErrorKind::AddrInUse => Err(match listener_of(port) {
            Some((pid, name)) => format!("port {port} is in use by pid {pid} ({name})"),
            None => format!("port {port} is in use by another program"),
        }),
        _ => Ok(()),
    }
}

/// The process listening on TCP `port`, from `/proc/net/tcp*` (the socket's
/// inode) and `/proc/*/fd` (who has that socket open).
fn listener_of(port: u16) -> Option<(i32, String)> {
    let holders = listener_holders(port);
    holders.first().map(|pid| (*pid, command_name(*pid)))
}

fn command_name(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Every process holding a socket that listens on TCP `port` (IPv4 or IPv6).
fn listener_holders(port: u16) -> Vec<i32> {
    let targets: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .filter_map(|table| listening_inode(&table, port))
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    if targets.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|link| targets.iter().any(|t| link.as_os_str() == t.as_str()))
                })
        })
        .collect()
}

/// Who answers on a port, as far as this machine lets nanny tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    /// A process of the launch holds the listening socket.
    Ours,
    /// Another program does: (pid, command name).
    Foreign(i32, String),
    /// No listening socket nanny can see (another network namespace, or
    /// `/proc` it may not read): the probe's answer is taken as it is.
    Unknown,
}

/// Whether the socket listening on `port` belongs to a process `ours` accepts.
pub fn who_listens(port: u16, ours: impl Fn(i32) -> bool) -> Listener {
    let holders = listener_holders(port);
    if holders.iter().any(|pid| ours(*pid)) {
        return Listener::Ours;
    }
    match holders.first() {
        Some(pid) => Listener::Foreign(*pid, command_name(*pid)),
        None => Listener::Unknown,
    }
}

/// The inode of the socket listening on `port` in one `/proc/net/tcp` table.
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    const LISTEN: &str = "0A";
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1)?.rsplit(':').next()?;
        let listening = fields.get(3) == Some(&LISTEN);
        let matches = u16::from_str_radix(local_port, 16).ok() == Some(port);
        (listening && matches).then(|| fields.get(9)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_ours_only_when_its_holder_is() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        assert_eq!(who_listens(port, |pid| pid == me), Listener::Ours);
        assert!(matches!(who_listens(port, |_| false), Listener::Foreign(pid, _) if pid == me));
        drop(held);
        assert_eq!(who_listens(port, |_| true), Listener::Unknown);
    }

    #[test]
    fn a_port_held_here_names_this_process() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let reason = check_free("127.0.0.1", port).unwrap_err();
        assert!(
            reason.starts_with(&format!(
                "port {port} is in use by pid {} (",
                std::process::id()
            )),
            "{reason}"
        );
        drop(held);
        assert_eq!(check_free("127.0.0.1", port), Ok(()));
    }
}
