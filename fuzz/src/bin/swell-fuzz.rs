//! The libFuzzer driver of every target in swell_fuzz: SWELL_FUZZ_TARGET
//! names the one to run (e2e/fuzz.sh sets it).
#![no_main]

use std::sync::OnceLock;

static TARGET: OnceLock<swell_fuzz::Target> = OnceLock::new();

libfuzzer_sys::fuzz_target!(
    init: {
        let name = std::env::var("SWELL_FUZZ_TARGET").unwrap_or_default();
        let Some(target) = swell_fuzz::target(&name) else {
            let names: Vec<&str> = swell_fuzz::TARGETS.iter().map(|t| t.name).collect();
            eprintln!("swell-fuzz: SWELL_FUZZ_TARGET={name:?} names no target (one of: {})", names.join(", "));
            std::process::exit(2);
        };
        let _ = TARGET.set(target);
    },
    |data: &[u8]| {
        if let Some(target) = TARGET.get() {
            (target.run)(data);
        }
    }
);
