//! Every checked-in input of every fuzz target runs through it: the seeds
//! under fuzz/corpus/<target>/ and the inputs that once failed a target
//! under fuzz/regressions/<target>/ (each named for what it proved).
#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn every_corpus_and_regression_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    for target in swell_fuzz::TARGETS {
        let mut inputs = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target.name)) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| (target.run)(&data));
                assert!(outcome.is_ok(), "{} failed on {}", target.name, path.display());
                inputs += 1;
            }
        }
        assert!(inputs > 0, "target {} has no corpus under fuzz/corpus/{}", target.name, target.name);
        ran += inputs;
    }
    swell_fuzz::remove_scratch();
    eprintln!("{ran} inputs passed their targets");
}
