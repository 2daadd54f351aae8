//! A Ceph pool is shared with other tools and other installs: an image
//! whose name has Swell's shape (`swell-<32 hex>`) proves nothing. On a real
//! cluster: DeleteVolume of an id naming an image Swell has no entry for
//! answers OK and leaves the image where it is (and no lock object), an
//! expansion of it is NOT_FOUND, and the background purge
//! removes only what Swell moved to the trash itself, never another
//! client's trashed image of the same shape. Two installs sharing the pool,
//! each in its own RADOS namespace, never see or touch each other's volumes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::volume_content_source::{SnapshotSource, Type};
use csi_proto::v1::{CreateSnapshotRequest, DeleteSnapshotRequest, DeleteVolumeRequest, ListSnapshotsRequest, ListVolumesRequest, VolumeContentSource};
use swell_backends::Backends;
use swell_controller::ReconcilerConfig;
use swell_e2e::harness::ControllerUnderTest;
use swell_e2e::never_stuck::{InProcess, create, delete, expand};
use swell_e2e::rbd_rig::{self, CLUSTER_ID, ClusterEnv, Rbd, cli, location_of, rbd_size};
use swell_e2e::requests::{create_volume, mount_capability};
use swell_e2e::state::leave_wish;
use swell_rbd::{RbdBackend, RbdConfig};
use swell_storage::rbd_volume::image_name;
use swell_storage::units::MIB;
use swell_storage::{Backend, CephAccess, RbdVolume, VolumeId};
use tonic::Code;
use tonic::transport::Channel;

/// The RBD ids of the trashed images of pool `rbd` (`rbd/<namespace>`
/// for one), by the name they had.
fn trash_of(env: &ClusterEnv, spec: &str) -> Vec<(String, String)> {
    let listed = cli(env, "rbd", &["trash", "ls", spec]).unwrap();
    listed.lines().filter_map(|l| l.split_once(' ')).map(|(id, name)| (id.to_owned(), name.trim().to_owned())).collect()
}

fn trash(env: &ClusterEnv) -> Vec<(String, String)> {
    trash_of(env, "rbd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_swell_shaped_image_survives_a_delete_and_a_foreign_trashed_one_the_purge() {
    let Some(session) = rbd_rig::acquire("rbd_only_ours::a_foreign_swell_shaped_image_survives_a_delete_and_a_foreign_trashed_one_the_purge").await else {
        return;
    };
    let env = session.env;
    let rig = InProcess::start(&Rbd(env), Duration::ZERO).await;
    let mut client = rig.client();
    let pid = std::process::id();
    // Another tool's images (or another install's), named as Swell names them.
    let (foreign, foreign_trashed) = (image_name(&format!("foreign-{pid}")), image_name(&format!("foreign-trashed-{pid}")));
    for image in [&foreign, &foreign_trashed] {
        cli(env, "rbd", &["create", "--size", "8M", &format!("rbd/{image}")]).unwrap();
    }
    cli(env, "rbd", &["trash", "mv", &format!("rbd/{foreign_trashed}")]).unwrap();

    // DeleteVolume of an id that names the foreign image: OK, and nothing moves.
    let id = RbdVolume::at(CLUSTER_ID, "rbd", &foreign).unwrap().id().to_string();
    delete(&mut client, &id).await;
    // An expansion of it is NOT_FOUND.
    let status = expand(&mut client, &id, 16 * MIB).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    rig.controller.reconciler.collect_garbage().await;
    assert_eq!(rbd_size(env, "rbd", &foreign).unwrap(), Some(8 * MIB), "the foreign image is still in the pool");
    assert!(!trash(env).iter().any(|(_, name)| name == &foreign), "the foreign image was trashed");
    let objects = cli(env, "rados", &["-p", "rbd", "ls"]).unwrap();
    assert!(!objects.lines().any(|o| o == format!("swell.lock.{foreign}")), "a lock object was left for an id that names no volume");

    // Swell's own volume goes all the way: out of the pool and out of the trash.
    let own = create(&mut client, &format!("own-{pid}"), 64 * MIB).await;
    let own_image = location_of(&own).image;
    delete(&mut client, &own).await;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        rig.controller.reconciler.collect_garbage().await;
        let trashed = trash(env);
        if rbd_size(env, "rbd", &own_image).unwrap().is_none() && !trashed.iter().any(|(_, name)| name == &own_image) {
            break;
        }
        assert!(Instant::now() < until, "Swell's own deleted image was not purged in 60 s: {trashed:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Passes after that purge leave the foreign trashed image alone too.
    rig.controller.reconciler.collect_garbage().await;
    let trashed = trash(env);
    let kept = trashed.iter().find(|(_, name)| name == &foreign_trashed);
    assert!(kept.is_some(), "another client's trashed image of Swell's shape was purged: {trashed:?}");

    // Tidy the pool for the tests that follow.
    cli(env, "rbd", &["rm", &format!("rbd/{foreign}")]).unwrap();
    cli(env, "rbd", &["trash", "rm", &format!("rbd/{}", kept.unwrap().0)]).unwrap();
}

/// One install of Swell on the test cluster: its backend (in `namespace`
/// of every pool) and its controller, whose reconciler runs only when the
/// test asks, so a pass's report counts exactly what that install found.
struct Install {
    backend: Arc<RbdBackend>,
    controller: ControllerUnderTest,
    _dir: tempfile::TempDir,
}

impl Install {
    /// An install as `client.admin`.
    async fn start(env: &ClusterEnv, instance: &str, namespace: &str) -> Install {
        Self::start_as(env.access(), instance, namespace).await
    }

    async fn start_as(access: CephAccess, instance: &str, namespace: &str) -> Install {
        let config = RbdConfig { namespace: namespace.into(), instance: instance.into(), ..RbdConfig::with_access(access) };
        let backend = Arc::new(RbdBackend::new(config).unwrap());
        let dir = tempfile::Builder::new().prefix("swell-rbd-install-").tempdir_in("/var/tmp").unwrap();
        let backends = Backends::new(Arc::clone(&backend) as Arc<dyn Backend>, Duration::from_secs(8));
        let controller = ControllerUnderTest::start(dir.path(), backends, ReconcilerConfig::default()).await.unwrap();
        Install { backend, controller, _dir: dir }
    }

    fn client(&self) -> ControllerClient<Channel> {
        self.controller.client.clone()
    }

    /// The ids ListVolumes answers.
    async fn listed(&self) -> BTreeSet<String> {
        let listed = self.client().list_volumes(ListVolumesRequest::default()).await.unwrap().into_inner();
        listed.entries.into_iter().filter_map(|e| e.volume).map(|v| v.volume_id).collect()
    }

    /// Runs the background work until `done` holds (60 s at most).
    async fn collect_until(&self, what: &str, done: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            self.controller.reconciler.collect_garbage().await;
            if tokio::task::block_in_place(&done) {
                return;
            }
            assert!(Instant::now() < until, "{what}: not done in 60 s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The size of `id`'s image as `rbd info` reads it in the id's namespace.
fn size_of(env: &ClusterEnv, id: &str) -> Option<u64> {
    let volume = location_of(id);
    let spec = volume.spec();
    let (pool, image) = spec.rsplit_once('/').unwrap();
    rbd_size(env, pool, image).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installs_in_their_own_namespaces_of_one_pool_never_see_or_touch_each_others_volumes() {
    let Some(session) = rbd_rig::acquire("rbd_only_ours::two_installs_in_their_own_namespaces_of_one_pool_never_see_or_touch_each_others_volumes").await else {
        return;
    };
    let env = session.env;
    let pid = std::process::id();
    // An operator makes the namespace (a cluster kept from an earlier run, SWELL_RBD_TEST_CLUSTER, has it).
    if let Err(e) = cli(env, "rbd", &["namespace", "create", "rbd/team-b"]) {
        assert!(e.contains("(17) File exists"), "{e}");
    }
    // B's Ceph user may reach nothing outside its namespace: Ceph itself keeps B out of A's objects.
    let b_keyring = env.dir.join("ceph.client.swell-team-b.keyring");
    let caps = ["mon", "profile rbd", "osd", "profile rbd pool=rbd namespace=team-b"];
    let mut args = vec!["auth", "get-or-create", "client.swell-team-b"];
    args.extend(caps);
    let keyring_arg = b_keyring.display().to_string();
    args.extend(["-o", &keyring_arg]);
    cli(env, "ceph", &args).unwrap();
    let b_access = CephAccess { user: "swell-team-b".into(), ..CephAccess::new(CLUSTER_ID, &env.conf, &b_keyring) };
    // An install from before namespaces (the pool's default one) and a new one in team-b.
    let a = Install::start(env, "install-a", "").await;
    let b = Install::start_as(b_access, "install-b", "team-b").await;
    let (mut ca, mut cb) = (a.client(), b.client());

    // An install whose namespace nobody made is told how to make it, and makes nothing.
    let missing = Install::start(env, "install-missing", "team-missing").await;
    let refused = missing.client().create_volume(create_volume("m", 64 * MIB as i64, mount_capability("xfs"))).await;
    let status = refused.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("rbd namespace create rbd/team-missing"), "{status:?}");

    // One CO name in both installs: two volumes, one image name in two namespaces.
    let shared = format!("shared-{pid}");
    let (a_shared, b_shared) = (create(&mut ca, &shared, 64 * MIB).await, create(&mut cb, &shared, 64 * MIB).await);
    let (a_only, b_only) = (create(&mut ca, &format!("a-only-{pid}"), 64 * MIB).await, create(&mut cb, &format!("b-only-{pid}"), 64 * MIB).await);
    assert_ne!(a_shared, b_shared);
    assert_eq!(location_of(&a_shared).namespace, "");
    assert_eq!(location_of(&b_shared).namespace, "team-b");
    assert_eq!(location_of(&a_shared).image, location_of(&b_shared).image);
    assert_eq!((size_of(env, &a_shared), size_of(env, &b_shared)), (Some(64 * MIB), Some(64 * MIB)));
    // Nothing of B's in the default namespace: no image, no lock object; B's state objects are in team-b.
    let b_only_image = location_of(&b_only).image;
    assert_eq!(rbd_size(env, "rbd", &b_only_image).unwrap(), None, "B's volume was made in the default namespace");
    let default_objects = cli(env, "rados", &["-p", "rbd", "ls"]).unwrap();
    assert!(!default_objects.lines().any(|o| o.contains(&b_only_image)), "an object of B's volume is in the default namespace");
    let b_objects = cli(env, "rados", &["-p", "rbd", "-N", "team-b", "ls"]).unwrap();
    assert!(b_objects.lines().any(|o| o == "swell.layout"), "B's state layout is not in its namespace: {b_objects}");
    assert!(b_objects.lines().any(|o| o.starts_with("swell.state.")), "B's state shards are not in its namespace: {b_objects}");

    // Each grows its own; the other's image of the same name keeps its size.
    assert_eq!(expand(&mut ca, &a_shared, 96 * MIB).await.unwrap(), 96 * MIB);
    assert_eq!(size_of(env, &b_shared), Some(64 * MIB), "A's grow reached B's image");
    assert_eq!(expand(&mut cb, &b_shared, 128 * MIB).await.unwrap(), 128 * MIB);
    assert_eq!(size_of(env, &a_shared), Some(96 * MIB), "B's grow reached A's image");

    // Each lists its own volumes and none of the other's.
    let (listed_a, listed_b) = (a.listed().await, b.listed().await);
    assert!(listed_a.contains(&a_shared) && listed_a.contains(&a_only), "{listed_a:?}");
    assert_eq!(listed_b, BTreeSet::from([b_shared.clone(), b_only.clone()]));
    assert!(listed_a.iter().all(|id| location_of(id).namespace.is_empty()), "A listed another namespace's volume: {listed_a:?}");

    // Neither deletes nor grows the other's volume: refused, naming the namespace, and nothing moves.
    for (client, theirs, size) in [(&mut ca, &b_shared, 128 * MIB), (&mut cb, &a_shared, 96 * MIB)] {
        let refused = client.delete_volume(DeleteVolumeRequest { volume_id: theirs.clone(), ..Default::default() }).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("namespace"), "{refused:?}");
        let refused = expand(client, theirs, 256 * MIB).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert_eq!(size_of(env, theirs), Some(size), "{theirs} changed");
    }

    // Each reconciles only its own: a wish left on each, and one pass of A's finds one volume.
    let (a_store, b_store) = (a.backend.expansion_store(), b.backend.expansion_store());
    leave_wish(&*a_store, &a_only.parse::<VolumeId>().unwrap(), 64 * MIB, 80 * MIB, None).await;
    leave_wish(&*b_store, &b_only.parse::<VolumeId>().unwrap(), 64 * MIB, 112 * MIB, None).await;
    let report = a.controller.reconciler.pass().await;
    assert_eq!((report.examined, report.completed), (1, 1), "A's pass: {report:?}");
    assert_eq!((size_of(env, &a_only), size_of(env, &b_only)), (Some(80 * MIB), Some(64 * MIB)), "A's pass grew B's volume");
    let report = b.controller.reconciler.pass().await;
    assert_eq!((report.examined, report.completed), (1, 1), "B's pass: {report:?}");
    assert_eq!((size_of(env, &a_only), size_of(env, &b_only)), (Some(80 * MIB), Some(112 * MIB)));

    // In B's namespace too: a foreign image of Swell's shape survives B's delete, a foreign trashed one B's purge.
    let (foreign, foreign_trashed) = (image_name(&format!("foreign-b-{pid}")), image_name(&format!("foreign-b-trashed-{pid}")));
    for image in [&foreign, &foreign_trashed] {
        cli(env, "rbd", &["create", "--size", "8M", &format!("rbd/team-b/{image}")]).unwrap();
    }
    cli(env, "rbd", &["trash", "mv", &format!("rbd/team-b/{foreign_trashed}")]).unwrap();
    delete(&mut cb, &RbdVolume::at_in(CLUSTER_ID, "rbd", "team-b", &foreign).unwrap().id().to_string()).await;

    // B deletes its volume of the shared name: gone from its namespace and its trash; A's stays.
    delete(&mut cb, &b_shared).await;
    let b_shared_image = location_of(&b_shared).image;
    b.collect_until("B's deleted volume purged", || {
        size_of(env, &b_shared).is_none() && !trash_of(env, "rbd/team-b").iter().any(|(_, name)| name == &b_shared_image)
    })
    .await;
    assert_eq!(size_of(env, &a_shared), Some(96 * MIB), "B's delete reached A's image of the same name");
    assert!(a.listed().await.contains(&a_shared));
    // A deletes its own; B's other volume and the foreign images stay.
    delete(&mut ca, &a_shared).await;
    let a_shared_image = location_of(&a_shared).image;
    a.collect_until("A's deleted volume purged", || size_of(env, &a_shared).is_none() && !trash(env).iter().any(|(_, name)| name == &a_shared_image)).await;
    b.controller.reconciler.collect_garbage().await;
    assert_eq!(size_of(env, &b_only), Some(112 * MIB));
    assert_eq!(rbd_size(env, "rbd/team-b", &foreign).unwrap(), Some(8 * MIB), "a foreign image in B's namespace went with B's delete");
    let b_trash = trash_of(env, "rbd/team-b");
    let kept = b_trash.iter().find(|(_, name)| name == &foreign_trashed);
    assert!(kept.is_some(), "B's purge removed a foreign trashed image: {b_trash:?}");
    let b_objects = cli(env, "rados", &["-p", "rbd", "-N", "team-b", "ls"]).unwrap();
    assert!(!b_objects.lines().any(|o| o == format!("swell.lock.{foreign}")), "a lock object was left for an id that names no volume");

    // Snapshots too: B's is in B's namespace, listed and restored by B only.
    let snapshot = cb
        .create_snapshot(CreateSnapshotRequest { source_volume_id: b_only.clone(), name: format!("snap-b-{pid}"), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap()
        .snapshot_id;
    assert!(snapshot.contains(":team-b:"), "{snapshot}");
    let snapshots_of = |client: &ControllerClient<Channel>| {
        let mut client = client.clone();
        async move {
            let listed = client.list_snapshots(ListSnapshotsRequest::default()).await.unwrap().into_inner();
            listed.entries.into_iter().filter_map(|e| e.snapshot).map(|s| s.snapshot_id).collect::<BTreeSet<_>>()
        }
    };
    assert!(snapshots_of(&cb).await.contains(&snapshot));
    assert!(!snapshots_of(&ca).await.contains(&snapshot), "A listed B's snapshot");
    ca.delete_snapshot(DeleteSnapshotRequest { snapshot_id: snapshot.clone(), ..Default::default() }).await.unwrap();
    assert!(snapshots_of(&cb).await.contains(&snapshot), "A's DeleteSnapshot removed B's snapshot");
    let from_snapshot = |name: &str| {
        let mut request = create_volume(name, 112 * MIB as i64, mount_capability("xfs"));
        request.volume_content_source = Some(VolumeContentSource { r#type: Some(Type::Snapshot(SnapshotSource { snapshot_id: snapshot.clone() })) });
        request
    };
    let refused = ca.create_volume(from_snapshot(&format!("a-restore-{pid}"))).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "A restored B's snapshot: {refused:?}");
    let restored = cb.create_volume(from_snapshot(&format!("b-restore-{pid}"))).await.unwrap().into_inner().volume.unwrap().volume_id;
    assert_eq!(location_of(&restored).namespace, "team-b");
    assert_eq!(size_of(env, &restored), Some(112 * MIB));
    delete(&mut cb, &restored).await;
    cb.delete_snapshot(DeleteSnapshotRequest { snapshot_id: snapshot.clone(), ..Default::default() }).await.unwrap();

    // Tidy the pool for the tests that follow.
    delete(&mut ca, &a_only).await;
    delete(&mut cb, &b_only).await;
    a.collect_until("A's last volume purged", || size_of(env, &a_only).is_none()).await;
    b.collect_until("B's last volumes and snapshot purged", || size_of(env, &b_only).is_none() && size_of(env, &restored).is_none()).await;
    cli(env, "rbd", &["rm", &format!("rbd/team-b/{foreign}")]).unwrap();
    cli(env, "rbd", &["trash", "rm", &format!("rbd/team-b/{}", kept.unwrap().0)]).unwrap();
}
