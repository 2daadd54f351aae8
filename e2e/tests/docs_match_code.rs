//! The documents cannot drift from the code: every flag, metric, file path
//! and StorageClass parameter that README.md, docs/ and deploy/ name exists
//! (in a binary's `--help`, in the metrics the services register, in the
//! repository, in the parameters the controller parses), and every flag and
//! metric of the shipped binaries is named somewhere in them. The binaries
//! are the ones `e2e/test.sh` builds before the tests run.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;
use swell_e2e::process::built_binary;

/// Flags of other programs the documents name: the CSI sidecars, kubectl,
/// kubelet, kube-apiserver, cargo, cryptsetup, ceph-csi (the bench's peer),
/// unshare, and the image build script.
const OTHER_PROGRAMS: [&str; 25] = [
    "--csi-address",
    "--leader-election",
    "--http-endpoint",
    "--timeout",
    "--extra-create-metadata",
    "--handle-volume-inuse-error",
    "--kubelet-registration-path",
    "--probe-timeout",
    "--enable-capacity",
    "--dry-run",
    "--cert",
    "--key",
    "--type",
    "--allow-privileged",
    "--release",
    "--no-default-features",
    "--binaries-only",
    "--admission-control-config-file",
    "--from-literal",
    "--replicas",
    "--key-file",
    "--disable-keyring",
    "--uuid",
    "--controllerserver",
    "--mount",
];

/// Flags cargo takes that the documents name besides `OTHER_PROGRAMS`.
const CARGO: [&str; 1] = ["--bench"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// README.md, docs/ and deploy/ (Markdown and manifests), by path.
fn documents() -> BTreeMap<PathBuf, String> {
    let root = repo();
    let mut found = BTreeMap::new();
    found.insert(PathBuf::from("README.md"), std::fs::read_to_string(root.join("README.md")).unwrap());
    let mut dirs = vec![PathBuf::from("docs"), PathBuf::from("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(root.join(&dir)).unwrap() {
            let entry = entry.unwrap();
            let path = dir.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md" || e == "yaml") {
                found.insert(path.clone(), std::fs::read_to_string(root.join(&path)).unwrap());
            }
        }
    }
    found
}

fn flags(text: &str) -> BTreeSet<String> {
    let flag = Regex::new(r"(?:^|[^\w-])(--[a-z][a-z0-9-]*[a-z0-9])(-\*)?").unwrap();
    flag.captures_iter(text).map(|c| format!("{}{}", &c[1], c.get(2).map_or("", |_| "-*"))).collect()
}

/// The flags a program's `--help` lists, without `--help` and `--version`.
fn help_flags(program: &str, args: &[&str]) -> BTreeSet<String> {
    let binary = built_binary(program).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(&binary).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{program} {args:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    let mut found = flags(&String::from_utf8_lossy(&out.stdout));
    found.retain(|f| f != "--help" && f != "--version");
    found
}

/// The flags of the binaries users run.
fn shipped_flags() -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for (program, args) in [("swell-controller", &[][..]), ("swell-node", &[]), ("swell-webhook", &[]), ("swell", &["volumes"]), ("swell", &["volume"])] {
        all.extend(help_flags(program, args));
    }
    all
}

#[test]
fn every_flag_the_documents_name_exists_and_every_shipped_flag_is_documented() {
    let shipped = shipped_flags();
    let mut known = shipped.clone();
    known.extend(help_flags("swell-demo", &[]));
    known.extend(help_flags("swell-bench", &[]));
    known.extend(OTHER_PROGRAMS.iter().chain(&CARGO).map(|f| (*f).to_owned()));
    known.extend(["--help".to_owned(), "--version".to_owned()]);
    let docs = documents();
    let mut unknown = Vec::new();
    let mut named = BTreeSet::new();
    for (path, text) in &docs {
        for flag in flags(text) {
            let exists = match flag.strip_suffix("-*") {
                Some(prefix) => known.iter().any(|k| k.starts_with(&format!("{prefix}-"))),
                None => known.contains(&flag),
            };
            if !exists {
                unknown.push(format!("{flag} ({})", path.display()));
            }
            named.insert(flag);
        }
    }
    assert!(unknown.is_empty(), "flags the documents name that no program takes: {unknown:?}");
    let undocumented: Vec<_> = shipped.iter().filter(|f| !named.contains(*f)).collect();
    assert!(undocumented.is_empty(), "flags of the shipped binaries no document names: {undocumented:?}");
}

/// Every metric a crate's production code registers (the name a
/// `registry.register("…", …)` call gives), by walking their sources.
fn registered_metrics() -> BTreeSet<String> {
    let root = repo();
    let register = Regex::new(r#"\.register(?:_with_unit)?\(\s*"([a-z0-9_]+)""#).unwrap();
    let mut names = BTreeSet::new();
    let mut dirs: Vec<PathBuf> = ["endpoint", "storage", "backends", "controller", "node", "webhook", "cli"].iter().map(|d| root.join(d)).collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                names.extend(register.captures_iter(&text).map(|c| c[1].to_owned()));
            }
        }
    }
    names
}

#[test]
fn every_metric_the_documents_name_is_registered_and_every_registered_one_is_documented() {
    let registered = registered_metrics();
    assert!(registered.contains("swell_expansions_pending") && registered.contains("grpc_server_handled"), "{registered:?}");
    let crates: BTreeSet<String> = [
        "swell_storage",
        "swell_local",
        "swell_rbd",
        "swell_backends",
        "swell_controller",
        "swell_node",
        "swell_webhook",
        "swell_cli",
        "swell_k8s",
        "swell_e2e",
        "swell_bench",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let metric = Regex::new(r"\b((?:swell|grpc_server)_[a-z0-9_]*[a-z0-9])\b").unwrap();
    let suffix = Regex::new(r"_(total|bucket|count|sum)$").unwrap();
    let mut unknown = Vec::new();
    let mut named = BTreeSet::new();
    for (path, text) in documents() {
        for found in metric.captures_iter(&text) {
            let name = found[1].to_owned();
            if crates.contains(&name) {
                continue;
            }
            let family = suffix.replace(&name, "").into_owned();
            if !registered.contains(&family) {
                unknown.push(format!("{name} ({})", path.display()));
            }
            named.insert(family);
        }
    }
    assert!(unknown.is_empty(), "metrics the documents name that no service registers: {unknown:?}");
    let undocumented: Vec<_> = registered.iter().filter(|m| !named.contains(*m)).collect();
    assert!(undocumented.is_empty(), "metrics no document names: {undocumented:?}");
}

#[test]
fn every_file_path_the_documents_name_exists() {
    let root = repo();
    let path = Regex::new(r"(?:^|[^\w./-])((?:proto|endpoint|storage|backends|controller|node|k8s|webhook|cli|e2e|bench|fuzz|deploy|docs|\.ci)/[\w./-]*[\w/])")
        .unwrap();
    let mut missing = Vec::new();
    for (doc, text) in documents() {
        for found in path.captures_iter(&text) {
            let named = &found[1];
            let last = named.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            // A file (with an extension) or a directory (a trailing slash);
            // anything else is a word such as `deploy/swell-controller`.
            if !named.ends_with('/') && !last.contains('.') {
                continue;
            }
            let beside = doc.parent().unwrap_or(Path::new("")).join(named);
            if !root.join(named).exists() && !root.join(&beside).exists() {
                missing.push(format!("{named} ({})", doc.display()));
            }
        }
    }
    assert!(missing.is_empty(), "paths the documents name that do not exist: {missing:?}");
}

/// The keys under `parameters:` of every StorageClass in `yaml`.
fn storage_class_parameters(yaml: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for document in yaml.split("\n---") {
        if !document.lines().any(|l| l.trim() == "kind: StorageClass") {
            continue;
        }
        let mut lines = document.lines().skip_while(|l| l.trim_end() != "parameters:").skip(1);
        while let Some(line) = lines.next().filter(|l| l.starts_with("  ")) {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            if let Some((key, _)) = line.split_once(':') {
                keys.push(key.to_owned());
            }
        }
    }
    keys
}

#[test]
fn every_storage_class_parameter_the_documents_name_is_one_the_controller_parses() {
    let known = swell_controller::KNOWN_PARAMETERS;
    // "StorageClass parameter `backend: rbd`", "the `pool` parameter".
    let named_in_text = Regex::new(r"(?i)\bparameters? `([a-z][a-z./]*)|`([a-z][a-z./]*)(?::[^`]*)?` (?:StorageClass )?parameter").unwrap();
    let mut unknown = Vec::new();
    let mut classes = 0;
    for (path, text) in documents() {
        let mut named: Vec<String> = storage_class_parameters(&text);
        classes += usize::from(!named.is_empty());
        named.extend(named_in_text.captures_iter(&text).filter_map(|c| c.get(1).or(c.get(2))).map(|m| m.as_str().to_owned()));
        for key in named {
            if !key.starts_with("csi.storage.k8s.io/") && !known.contains(&key.as_str()) {
                unknown.push(format!("{key} ({})", path.display()));
            }
        }
    }
    assert!(classes >= 2, "the StorageClasses of deploy/overlays were not found");
    assert!(unknown.is_empty(), "StorageClass parameters the controller does not take: {unknown:?}");
}
