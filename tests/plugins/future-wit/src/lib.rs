//! A plugin for nanny:backend@0.3.0, which this nanny must refuse by name.

wit_bindgen::generate!({ path: "wit", world: "backend" });

struct Future;

impl Guest for Future {
    fn describe() -> String {
        "future".to_string()
    }
}

impl exports::nanny::backend::session::Guest for Future {
    type Session = Session;
}

pub struct Session;

impl exports::nanny::backend::session::GuestSession for Session {
    fn new(_name: String) -> Self {
        Session
    }

    fn ready(&self) -> bool {
        true
    }
}

// Component export names cannot be native symbols.
#[cfg(target_arch = "wasm32")]
export!(Future);
