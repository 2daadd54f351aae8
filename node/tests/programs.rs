//! `swell_storage::command::PROGRAMS` is the list the container image is
//! checked against. `command::run` refuses a program missing from it; this
//! test catches the other drift: a listed program the node no longer names,
//! which the image would carry for nothing.
#![allow(clippy::unwrap_used)]

use std::path::Path;

/// The node's production sources: not its unit tests or the test double of
/// its system calls, which name programs only to fake them.
fn sources(dir: &Path, into: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            sources(&path, into);
        } else if name.ends_with(".rs") && !name.ends_with("_tests.rs") && name != "fake.rs" {
            into.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_listed_program_is_named_in_the_node() {
    let mut text = String::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut text);
    let unnamed: Vec<_> = swell_storage::command::PROGRAMS.iter().filter(|program| !text.contains(&format!("\"{program}\""))).collect();
    assert!(unnamed.is_empty(), "listed in swell_storage::command::PROGRAMS but named nowhere in node/src: {unnamed:?}");
}
