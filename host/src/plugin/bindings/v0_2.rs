//! `nanny:backend@0.2.0`, the newest: adds the `compose` launch kind.

wasmtime::component::bindgen!({
    path: "../wit/backend.wit",
    world: "nanny:backend/backend",
});

super::contract_edge!(
    generated::Launch::Compose(compose) => Self::Compose(ours::Compose {
        files: compose.files,
        profiles: compose.profiles,
        env_files: compose.env_files,
        service: compose.service,
        container_port: compose.container_port,
        env: compose.env,
        work_dir: compose.work_dir,
    }),
);
