//! Values for a plugin's native unit tests.

use crate::{Gpu, HttpResponse, Service, Setting, Value};

/// A service on 127.0.0.1:8000 with no model, GPUs or settings.
pub fn service(name: &str) -> Service {
    Service {
        name: name.to_string(),
        host: "127.0.0.1".to_string(),
        port: 8000,
        model: None,
        args: Vec::new(),
        env: Vec::new(),
        work_dir: None,
        gpus: Vec::new(),
        settings: Vec::new(),
    }
}

/// `count` GPUs of 80 GiB, indexed from 0.
pub fn gpus(count: u32) -> Vec<Gpu> {
    (0..count)
        .map(|index| Gpu {
            index,
            uuid: format!("GPU-{index:08x}-0000-0000-0000-000000000000"),
            memory_mib: 81_920,
        })
        .collect()
}

/// A setting for [`Service::settings`].
pub fn text_setting(key: &str, value: &str) -> Setting {
    Setting {
        key: key.to_string(),
        value: Value::Text(value.to_string()),
    }
}

/// A probe answer with a JSON body.
pub fn json_response(status: u16, body: &str) -> HttpResponse {
    HttpResponse {
        status,
        content_type: Some("application/json".to_string()),
        body: body.as_bytes().to_vec(),
    }
}
