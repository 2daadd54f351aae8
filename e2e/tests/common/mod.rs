//! Helpers shared by the conformance suites: a fresh driver per test, exact
//! status assertions, and the few controller calls every test repeats.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use csi_proto::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
use csi_proto::v1::*;
use swell_e2e::harness::{DriverOptions, DriverUnderTest};
use swell_e2e::{host, requests};
use tempfile::TempDir;
use tonic::{Code, Response, Status};

pub(crate) const MIB: i64 = swell_storage::units::MIB as i64;
pub(crate) const GIB: i64 = swell_storage::units::GIB as i64;

/// A driver running in its own directory under /var/tmp. The directory goes
/// when the `TempDir` drops; keep it alive as long as the driver.
pub(crate) struct Driver {
    // Declared first so the services stop before their directory goes.
    pub d: DriverUnderTest,
    pub dir: TempDir,
}

impl std::ops::Deref for Driver {
    type Target = DriverUnderTest;
    fn deref(&self) -> &DriverUnderTest {
        &self.d
    }
}

impl std::ops::DerefMut for Driver {
    fn deref_mut(&mut self) -> &mut DriverUnderTest {
        &mut self.d
    }
}

/// Starts a driver with default options in a fresh temp dir.
pub(crate) async fn driver() -> Driver {
    driver_with(DriverOptions::default()).await
}

/// Starts a driver whose local backend may promise at most `bytes`.
pub(crate) async fn driver_with_capacity(bytes: i64) -> Driver {
    driver_with(DriverOptions { local_capacity_bytes: Some(u64::try_from(bytes).unwrap()), ..Default::default() }).await
}

/// Starts a driver with `options` in a fresh temp dir.
pub(crate) async fn driver_with(options: DriverOptions) -> Driver {
    let dir = tempfile::Builder::new().prefix("swell-conformance-").tempdir_in("/var/tmp").expect("create temp dir under /var/tmp");
    let d = DriverUnderTest::start(dir.path(), options).await.expect("start driver under test");
    Driver { d, dir }
}

/// A name no other call in this process has used.
pub(crate) fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Asserts that `result` failed with exactly `code` and that its message
/// names every string in `mentions`; returns the status.
#[track_caller]
pub(crate) fn expect_status<T: std::fmt::Debug>(result: Result<Response<T>, Status>, code: Code, mentions: &[&str]) -> Status {
    let status = match result {
        Ok(response) => panic!("expected {code:?}, got OK: {:?}", response.into_inner()),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "wrong status code; message: {:?}", status.message());
    for word in mentions {
        assert!(status.message().contains(word), "message {:?} does not mention {word:?}", status.message());
    }
    status
}

/// Unwraps a successful answer, printing the status on failure.
#[track_caller]
pub(crate) fn expect_ok<T>(result: Result<Response<T>, Status>, what: &str) -> T {
    match result {
        Ok(response) => response.into_inner(),
        Err(status) => panic!("{what}: expected OK, got {:?}: {}", status.code(), status.message()),
    }
}

/// A capability with an access mode of choice and a mount access type.
pub(crate) fn capability_with_mode(mode: Mode) -> VolumeCapability {
    VolumeCapability { access_mode: Some(AccessMode { mode: mode as i32 }), access_type: Some(AccessType::Mount(MountVolume::default())) }
}

/// The capability csi-sanity uses by default: single-node writer, mount, default fs.
pub(crate) fn default_capability() -> VolumeCapability {
    requests::mount_capability("")
}

/// CreateVolume with required = limit = `bytes`, as csi-sanity's size tests send it.
pub(crate) fn create_exact(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        capacity_range: Some(CapacityRange { required_bytes: bytes, limit_bytes: bytes }),
        ..requests::create_volume(name, bytes, default_capability())
    }
}

/// Creates a volume of at least `bytes` and returns it.
pub(crate) async fn create(driver: &mut DriverUnderTest, name: &str, bytes: i64) -> Volume {
    let response = expect_ok(driver.controller.create_volume(requests::create_volume(name, bytes, default_capability())).await, "CreateVolume");
    let volume = response.volume.expect("CreateVolume answered without a volume");
    assert!(!volume.volume_id.is_empty(), "empty volume_id");
    assert!(volume.capacity_bytes >= bytes, "capacity {} below required {bytes}", volume.capacity_bytes);
    volume
}

/// Deletes a volume, requiring OK.
pub(crate) async fn delete(driver: &mut DriverUnderTest, id: &str) {
    expect_ok(driver.controller.delete_volume(DeleteVolumeRequest { volume_id: id.to_owned(), ..Default::default() }).await, "DeleteVolume");
}

/// The DeleteVolume answer for `id`.
pub(crate) async fn try_delete(driver: &mut DriverUnderTest, id: &str) -> Result<Response<DeleteVolumeResponse>, Status> {
    driver.controller.delete_volume(DeleteVolumeRequest { volume_id: id.to_owned(), ..Default::default() }).await
}

/// One ListVolumes page.
pub(crate) async fn list_page(driver: &mut DriverUnderTest, max_entries: i32, token: &str) -> ListVolumesResponse {
    let request = ListVolumesRequest { max_entries, starting_token: token.to_owned() };
    expect_ok(driver.controller.list_volumes(request).await, "ListVolumes")
}

/// The ids of one page's entries.
pub(crate) fn page_ids(page: &ListVolumesResponse) -> Vec<String> {
    page.entries.iter().map(|e| e.volume.as_ref().expect("list entry without volume").volume_id.clone()).collect()
}

/// Every volume id, from an unpaginated ListVolumes.
pub(crate) async fn list_ids(driver: &mut DriverUnderTest) -> Vec<String> {
    let page = list_page(driver, 0, "").await;
    assert!(page.next_token.is_empty(), "unpaginated list returned next_token {:?}", page.next_token);
    page_ids(&page)
}

/// ControllerGetVolume, requiring OK; returns the volume and its condition.
pub(crate) async fn get_volume(driver: &mut DriverUnderTest, id: &str) -> (Volume, Option<VolumeCondition>) {
    let request = ControllerGetVolumeRequest { volume_id: id.to_owned() };
    let response = expect_ok(driver.controller.controller_get_volume(request).await, "ControllerGetVolume");
    let volume = response.volume.expect("ControllerGetVolume answered without a volume");
    (volume, response.status.and_then(|s| s.volume_condition))
}

/// The size ControllerGetVolume reports for `id`.
pub(crate) async fn size_of(driver: &mut DriverUnderTest, id: &str) -> i64 {
    get_volume(driver, id).await.0.capacity_bytes
}

/// ControllerExpandVolume with an explicit required and limit, no capability.
pub(crate) fn expand_range(id: &str, required: i64, limit: i64) -> ControllerExpandVolumeRequest {
    ControllerExpandVolumeRequest {
        capacity_range: Some(CapacityRange { required_bytes: required, limit_bytes: limit }),
        ..requests::controller_expand(id, required, None)
    }
}

/// GetCapacity's available bytes for the default backend.
pub(crate) async fn available(driver: &mut DriverUnderTest) -> i64 {
    let request = GetCapacityRequest { volume_capabilities: vec![default_capability()], ..Default::default() };
    expect_ok(driver.controller.get_capacity(request).await, "GetCapacity").available_capacity
}

/// An id of the right shape that names no volume.
pub(crate) fn absent_local_id() -> String {
    format!("local:{}", "0123456789abcdef".repeat(2))
}

/// The parameters map with one key.
pub(crate) fn parameters(key: &str, value: &str) -> HashMap<String, String> {
    HashMap::from([(key.to_owned(), value.to_owned())])
}

/// Whether the node tests can run here; records a skip when not (a
/// missing program fails the test under CI).
pub(crate) fn node_host_ready(test: &str) -> bool {
    !host::cannot_run(test, false, &["losetup", "mkfs.xfs", "mount", "umount"])
}

/// Undoes what a failed node test leaves behind: unmounts `mounts`
/// (deepest first, as listed) and detaches loop devices of `images`.
pub(crate) struct HostCleanup {
    pub mounts: Vec<PathBuf>,
    pub images: Vec<PathBuf>,
}

impl Drop for HostCleanup {
    fn drop(&mut self) {
        for path in &self.mounts {
            while host::is_mount_point(path) {
                let ok = std::process::Command::new("umount").arg(path).status().map(|s| s.success()).unwrap_or(false);
                if !ok {
                    let _ = std::process::Command::new("umount").arg("-l").arg(path).status();
                    break;
                }
            }
        }
        for image in &self.images {
            for device in loops_backed_by(image) {
                let _ = std::process::Command::new("losetup").arg("-d").arg(&device).status();
            }
        }
    }
}

/// The backing file of a local volume.
pub(crate) fn backing_file(driver: &DriverUnderTest, id: &str) -> PathBuf {
    swell_local::image_path(&driver.local_state_dir, &id.parse().expect("local volume id"))
}

/// A path as the string CSI requests carry.
pub(crate) fn s(path: &Path) -> String {
    path.display().to_string()
}

/// Where a node test stages and publishes, laid out as csi-sanity does: the
/// staging directory and the target's parent exist, the target does not.
pub(crate) struct NodePaths {
    pub staging: PathBuf,
    pub target: PathBuf,
}

impl NodePaths {
    pub(crate) fn under(root: &Path) -> NodePaths {
        let staging = root.join("staging");
        let mount_dir = root.join("mnt");
        std::fs::create_dir_all(&staging).expect("create staging dir");
        std::fs::create_dir_all(&mount_dir).expect("create target parent dir");
        NodePaths { staging, target: mount_dir.join("target") }
    }

    /// A guard that unmounts and detaches whatever a failed test left.
    pub(crate) fn cleanup(&self, image: PathBuf) -> HostCleanup {
        HostCleanup { mounts: vec![self.target.clone(), self.staging.clone()], images: vec![image] }
    }
}

/// NodeStageVolume then NodePublishVolume, each `times` times, with `cap`.
pub(crate) async fn stage_and_publish(driver: &mut DriverUnderTest, id: &str, paths: &NodePaths, cap: &VolumeCapability, times: usize) {
    let (staging, target) = (s(&paths.staging), s(&paths.target));
    for attempt in 1..=times {
        let request = requests::stage(id, &staging, cap.clone());
        expect_ok(driver.node.node_stage_volume(request).await, &format!("NodeStageVolume #{attempt}"));
    }
    if matches!(cap.access_type, Some(AccessType::Mount(_))) {
        assert!(host::is_mount_point(&paths.staging), "staging path is not a mount point after NodeStageVolume");
    }
    for attempt in 1..=times {
        let request = requests::publish(id, &staging, &target, cap.clone(), false);
        expect_ok(driver.node.node_publish_volume(request).await, &format!("NodePublishVolume #{attempt}"));
    }
    assert!(host::is_mount_point(&paths.target), "target path is not a mount point after NodePublishVolume");
}

/// NodeUnpublishVolume then NodeUnstageVolume, each `times` times, and
/// checks that nothing stays mounted or attached.
pub(crate) async fn unpublish_and_unstage(driver: &mut DriverUnderTest, id: &str, paths: &NodePaths, times: usize) {
    let (staging, target) = (s(&paths.staging), s(&paths.target));
    for attempt in 1..=times {
        expect_ok(driver.node.node_unpublish_volume(requests::unpublish(id, &target)).await, &format!("NodeUnpublishVolume #{attempt}"));
    }
    assert!(!host::is_mount_point(&paths.target), "target still mounted after NodeUnpublishVolume");
    // The spec: the SP MUST delete the file or directory it created there.
    assert!(!paths.target.exists(), "NodeUnpublishVolume left {} behind", paths.target.display());
    for attempt in 1..=times {
        expect_ok(driver.node.node_unstage_volume(requests::unstage(id, &staging)).await, &format!("NodeUnstageVolume #{attempt}"));
    }
    assert!(!host::is_mount_point(&paths.staging), "staging still mounted after NodeUnstageVolume");
    let image = backing_file(driver, id);
    let started = std::time::Instant::now();
    let mut left = loops_backed_by(&image);
    while !left.is_empty() && started.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        left = loops_backed_by(&image);
    }
    assert!(left.is_empty(), "loop devices still attached to {}: {left:?}", image.display());
}

/// Loop devices whose backing file is `image`, even if it was deleted.
pub(crate) fn loops_backed_by(image: &Path) -> Vec<String> {
    swell_e2e::host::loop_devices_for(image)
}

/// The byte usage entry of a NodeGetVolumeStats answer, checked for sanity.
#[track_caller]
pub(crate) fn byte_usage(response: &NodeGetVolumeStatsResponse) -> VolumeUsage {
    let bytes = *response.usage.iter().find(|u| u.unit == volume_usage::Unit::Bytes as i32).unwrap_or_else(|| panic!("no BYTES usage in {response:?}"));
    assert!(bytes.total > 0, "total bytes {}", bytes.total);
    assert!(bytes.used >= 0 && bytes.available >= 0, "{bytes:?}");
    assert!(bytes.used <= bytes.total && bytes.available <= bytes.total, "{bytes:?}");
    bytes
}

/// ValidateVolumeCapabilities for `id` and `caps`.
pub(crate) fn validate(id: &str, caps: Vec<VolumeCapability>) -> ValidateVolumeCapabilitiesRequest {
    ValidateVolumeCapabilitiesRequest { volume_id: id.to_owned(), volume_capabilities: caps, ..Default::default() }
}

/// Walks the pages from `token` on, returning every id seen.
pub(crate) async fn walk(drv: &mut DriverUnderTest, mut token: String) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..20 {
        if token.is_empty() {
            return seen;
        }
        let page = list_page(drv, 2, &token).await;
        assert!(page.entries.len() <= 2, "page larger than max_entries: {}", page.entries.len());
        seen.extend(page_ids(&page));
        token = page.next_token;
    }
    panic!("pagination did not end after 20 pages");
}

/// The RPC types a ControllerGetCapabilities answer announces.
pub(crate) fn controller_rpc_types(response: &ControllerGetCapabilitiesResponse) -> BTreeSet<i32> {
    let rpc = |c: &ControllerServiceCapability| match &c.r#type {
        Some(controller_service_capability::Type::Rpc(r)) => r.r#type,
        other => panic!("capability without an RPC type: {other:?}"),
    };
    response.capabilities.iter().map(rpc).collect()
}

/// The RPC types a NodeGetCapabilities answer announces.
pub(crate) fn node_rpc_types(response: &NodeGetCapabilitiesResponse) -> BTreeSet<i32> {
    let rpc = |c: &NodeServiceCapability| match &c.r#type {
        Some(node_service_capability::Type::Rpc(r)) => r.r#type,
        other => panic!("capability without an RPC type: {other:?}"),
    };
    response.capabilities.iter().map(rpc).collect()
}
