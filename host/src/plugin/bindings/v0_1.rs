//! `nanny:backend@0.1.0`, frozen: plugins built with the 0.1 SDK.

wasmtime::component::bindgen!({
    path: "../wit/0.1.0",
    world: "nanny:backend/backend",
});

super::contract_edge!();
