//! The host's own view of what crosses the plugin boundary. Every contract
//! version's generated types are converted to and from these at the edge of
//! `plugin/` (in `bindings/`), so the rest of nanny never names a generated type
//! and speaks every version at once. They follow the newest contract
//! (`wit/backend.wit`); an older plugin simply never plans what it cannot say.

/// A GPU leased to the service.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub memory_mib: u64,
}

/// A setting value as written in `[services.<name>.settings]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub key: String,
    pub value: Value,
}

/// One setting a plugin reads, as it describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingSpec {
    pub key: String,
    pub help: String,
    pub default: Option<Value>,
    pub required: bool,
}

/// What `describe` answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    pub name: String,
    pub version: String,
    pub summary: String,
    pub settings: Vec<SettingSpec>,
}

/// A service as configured, after nanny resolved port, GPUs and paths.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub model: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub work_dir: Option<String>,
    pub gpus: Vec<Gpu>,
    pub settings: Vec<Setting>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub work_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub port: u16,
    pub mounts: Vec<Mount>,
    pub shm_size_mib: Option<u64>,
}

/// A Docker Compose project (contract 0.2.0 and later).
#[derive(Debug, Clone, PartialEq)]
pub struct Compose {
    pub files: Vec<String>,
    pub profiles: Vec<String>,
    pub env_files: Vec<String>,
    pub service: Option<String>,
    pub container_port: Option<u16>,
    pub env: Vec<(String, String)>,
    pub work_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Launch {
    Process(Process),
    Container(Container),
    Compose(Compose),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub path: String,
    pub period_ms: u32,
    pub timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub launch: Launch,
    pub readiness: Probe,
    pub liveness: Option<Probe>,
    pub models_path: String,
    pub stop_signal: Option<u8>,
    pub grace_ms: Option<u32>,
    pub vram_mib: Option<u64>,
}

/// A problem with the service's configuration, naming the key.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// What the plugin reads from one output line or probe answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Nothing,
    Loading(Option<u8>),
    Ready,
    Failed(String),
}

/// A probe answer as nanny received it.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub id: String,
    pub owned_by: Option<String>,
    pub context_length: Option<u32>,
}

/// What an exit means.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitAdvice {
    Restart,
    GiveUp(String),
}

/// The severity of a plugin's log message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}
