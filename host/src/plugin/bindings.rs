//! Host bindings for `nanny:backend@0.1.0`. A future 0.2 contract gets a second
//! module beside this one, mapped onto the same host logic.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "nanny:backend/backend",
    // The supervisor compares progress and advice; tests compare plans.
    additional_derives: [PartialEq],
});

/// The WIT version these bindings speak.
pub const WIT_VERSION: &str = "0.1.0";
