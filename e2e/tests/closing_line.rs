//! e2e/test.sh's closing line (e2e/closing_line.py, e2e/results.sh) on
//! logs shaped as cargo, libtest and the lanes write them: a test of
//! e2e/expected-tests.tsv missing from the results (a crashed binary, a
//! binary built without a feature, a renamed test) counts as failed by
//! name; under CI=true a skip for a reason not on e2e/allowed-skips.txt
//! fails the run; a script's own tests join the same line; a kube scenario
//! or a manifest check that vanished is named as failed too.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use swell_e2e::host;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Two binaries as `cargo test --no-fail-fast` logs them; the second was
/// killed (SIGKILL) after its first test: its other test has no line.
const CRASHED_RUN: &str = "\
     Running unittests src/lib.rs (target/debug/deps/swell_k8s-4b06c35cc76ee0fd)

running 2 tests
test quantity::tests::partial_bytes_round_up ... ok
test quantity::tests::non_sizes_are_refused_not_wrapped ... FAILED

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

     Running tests/node_lifecycle.rs (target/debug/deps/node_lifecycle-2b5a5d0a9c69a190)

running 2 tests
a child's output without a newlinetest xfs_grows_online ... ok
error: test failed, to rerun pass `-p swell-e2e --test node_lifecycle`

Caused by:
  process didn't exit successfully: `/work/target/debug/deps/node_lifecycle-2b5a5d0a9c69a190` (signal: 9, SIGKILL: kill)
";

const EXPECTED: &str = "\
swell_k8s src/lib.rs\tquantity::tests::non_sizes_are_refused_not_wrapped
swell_k8s src/lib.rs\tquantity::tests::partial_bytes_round_up
node_lifecycle tests/node_lifecycle.rs\tbtrfs_grows_online
node_lifecycle tests/node_lifecycle.rs\txfs_grows_online
";

/// The crashed run's log as if the binary had not crashed and every test passed.
fn every_listed_test_passed() -> String {
    format!("{CRASHED_RUN}test btrfs_grows_online ... ok\n").replace("... FAILED", "... ok")
}

/// One run's inputs in a directory of their own.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new(cargo_log: &str, expected: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cargo.log"), cargo_log).unwrap();
        std::fs::write(dir.path().join("expected.tsv"), expected).unwrap();
        for file in ["skips", "results", "allowed", "kube.log"] {
            std::fs::write(dir.path().join(file), "").unwrap();
        }
        Run { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.file(name), text).unwrap();
    }

    /// The closing line's tally, with CI=true when `ci`; its exit and stdout.
    fn tally(&self, ci: bool) -> (bool, String) {
        self.tally_with(ci, &[])
    }

    /// [`tally`](Self::tally) with `env` set.
    fn tally_with(&self, ci: bool, env: &[(&str, &str)]) -> (bool, String) {
        let mut command = Command::new("python3");
        command.arg(repo().join("e2e/closing_line.py")).arg("tally").env_remove("CI").env_remove("SWELL_RESULTS").env_remove("SWELL_KUBE_ONLY");
        command.envs(env.iter().copied());
        for (flag, file) in [
            ("--cargo-log", "cargo.log"),
            ("--expected", "expected.tsv"),
            ("--results", "results"),
            ("--skips", "skips"),
            ("--allowed-skips", "allowed"),
            ("--kube-log", "kube.log"),
        ] {
            command.arg(flag).arg(self.file(file));
        }
        if ci {
            command.env("CI", "true");
        }
        let out = command.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn closing(stdout: &str) -> &str {
    stdout.lines().last().unwrap_or_default()
}

/// `None` (noted) where python3 is missing off CI.
fn python(test: &str) -> Option<()> {
    match host::missing_program(test, &["python3", "bash"]) {
        Some(reason) => {
            host::note_skip(test, &reason);
            None
        }
        None => Some(()),
    }
}

#[test]
fn a_listed_test_missing_from_the_results_counts_as_failed_by_name() {
    if python("closing_line::a_listed_test_missing_from_the_results_counts_as_failed_by_name").is_none() {
        return;
    }
    let run = Run::new(CRASHED_RUN, EXPECTED);
    let (ok, out) = run.tally(false);
    assert!(!ok, "a run with a missing test passed:\n{out}");
    assert_eq!(closing(&out), "swell: 2 passed, 2 failed, 0 skipped", "{out}");
    assert!(out.contains("missing from the results") && out.contains("node_lifecycle tests/node_lifecycle.rs: btrfs_grows_online"), "{out}");
    // With every listed test reported, the same tally passes.
    let whole = every_listed_test_passed();
    let (ok, out) = Run::new(&whole, EXPECTED).tally(false);
    assert!(ok, "{out}");
    assert_eq!(closing(&out), "swell: 4 passed, 0 failed, 0 skipped", "{out}");
}

#[test]
fn a_renamed_test_is_missing_under_its_listed_name_and_shown_unlisted_under_the_new() {
    if python("closing_line::a_renamed_test_is_missing_under_its_listed_name_and_shown_unlisted_under_the_new").is_none() {
        return;
    }
    let renamed = format!("{CRASHED_RUN}test btrfs_grows_online_renamed ... ok\n");
    let (ok, out) = Run::new(&renamed, EXPECTED).tally(false);
    assert!(!ok, "{out}");
    assert!(out.contains("  - node_lifecycle tests/node_lifecycle.rs: btrfs_grows_online\n"), "{out}");
    assert!(out.contains("not in e2e/expected-tests.tsv") && out.contains("btrfs_grows_online_renamed"), "{out}");
}

#[test]
fn under_ci_only_a_skip_for_an_allowed_reason_is_a_skip() {
    if python("closing_line::under_ci_only_a_skip_for_an_allowed_reason_is_a_skip").is_none() {
        return;
    }
    let all_ran = every_listed_test_passed();
    let run = Run::new(&all_ran, EXPECTED);
    run.write("allowed", &format!("# why\n{}\n", host::ONLINE_EXT4_GROW_NOT_PERMITTED));
    run.write("skips", &format!("xfs_grows_online\t{}\n", host::ONLINE_EXT4_GROW_NOT_PERMITTED));
    let (ok, out) = run.tally(true);
    assert!(ok, "an allowed skip failed the run:\n{out}");
    assert_eq!(closing(&out), "swell: 3 passed, 0 failed, 1 skipped", "{out}");
    // A skip for any other reason: counted as failed, by name, under CI only.
    run.write("skips", &format!("xfs_grows_online\t{}\nbtrfs_grows_online\tmkfs.btrfs is not installed\n", host::ONLINE_EXT4_GROW_NOT_PERMITTED));
    let (ok, out) = run.tally(true);
    assert!(!ok, "an unlisted skip passed under CI:\n{out}");
    assert_eq!(closing(&out), "swell: 2 passed, 1 failed, 1 skipped", "{out}");
    assert!(out.contains("not on e2e/allowed-skips.txt") && out.contains("btrfs_grows_online: mkfs.btrfs is not installed"), "{out}");
    let (ok, out) = run.tally(false);
    assert!(ok, "{out}");
    assert_eq!(closing(&out), "swell: 2 passed, 0 failed, 2 skipped", "{out}");
}

#[test]
fn the_allow_list_holds_the_reason_the_ext4_tests_give() {
    let list = std::fs::read_to_string(repo().join("e2e/allowed-skips.txt")).unwrap();
    assert!(list.lines().any(|l| l == host::ONLINE_EXT4_GROW_NOT_PERMITTED), "e2e/allowed-skips.txt lacks the ext4 reason");
}

/// Runs `script` under bash with e2e/results.sh sourced and SWELL_RESULTS
/// set to `results`.
fn with_results_sh(results: &Path, script: &str) -> Output {
    let source = repo().join("e2e/results.sh");
    Command::new("bash").arg("-c").arg(format!("set -u; source {}; {script}", source.display())).env("SWELL_RESULTS", results).output().unwrap()
}

#[test]
fn a_scripts_tests_join_the_closing_line_and_a_silent_failure_is_named() {
    if python("closing_line::a_scripts_tests_join_the_closing_line_and_a_silent_failure_is_named").is_none() {
        return;
    }
    let all_ran = every_listed_test_passed();
    let run = Run::new(&all_ran, EXPECTED);
    let results = run.file("results");
    // A script reporting three tests of its own, one a skip; a script
    // reporting none, judged by its exit; one failing without naming a failure.
    let reporting = "report fuzz/a ok; report fuzz/b FAILED 'crash input saved'; report fuzz/c skipped 'no corpus'";
    let script = format!(
        "check fuzz bash -c \"source {0}; {reporting}\"; check bench true; check manifests false; check quiet-fail bash -c \"source {0}; report q/a ok; exit 3\"; exit 0",
        repo().join("e2e/results.sh").display()
    );
    let out = with_results_sh(&results, &script);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = std::fs::read_to_string(&results).unwrap();
    assert_eq!(
        lines,
        "fuzz/a\tok\t\nfuzz/b\tFAILED\tcrash input saved\nfuzz/c\tskipped\tno corpus\nbench\tok\texit 0\nmanifests\tFAILED\texit 1\nq/a\tok\t\nquiet-fail\tFAILED\texit 3, no failed test reported\n"
    );
    let (ok, out) = run.tally(false);
    assert!(!ok, "{out}");
    assert_eq!(closing(&out), "swell: 7 passed, 3 failed, 1 skipped", "{out}");
    assert!(out.contains("fuzz/b: crash input saved") && out.contains("quiet-fail: exit 3"), "{out}");
    // Under CI, the script's skip is held to the allow-list as well.
    let (_, out) = run.tally(true);
    assert_eq!(closing(&out), "swell: 7 passed, 4 failed, 0 skipped", "{out}");
}

#[test]
fn the_list_tells_a_crates_lib_from_its_bin_and_keeps_every_test() {
    if python("closing_line::the_list_tells_a_crates_lib_from_its_bin_and_keeps_every_test").is_none() {
        return;
    }
    let listing = "\
     Running unittests src/lib.rs (target/debug/deps/swell_node-767aba1584907119)
tests::a: test
tests::b: test

2 tests, 0 benchmarks
     Running unittests src/main.rs (target/debug/deps/swell_node-ba12ed7f843343ef)
tests::a: test

1 test, 0 benchmarks
   Doc-tests swell_node
0 tests, 0 benchmarks
";
    let mut child = Command::new("python3")
        .arg(repo().join("e2e/closing_line.py"))
        .arg("list")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), listing.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "swell_node src/lib.rs\ttests::a\nswell_node src/lib.rs\ttests::b\nswell_node src/main.rs\ttests::a\n");
}

/// The kube lane's scenarios and the manifest checks are listed too: one
/// that did not report (a scenario dropped from the lane's filters, a check
/// that never ran) counts as failed by name, and with both reported the
/// tally passes; a developer's SWELL_KUBE_ONLY run is not held to every
/// scenario.
#[test]
fn a_kube_scenario_or_manifest_check_that_did_not_report_counts_as_failed_by_name() {
    if python("closing_line::a_kube_scenario_or_manifest_check_that_did_not_report_counts_as_failed_by_name").is_none() {
        return;
    }
    let expected = format!(
        "{EXPECTED}kube tests/kube/main.rs\trbd::steady::a\nkube tests/kube/main.rs\trbd::steady::b\n\
         check_manifests\tcheck_manifests::Manifests.test_x\ncheck_manifests\tcheck_manifests::Manifests.test_y\n"
    );
    let kube_log = |tests: &[&str]| {
        let lines: String = tests.iter().map(|t| format!("test {t} ... ok\n")).collect();
        format!("running {0} tests\n{lines}\ntest result: ok. {0} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.00s\n", tests.len())
    };
    let run = Run::new(&every_listed_test_passed(), &expected);
    run.write("kube.log", &kube_log(&["rbd::steady::a"]));
    run.write("results", "check_manifests::Manifests.test_x\tok\t\n");
    let (ok, out) = run.tally(false);
    assert!(!ok, "a run missing a scenario and a check passed:\n{out}");
    assert!(out.contains("  - kube tests/kube/main.rs: rbd::steady::b\n"), "{out}");
    assert!(out.contains("  - check_manifests: check_manifests::Manifests.test_y\n"), "{out}");
    assert_eq!(closing(&out), "swell: 6 passed, 2 failed, 0 skipped", "{out}");

    let (ok, out) = run.tally_with(false, &[("SWELL_KUBE_ONLY", "rbd::steady::a")]);
    assert!(!ok && !out.contains("rbd::steady::b") && out.contains("Manifests.test_y"), "SWELL_KUBE_ONLY runs some scenarios on purpose:\n{out}");

    run.write("kube.log", &kube_log(&["rbd::steady::a", "rbd::steady::b"]));
    run.write("results", "check_manifests::Manifests.test_x\tok\t\ncheck_manifests::Manifests.test_y\tok\t\n");
    let (ok, out) = run.tally(false);
    assert!(ok, "{out}");
    assert_eq!(closing(&out), "swell: 8 passed, 0 failed, 0 skipped", "{out}");
}

/// The manifest checks join the list from check_manifests.py's source:
/// each test method of each unittest.TestCase class, named as the checks
/// report themselves, and nothing else.
#[test]
fn the_list_names_each_manifest_check_as_it_reports_itself() {
    if python("closing_line::the_list_names_each_manifest_check_as_it_reports_itself").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let checks = dir.path().join("checks.py");
    let source = "import unittest\n\nclass Manifests(unittest.TestCase):\n    def setUp(self):\n        pass\n\n    def test_a(self):\n        pass\n\n\
                  class Reporting(unittest.TextTestResult):\n    def test_not_a_check(self):\n        pass\n\n\
                  class Helpers(unittest.TestCase):\n    def test_b(self):\n        pass\n";
    std::fs::write(&checks, source).unwrap();
    let out = Command::new("python3")
        .arg(repo().join("e2e/closing_line.py"))
        .args(["list", "--manifest-checks"])
        .arg(&checks)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "check_manifests\tcheck_manifests::Helpers.test_b\ncheck_manifests\tcheck_manifests::Manifests.test_a\n");
}
