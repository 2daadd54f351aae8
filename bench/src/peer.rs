//! ceph-csi, the peer: its RBD controller (a build named by
//! `--peer-cephcsi`) beside Swell's on the same Ceph test cluster and pool,
//! timed by the same client, call by call alternated so drift hits both.
//! Volumes are raw block, as in every figure (`Csi::create`). Every figure
//! is printed as Swell ÷ ceph-csi: single creates, expands and
//! deletes, a storm of CreateVolume calls (a StatefulSet scaling up), a storm
//! of expansions of as many volumes, and each controller's memory.
//!
//! ceph-csi reads its cluster map from `/etc/ceph-csi-config/config.json`
//! and writes `/etc/ceph/ceph.conf` and key files under `/tmp/csi/keys`
//! (which its image provides);
//! it runs in a private mount namespace (an overlay over `/etc`, tmpfs over
//! `/etc/ceph` and `/tmp`), so nothing on the host changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ceph::{CLUSTER_ID, Site};
use crate::csi::{self, Burst, Csi};
use crate::figures;
use crate::plan::{Plan, fresh};
use crate::process::{PeakRss, Served};
use crate::report::{Report, Samples, Table, mib, ms, quotient, ratio};
use crate::step::{BenchResult, at};
use swell_storage::units::MIB;

/// The name ceph-csi's RBD driver is deployed under.
const DRIVER: &str = "rbd.csi.ceph.com";
/// The pool both drivers create in.
const POOL: &str = "peer";
/// Swell's metrics port in this section (the others use 19873 to 19875).
const METRICS_PORT: u16 = 19_876;
/// The goal of issue 22 for both storms: Swell's throughput over ceph-csi's.
const STORM_GOAL: f64 = 2.0;

/// Runs in the private mount namespace: `$1` and `$2` are the overlay's
/// upper and work directories, `$3` the cluster map; the rest is the
/// command to run there.
const NAMESPACE_SCRIPT: &str = r#"set -eu
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc
mkdir -p /etc/ceph /etc/ceph-csi-config
cp "$3" /etc/ceph-csi-config/config.json
mount -t tmpfs -o mode=0700 tmpfs /etc/ceph
mount -t tmpfs -o mode=0700 tmpfs /tmp
mkdir -p /tmp/csi/keys
shift 3
exec "$@""#;

/// The peer to measure.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The `cephcsi` binary.
    pub binary: PathBuf,
    /// Calls in each storm.
    pub storm: usize,
}

/// ceph-csi's cluster map: one cluster and its monitors.
fn cluster_map(cluster_id: &str, monitors: &[&str]) -> String {
    serde_json::json!([{ "clusterID": cluster_id, "monitors": monitors }]).to_string()
}

/// The `mon host` of a ceph.conf (either spelling of the key).
fn mon_host(conf: &str) -> Option<String> {
    conf.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        matches!(key.trim().replace('_', " ").as_str(), "mon host").then(|| value.trim().to_owned())
    })
}

/// The key of a keyring's first entity.
fn keyring_key(keyring: &str) -> Option<String> {
    keyring.lines().find_map(|line| {
        let (name, value) = line.split_once('=')?;
        (name.trim() == "key").then(|| value.trim().to_owned())
    })
}

/// `binary args…` in a private mount namespace holding `map` as
/// `/etc/ceph-csi-config/config.json`; `dir` keeps the overlay's layers.
/// The namespace has a /tmp of its own, so the binary and `dir` (its
/// socket) must live elsewhere.
fn namespaced(binary: &Path, args: &[String], dir: &Path, map: &Path) -> BenchResult<std::process::Command> {
    for path in [binary, dir] {
        if path.starts_with("/tmp") {
            return Err(format!("{} is under /tmp, which ceph-csi's mount namespace replaces: put it elsewhere", path.display()));
        }
    }
    let (upper, work) = (dir.join("etc-upper"), dir.join("etc-work"));
    for layer in [&upper, &work] {
        std::fs::create_dir_all(layer).map_err(at(format!("create {}", layer.display())))?;
    }
    let mut command = std::process::Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", NAMESPACE_SCRIPT, "sh"]).args([&upper, &work, map]).arg(binary).args(args);
    Ok(command)
}

/// ceph-csi's RBD controller flags, serving on `socket`.
fn controller_flags(socket: &Path) -> Vec<String> {
    vec![
        "--type=rbd".into(),
        "--controllerserver=true".into(),
        format!("--endpoint=unix://{}", socket.display()),
        "--nodeid=swell-bench".into(),
        format!("--drivername={DRIVER}"),
    ]
}

impl Peer {
    /// What the binary says it is (its first `--version` line).
    fn version(&self) -> String {
        std::process::Command::new(&self.binary)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_owned()))
            .unwrap_or_else(|| self.binary.display().to_string())
    }

    /// Starts its controller on `site` (state in `dir`) and waits until it answers.
    async fn start(&self, site: &Site, dir: &Path) -> BenchResult<Served> {
        let conf = std::fs::read_to_string(&site.conf).map_err(at(format!("read {}", site.conf.display())))?;
        let monitors = mon_host(&conf).ok_or_else(|| format!("no mon host in {}", site.conf.display()))?;
        let map = dir.join("config.json");
        std::fs::write(&map, cluster_map(CLUSTER_ID, &[&monitors])).map_err(at(format!("write {}", map.display())))?;
        let socket = dir.join("cephcsi.sock");
        let command = namespaced(&self.binary, &controller_flags(&socket), dir, &map)?;
        Served::other_controller(command.into(), &self.binary, socket).await
    }
}

/// The secrets a StorageClass hands ceph-csi: the cluster's admin user.
fn secrets(site: &Site) -> BenchResult<HashMap<String, String>> {
    let keyring = std::fs::read_to_string(&site.keyring).map_err(at(format!("read {}", site.keyring.display())))?;
    let key = keyring_key(&keyring).ok_or_else(|| format!("no key in {}", site.keyring.display()))?;
    Ok(HashMap::from([("userID".to_owned(), "admin".to_owned()), ("userKey".to_owned(), key)]))
}

/// One driver's side of the section.
struct Side {
    name: &'static str,
    csi: Csi,
    idle: u64,
    peak: PeakRss,
    lives: [Samples; 3],
}

/// Swell and ceph-csi on one pool: `plan.runs` lives each, alternated,
/// then the two storms, then each one's memory.
pub(crate) async fn run(site: &Site, plan: &Plan, peer: &Peer, report: &mut Report) -> BenchResult<()> {
    let version = peer.version();
    site.new_pool(POOL)?;
    let dir = fresh(&plan.scratch.join("peer"))?;
    // Room for the storms' volumes: Swell promises each one's full size.
    let rig = site.rig(plan, POOL, &fresh(&dir.join("swell"))?, METRICS_PORT).roomy();
    let swell = rig.start().await?;
    let cephcsi = peer.start(site, &fresh(&dir.join("cephcsi"))?).await?;
    println!("peer: {version} serving in {:.0} ms, swell-controller in {:.0} ms", ms_f(cephcsi.started_in), ms_f(swell.started_in));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let parameters = [("clusterID", CLUSTER_ID), ("pool", POOL), ("imageFeatures", "layering")];
    let mut sides = [
        Side { name: "Swell", csi: rig.csi(swell.channel().await?), idle: swell.rss()?, peak: PeakRss::watch(&swell)?, lives: csi::three() },
        Side {
            name: "ceph-csi",
            csi: Csi::new(cephcsi.channel().await?, &parameters).with_secrets(secrets(site)?),
            idle: cephcsi.rss()?,
            peak: PeakRss::watch(&cephcsi)?,
            lives: csi::three(),
        },
    ];
    let mut table = Table::new(format!("Swell against ceph-csi ({version}) on the same cluster and pool"), &["what", "Swell", "ceph-csi", "Swell ÷ ceph-csi"]);

    // Warm both (ceph-csi connects to the cluster on its first call), then
    // one life each per run, who goes first alternating.
    for side in &mut sides {
        let mut warm = csi::three();
        for run in 0..2 {
            csi::life(&mut side.csi, &format!("warm-{run}"), &mut warm).await.map_err(at(side.name))?;
        }
    }
    for run in 0..plan.runs {
        for i in [run % 2, 1 - run % 2] {
            let side = &mut sides[i];
            csi::life(&mut side.csi, &format!("life-{run}"), &mut side.lives).await.map_err(at(side.name))?;
        }
    }
    for (i, what) in ["CreateVolume", "ControllerExpandVolume 64 → 128 MiB", "DeleteVolume"].iter().enumerate() {
        let (s, p) = (&sides[0].lives[i], &sides[1].lives[i]);
        times(&mut table, &format!("{what} p50 ({} runs)", s.len()), s.p50(), p.p50());
        times(&mut table, &format!("{what} p99"), s.p99(), p.p99());
    }

    // The storms: Swell first for creates, ceph-csi first for expansions.
    let n = peer.storm;
    let before = swell.backend_calls().await?;
    let mut creates: Vec<Burst<String>> = Vec::new();
    for side in &sides {
        let names = (0..n).map(|i| format!("storm-{i}")).collect();
        creates.push(
            csi::burst(&side.csi, names, |mut csi, name: String| async move { csi.create(&name, 64 * MIB).await.map_err(|e| format!("create {name}: {e}")) })
                .await?,
        );
    }
    let created = swell.backend_calls().await?;
    let mut expands: Vec<Burst<u64>> = Vec::new();
    for i in [1, 0] {
        let ids: Vec<String> = creates[i].answers.iter().filter_map(|a| a.as_ref().ok().cloned()).collect();
        expands.push(
            csi::burst(&sides[i].csi, ids, |mut csi, id: String| async move { csi.expand(&id, 128 * MIB).await.map_err(|e| format!("expand {id}: {e}")) })
                .await?,
        );
    }
    expands.reverse();
    let expanded = swell.backend_calls().await?;
    let mut deletes: Vec<Burst<()>> = Vec::new();
    for (side, made) in sides.iter().zip(&creates) {
        let ids: Vec<String> = made.answers.iter().filter_map(|a| a.as_ref().ok().cloned()).collect();
        deletes.push(csi::burst(&side.csi, ids, |mut csi, id: String| async move { csi.delete(&id).await.map_err(|e| format!("delete {id}: {e}")) }).await?);
    }
    let storms = [
        (format!("{n} CreateVolume at once"), [Figures::of(&creates[0]), Figures::of(&creates[1])]),
        (format!("{n} ControllerExpandVolume of {n} volumes at once"), [Figures::of(&expands[0]), Figures::of(&expands[1])]),
        ("DeleteVolume of the storms' volumes at once".to_owned(), [Figures::of(&deletes[0]), Figures::of(&deletes[1])]),
    ];
    for (what, [s, p]) in &storms {
        storm_rows(&mut table, what, s, p);
    }
    let [swell_side, peer_side] = sides;
    sizes(&mut table, "controller RSS idle", swell_side.idle, peer_side.idle);
    sizes(&mut table, "controller RSS peak (whole section)", swell_side.peak.stop(), peer_side.peak.stop());
    table.note(format!(
        "Times: Swell ÷ ceph-csi below 1 means Swell is faster; per second: above 1 means Swell did more. \
         Both controllers ran at once on pool `{POOL}` of the same cluster, called by the same client; \
         the single calls alternated run by run, the storms went Swell first for creates and ceph-csi first for expansions. \
         Volumes are raw block (64 MiB, grown to 128 MiB). A storm's calls are all sent at once and none is retried: every error is counted."
    ));
    for (i, name) in [swell_side.name, peer_side.name].iter().enumerate() {
        for error in creates[i].errors().chain(expands[i].errors()).chain(deletes[i].errors()).take(3) {
            table.note(format!("{name} error: {error}"));
        }
    }
    report.add(table);
    report.add(figures::step_costs(&format!("Where Swell's {n} storm creates spend their backend time"), &created.since(&before), n));
    report.add(figures::step_costs(&format!("Where Swell's {n} storm expansions spend their backend time"), &expanded.since(&created), n));
    for (what, [s, p]) in &storms[..2] {
        report.goal(
            format!("rbd: {what}: ≥ {STORM_GOAL}× ceph-csi's throughput"),
            format!("{:.1} vs {:.1} per second: {}", s.throughput, p.throughput, quotient(s.throughput, p.throughput)),
            s.throughput >= STORM_GOAL * p.throughput,
        );
        report.goal(format!("rbd: {what}: no error (Swell)"), format!("{} errors (ceph-csi: {})", s.errors, p.errors), s.errors == 0);
    }
    swell.stop().await;
    cephcsi.stop().await;
    site.drop_pool(POOL)
}

fn ms_f(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What one storm on one driver gave.
#[derive(Debug, Clone, Default, PartialEq)]
struct Figures {
    throughput: f64,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

impl Figures {
    fn of<T>(burst: &Burst<T>) -> Self {
        Figures { throughput: burst.throughput(), wall: burst.wall, p50: burst.latencies.p50(), p99: burst.latencies.p99(), errors: burst.errors().count() }
    }
}

/// A storm on both drivers, as rows.
fn storm_rows(table: &mut Table, what: &str, s: &Figures, p: &Figures) {
    table.row(vec![format!("{what}: per second"), format!("{:.1}", s.throughput), format!("{:.1}", p.throughput), quotient(s.throughput, p.throughput)]);
    times(table, &format!("{what}: wall time"), s.wall, p.wall);
    times(table, &format!("{what}: call p50"), s.p50, p.p50);
    times(table, &format!("{what}: call p99"), s.p99, p.p99);
    table.row(vec![format!("{what}: errors"), s.errors.to_string(), p.errors.to_string(), "–".into()]);
}

/// A row of two times and their ratio.
fn times(table: &mut Table, what: &str, swell: Duration, peer: Duration) {
    table.row(vec![what.to_owned(), ms(swell), ms(peer), ratio(swell, peer)]);
}

/// A row of two sizes and their ratio.
fn sizes(table: &mut Table, what: &str, swell: u64, peer: u64) {
    table.row(vec![what.to_owned(), mib(swell), mib(peer), quotient(swell as f64, peer as f64)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_map_is_the_json_ceph_csi_reads() {
        let map: serde_json::Value = serde_json::from_str(&cluster_map("bench", &["v2:127.0.0.1:26200"])).unwrap();
        assert_eq!(map, serde_json::json!([{ "clusterID": "bench", "monitors": ["v2:127.0.0.1:26200"] }]));
    }

    #[test]
    fn monitors_and_key_come_from_the_test_clusters_files() {
        let conf = "[global]\nfsid = 1\nmon host = v2:127.0.0.1:26200\nauth cluster required = cephx\n";
        assert_eq!(mon_host(conf).as_deref(), Some("v2:127.0.0.1:26200"));
        assert_eq!(mon_host("[global]\nmon_host = [v2:10.0.0.1:3300]\n").as_deref(), Some("[v2:10.0.0.1:3300]"));
        assert_eq!(mon_host("[global]\nmon initial members = a\n"), None);
        let keyring = "[client.admin]\n\tkey = AQBx==\n\tcaps mon = \"allow *\"\n";
        assert_eq!(keyring_key(keyring).as_deref(), Some("AQBx=="));
        assert_eq!(keyring_key("[client.admin]\n"), None);
    }

    #[test]
    fn storm_rows_print_each_figure_as_swell_over_the_peer() {
        let swell = Figures { throughput: 100.0, wall: Duration::from_secs(5), p50: Duration::from_millis(20), p99: Duration::from_millis(40), errors: 0 };
        let peer = Figures { throughput: 25.0, wall: Duration::from_secs(20), p50: Duration::from_millis(80), p99: Duration::from_millis(160), errors: 3 };
        let mut table = Table::new("storm", &["what", "Swell", "ceph-csi", "Swell ÷ ceph-csi"]);
        storm_rows(&mut table, "500 at once", &swell, &peer);
        sizes(&mut table, "RSS", 30 << 20, 60 << 20);
        let text = table.markdown();
        for row in [
            "| 500 at once: per second | 100.0 | 25.0 | 4.00× |",
            "| 500 at once: wall time  | 5000.0 ms | 20000.0 ms | 0.25× |",
            "| 500 at once: call p50   | 20.0 ms | 80.0 ms | 0.25× |",
            "| 500 at once: errors     | 0 | 3 | – |",
            "| RSS                     | 30.0 MiB | 60.0 MiB | 0.50× |",
        ] {
            let squeezed = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(text.lines().any(|l| squeezed(l) == squeezed(row)), "no row {row:?} in\n{text}");
        }
    }

    /// The namespace ceph-csi runs in: it sees the cluster map where it
    /// reads it, and what it writes under /etc and /tmp stays there.
    #[test]
    fn the_peer_sees_its_config_and_changes_nothing_on_the_host() {
        const TEST: &str = "the_peer_sees_its_config_and_changes_nothing_on_the_host";
        if !swell_e2e::host::is_root() {
            assert!(!swell_e2e::host::in_ci(), "{TEST} needs root (a mount namespace); CI runs as root");
            swell_e2e::host::note_skip(TEST, "needs root (a mount namespace)");
            return;
        }
        assert!(namespaced(Path::new("/bin/sh"), &[], Path::new("/tmp/x"), Path::new("/tmp/x/config.json")).is_err(), "a socket under /tmp");
        let dir = PathBuf::from(format!("/var/tmp/swell-bench-peer-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let map = dir.join("config.json");
        std::fs::write(&map, cluster_map("bench", &["v2:127.0.0.1:26200"])).unwrap();
        let probe = "cat /etc/ceph-csi-config/config.json && echo '[global]' > /etc/ceph/ceph.conf && touch /tmp/csi/keys/keyfile-probe";
        let host_paths = [Path::new("/etc/ceph-csi-config"), Path::new("/etc/ceph/ceph.conf"), Path::new("/tmp/csi/keys/keyfile-probe")];
        let existed: Vec<bool> = host_paths.iter().map(|p| p.exists()).collect();
        let out = namespaced(Path::new("/bin/sh"), &["-c".into(), probe.into()], &dir, &map).unwrap().output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), cluster_map("bench", &["v2:127.0.0.1:26200"]));
        for (path, existed) in host_paths.iter().zip(existed) {
            assert_eq!(path.exists(), existed, "{} changed on the host", path.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
