//! A Ceph pool is shared with other tools and other installs: an image
//! whose name has Swell's shape (`swell-<32 hex>`) proves nothing. On a real
//! cluster: DeleteVolume of an id naming an image Swell has no entry for
//! answers OK and leaves the image where it is (and no lock object), an
//! expansion of it is NOT_FOUND, and the background purge
//! removes only what Swell moved to the trash itself, never another
//! client's trashed image of the same shape.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use swell_e2e::never_stuck::{InProcess, create, delete, expand};
use swell_e2e::rbd_rig::{self, CLUSTER_ID, ClusterEnv, Rbd, cli, location_of, rbd_size};
use swell_storage::RbdVolume;
use swell_storage::rbd_volume::image_name;
use swell_storage::units::MIB;

/// The RBD ids of the trashed images of pool `rbd`, by the name they had.
fn trash(env: &ClusterEnv) -> Vec<(String, String)> {
    let listed = cli(env, "rbd", &["trash", "ls", "rbd"]).unwrap();
    listed.lines().filter_map(|l| l.split_once(' ')).map(|(id, name)| (id.to_owned(), name.trim().to_owned())).collect()
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
