//! A plugin that misbehaves on request: the output line it is fed names the crime.
//! Anything else is answered politely, to show a fresh instance works again.

use std::hint::black_box;

use nanny_sdk::*;

#[derive(Default)]
struct Hostile;

impl Backend for Hostile {
    fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>> {
        Ok(process_plan(service, "true", Vec::new()))
    }

    fn on_output(&mut self, _source: Output, line: &str) -> Progress {
        match line {
            "loop" => {
                let mut spins = 0u64;
                loop {
                    spins = black_box(spins.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    black_box(&hoard);
                }
            }
            "panic" => panic!("hostile plugin panics on purpose"),
            // What real backends print now and then: the conformance kit must catch it.
            "" => panic!("hostile plugin breaks on an empty line"),
            "recurse" => Progress::Loading(Some(recurse(0) as u8)),
            "huge" => Progress::Failed("x".repeat(32 << 20)),
            _ => Progress::Nothing,
        }
    }
}

fn recurse(depth: u64) -> u64 {
    if black_box(true) {
        recurse(black_box(depth + 1)) + 1
    } else {
        depth
    }
}

export_backend!("hostile", Hostile);
