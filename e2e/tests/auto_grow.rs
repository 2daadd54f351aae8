//! Auto-grow on the local backend (docs/auto-grow.md): volumes made through
//! CreateVolume with the StorageClass's policy, the controller's auto-grow
//! patching claims on a stand-in API server (`swell_e2e::apiserver`) that
//! asks the real `swell-webhook` and resizes through ControllerExpandVolume
//! like the external-resizer (the rig: `swell_e2e::auto_grow_rig`). The
//! first test runs the whole path on a real xfs under a writer (the
//! scenario rbd_auto_grow runs too), with the node reporting usage and
//! growing the filesystem itself (root: loop devices, mounts); the others stand in for
//! the node by writing its usage reading and mark into the backend's store,
//! and check one decision each.
#![allow(clippy::unwrap_used)]

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

use swell_backends::BackendConfig;
use swell_controller::{AutoGrowOutcome, AutoGrower, ControllerConfig, ReconcilerConfig};
use swell_e2e::auto_grow_rig::{CLASS, FilesystemGrow, Rig, grower_config, local_engine, until, writer_scenario};
use swell_e2e::harness::NodeUnderTest;
use swell_e2e::host;
use swell_e2e::process::built_binary;
use swell_e2e::requests;
use swell_e2e::webhook::DRIVER;
use swell_local::LocalConfig;
use swell_storage::VolumeId;
use swell_storage::auto_grow::{Skipped, Usage};
use swell_storage::expansion::now_unix;
use swell_storage::units::MIB;
use tokio::sync::Mutex;

/// Loop devices are few and the machine small: one test at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The auto-grow rig on the local backend, and its state directory, where
/// a test stands in for the node.
struct LocalRig {
    rig: Rig,
    local_state: PathBuf,
}

impl Deref for LocalRig {
    type Target = Rig;
    fn deref(&self) -> &Rig {
        &self.rig
    }
}

impl DerefMut for LocalRig {
    fn deref_mut(&mut self) -> &mut Rig {
        &mut self.rig
    }
}

struct Options {
    /// Bytes the controller's local backend may promise.
    capacity: Option<u64>,
    /// Bytes the webhook's view of the pool holds (as a webhook reading
    /// another moment of a shared pool would see it).
    webhook_capacity: Option<u64>,
    usage_max_age: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { capacity: None, webhook_capacity: None, usage_max_age: Duration::from_secs(60) }
    }
}

impl LocalRig {
    async fn start(options: Options) -> LocalRig {
        let rig = Rig::start(options.usage_max_age, |dir| local_engine(dir, options.capacity, options.webhook_capacity)).await;
        let local_state = rig.dir.join("local");
        LocalRig { rig, local_state }
    }

    /// Writes what the node would: a reading `age` old with `free` of
    /// `total` bytes free, and the mark.
    fn node_reports(&self, id: &VolumeId, total: u64, free: u64, age: Duration) {
        let usage =
            Usage { bytes_used: total - free, bytes_total: total, inodes_used: 10, inodes_total: 10_000, read_unix: now_unix() - age.as_secs(), skipped: None };
        swell_local::auto_grow::write_usage(&self.local_state, id, &usage).unwrap();
        swell_local::auto_grow::mark_wanted(&self.local_state, id).unwrap();
    }

    /// The auto-grow of another controller process over the same state,
    /// patching the same API server.
    async fn second_grower(&self) -> AutoGrower {
        let kubeconfig = self.dir.join("kubeconfig");
        swell_controller::build(&ControllerConfig {
            driver_name: DRIVER.to_owned(),
            backends: BackendConfig::local(LocalConfig::new(&self.local_state, self.dir.join("controller"))),
            reconciler: ReconcilerConfig::default(),
        })
        .unwrap()
        .auto_grower(swell_controller::kube_client(Some(&kubeconfig)).await.unwrap(), grower_config(Duration::from_secs(60)))
    }

    /// What `swell ARGS` prints about the rig's state.
    async fn swell(&self, args: &[&str]) -> String {
        let mut command = tokio::process::Command::new(built_binary("swell").expect("the swell binary (cargo build --bins)"));
        command
            .args(args)
            .arg(format!("--state-dir={}", self.dir.join("controller").display()))
            .arg(format!("--local-state-dir={}", self.local_state.display()));
        let out = command.env_remove("KUBECONFIG").env("HOME", &self.dir).kill_on_drop(true).output().await.unwrap();
        assert!(out.status.success(), "swell failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_filling_xfs_gets_it_grown_to_its_limit_never_past_it_and_never_sees_enospc() {
    if host::cannot_run("auto_grow_under_a_writer", false, &["losetup", "mkfs.xfs", "xfs_growfs", "mount", "umount"]) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut rig = LocalRig::start(Options::default()).await;
    let mut node = swell_node::NodeConfig::new("auto-grow-node");
    node.state_dir = rig.dir.join("node");
    node.local_state_dir = rig.local_state.clone();
    writer_scenario(&mut rig, node, FilesystemGrow::ByTheNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_volume_is_skipped_with_one_event_on_its_claim_across_restages_and_controller_restarts() {
    if host::cannot_run("auto_grow_block_volume_skipped", false, &["losetup"]) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut rig = LocalRig::start(Options::default()).await;
    let id = rig.claim("raw", 320 * MIB, &CLASS, &[], true).await;
    let staging = rig.dir.join("block-staging");
    std::fs::create_dir_all(&staging).unwrap();
    let staging = staging.display().to_string();
    // Each round: a node started afresh stages the volume and reports for
    // a while, a controller started afresh makes its passes, and the node
    // unstages: what is remembered is what the store holds.
    for round in 0..2 {
        let mut node = swell_node::NodeConfig::new("auto-grow-node");
        node.state_dir = rig.dir.join("node");
        node.local_state_dir = rig.local_state.clone();
        node.usage_report = Some(Duration::from_millis(300));
        let served = NodeUnderTest::serve(&rig.dir.join("node.sock"), &node).await.unwrap();
        let mut client = served.client.clone();
        client.node_stage_volume(rig.stage(&id, &staging, true)).await.unwrap();
        // Several of the node's passes (one each 100 ms).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let controller = rig.second_grower().await;
        let outcomes = [controller.pass().await, controller.pass().await];
        let expected: [Vec<(VolumeId, AutoGrowOutcome)>; 2] =
            if round == 0 { [vec![(id.clone(), AutoGrowOutcome::Skipped)], vec![]] } else { [vec![], vec![]] };
        assert_eq!(outcomes, expected, "round {round}: marked once per volume, settled by the first pass");
        client.node_unstage_volume(requests::unstage(&id.to_string(), &staging)).await.unwrap();
        drop(served);
    }
    assert_eq!(rig.skip_events(), vec!["uid-raw".to_owned()], "{:?}", rig.api.events());
    let (_, usage) = rig.store.auto_grow(&id).await.unwrap();
    assert_eq!(usage.and_then(|u| u.skipped), Some(Skipped::BlockVolume));
    assert_eq!(rig.request_of("raw"), 320 * MIB, "nothing asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_looking_at_one_crossed_volume_grow_it_once() {
    let _serial = SERIAL.lock().await;
    let mut rig = LocalRig::start(Options::default()).await;
    let id = rig.claim("twice", 320 * MIB, &CLASS, &[], false).await;
    let second = rig.second_grower().await;
    rig.node_reports(&id, 300 * MIB, 30 * MIB, Duration::ZERO);
    let (one, two) = tokio::join!(rig.grower.pass(), second.pass());
    let grown = one.iter().chain(&two).filter(|(_, o)| matches!(o, AutoGrowOutcome::Grown(..))).count();
    assert_eq!(grown, 1, "first: {one:?}, second: {two:?}");
    // Once the resize is in and the mark gone, neither grows again on the same reading.
    assert!(until(Duration::from_secs(10), || rig.api.resizes() == 1).await, "the resizer never finished");
    let (one, two) = tokio::join!(rig.grower.pass(), second.pass());
    assert!(one.is_empty() && two.is_empty(), "the mark was taken away: {one:?} {two:?}");
    assert_eq!(rig.api.patched_to(), vec![480 * MIB]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_older_than_the_bound_decides_nothing() {
    let _serial = SERIAL.lock().await;
    let mut rig = LocalRig::start(Options { usage_max_age: Duration::from_secs(30), ..Options::default() }).await;
    let id = rig.claim("stale", 320 * MIB, &CLASS, &[], false).await;
    // The node read it full, then stopped reporting (killed) a minute ago.
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::from_secs(60));
    assert_eq!(rig.grower.pass().await, vec![(id.clone(), AutoGrowOutcome::Stale)]);
    assert_eq!(rig.api.patched_to(), Vec::<u64>::new());
    // `swell volume` shows the policy and how old the last reading is.
    let text = rig.swell(&["volume", &id.to_string(), "--kubernetes=never"]).await;
    assert!(text.contains("on, below 30% free, by 50%, up to 640Mi, claim db/stale"), "{text}");
    assert!(text.contains("290Mi of 300Mi used, 10 of 10000 inodes, read 1m"), "{text}");
    // A fresh reading decides.
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::ZERO);
    assert_eq!(rig.grower.pass().await, vec![(id, AutoGrowOutcome::Grown(320 * MIB, 480 * MIB))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swell_volumes_lists_each_volumes_policy_last_usage_and_next_grow() {
    let _serial = SERIAL.lock().await;
    let mut rig = LocalRig::start(Options::default()).await;
    let calm = rig.claim("calm", 320 * MIB, &CLASS, &[], false).await;
    let full = rig.claim("full", 320 * MIB, &CLASS, &[], false).await;
    let unread = rig.claim("unread", 320 * MIB, &CLASS, &[], false).await;
    let plain = rig.claim("plain", 320 * MIB, &[], &[], false).await;
    rig.node_reports(&calm, 300 * MIB, 200 * MIB, Duration::from_secs(60));
    rig.node_reports(&full, 300 * MIB, 10 * MIB, Duration::ZERO);

    let text = rig.swell(&["volumes", "--kubernetes=never"]).await;
    let row =
        |id: &VolumeId| text.lines().find(|l| l.trim_start().starts_with(&id.to_string())).unwrap_or_else(|| panic!("no row of {id}:\n{text}")).to_owned();
    let header = text.lines().next().unwrap();
    assert!(header.contains("AUTO-GROW") && header.contains("USAGE") && header.contains("NEXT GROW"), "{text}");
    let policy = "on <30% free +50% max 640Mi";
    for (id, usage, next) in
        [(&calm, "100Mi/300Mi 1m", "above 210Mi used: to 480Mi"), (&full, "290Mi/300Mi 0s ago", "now: to 480Mi"), (&unread, "-", "no reading yet")]
    {
        let row = row(id);
        assert!(row.contains(policy) && row.contains(usage) && row.ends_with(next), "{id}: {row}");
    }
    let plain_row = row(&plain);
    let last_three: Vec<&str> = plain_row.split_whitespace().rev().take(3).collect();
    assert_eq!(last_three, ["-"; 3], "no policy: {plain_row}");

    let json: serde_json::Value = serde_json::from_str(&rig.swell(&["volumes", "--kubernetes=never", "-o", "json"]).await).unwrap();
    let volume = |id: &VolumeId| json["volumes"].as_array().unwrap().iter().find(|v| v["volume_id"] == id.to_string()).unwrap().clone();
    assert_eq!(volume(&calm)["next_grow"], serde_json::json!({ "when": "above", "used_bytes": 210 * MIB, "to_bytes": 480 * MIB }));
    assert_eq!(volume(&full)["usage"]["bytes_used"], 290 * MIB);
    assert_eq!(volume(&full)["auto_grow"]["policy"]["limit_bytes"], 640 * MIB);
    assert_eq!(volume(&plain).get("next_grow"), None);
    assert_eq!(json["problems"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_turns_auto_grow_on_within_its_class_bounds_and_only_lowers_the_limit() {
    let _serial = SERIAL.lock().await;
    let mut rig = LocalRig::start(Options::default()).await;
    let bounds = [("autoGrowLimit", "1Gi")];
    let annotations = [("swell.csi.storage/auto-grow", "true"), ("swell.csi.storage/auto-grow-step", "50%"), ("swell.csi.storage/auto-grow-limit", "400Mi")];
    let id = rig.claim("opted-in", 320 * MIB, &bounds, &annotations, false).await;
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::ZERO);
    assert_eq!(rig.grower.pass().await, vec![(id, AutoGrowOutcome::Grown(320 * MIB, 400 * MIB))], "a 50% step, cut to the claim's lower limit");
    let raising = [("swell.csi.storage/auto-grow", "true"), ("swell.csi.storage/auto-grow-limit", "2Gi")];
    let id = rig.claim("greedy", 320 * MIB, &bounds, &raising, false).await;
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::ZERO);
    assert_eq!(rig.grower.pass().await, vec![(id, AutoGrowOutcome::Grown(320 * MIB, 384 * MIB))], "the class's 20% step");
    let events = rig.api.events();
    assert!(events.iter().any(|(r, m)| r == "AutoGrowAnnotationIgnored" && m.contains("auto-grow-limit") && m.contains("only lower")), "{events:?}");
    assert_eq!(rig.api.patched_to(), vec![400 * MIB, 384 * MIB]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_annotation_is_an_event_and_is_ignored_not_guessed() {
    let _serial = SERIAL.lock().await;
    let mut rig = LocalRig::start(Options::default()).await;
    // The class sets bounds only; the claim's attempt to turn auto-grow on is misspelt.
    let bounds = [("autoGrowLimit", "1Gi")];
    let id = rig.claim("typo", 320 * MIB, &bounds, &[("swell.csi.storage/auto-grow", "yes")], false).await;
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::ZERO);
    assert_eq!(rig.grower.pass().await, vec![(id.clone(), AutoGrowOutcome::Off("auto-grow off for this claim"))]);
    assert_eq!(rig.api.patched_to(), Vec::<u64>::new(), "no resize");
    let events = rig.api.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "AutoGrowAnnotationIgnored");
    assert!(events[0].1.contains("swell.csi.storage/auto-grow") && events[0].1.contains("\"yes\""), "{events:?}");
    assert_eq!(rig.api.event_uids(), vec!["uid-typo"], "the Event names the claim's uid, which `kubectl describe pvc` lists Events by");
    assert_eq!(rig.grower.pass().await, vec![], "the mark was taken away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_stops_auto_grow_with_one_event_and_a_backoff() {
    let _serial = SERIAL.lock().await;
    let mut rig = LocalRig::start(Options { capacity: Some(400 * MIB), ..Options::default() }).await;
    let id = rig.claim("full", 320 * MIB, &CLASS, &[], false).await;
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::ZERO);
    assert_eq!(rig.grower.pass().await, vec![(id.clone(), AutoGrowOutcome::NoRoom)]);
    assert_eq!(rig.grower.pass().await, vec![(id.clone(), AutoGrowOutcome::BackingOff)], "not tried again at once");
    assert_eq!(rig.api.patched_to(), Vec::<u64>::new());
    let events = rig.api.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "AutoGrowNoRoom");
    assert!(events[0].1.contains("the pool can give"), "{events:?}");
    assert_eq!(rig.metric(r#"swell_auto_grows_total{outcome="no_room"}"#).await, 1.0, "the backoff's skip is no decision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_denial_is_an_event_and_backs_off_instead_of_looping() {
    let _serial = SERIAL.lock().await;
    // The controller sees room the webhook's reading of the pool does not.
    let mut rig = LocalRig::start(Options { capacity: Some(2048 * MIB), webhook_capacity: Some(400 * MIB), ..Options::default() }).await;
    let id = rig.claim("denied", 320 * MIB, &CLASS, &[], false).await;
    rig.node_reports(&id, 300 * MIB, 10 * MIB, Duration::ZERO);
    let outcome = rig.grower.pass().await;
    assert!(matches!(outcome.as_slice(), [(_, AutoGrowOutcome::Refused(reason))] if reason.contains("denied")), "{outcome:?}");
    assert_eq!(rig.grower.pass().await, vec![(id.clone(), AutoGrowOutcome::BackingOff)]);
    assert_eq!(rig.api.patched_to(), vec![480 * MIB], "asked once");
    assert_eq!(rig.request_of("denied"), 320 * MIB, "the denied patch changed nothing");
    let events = rig.api.events();
    assert_eq!(events.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), vec!["AutoGrowRefused"], "{events:?}");
}
