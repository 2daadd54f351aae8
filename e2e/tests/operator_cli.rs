//! `swell`, the operator's CLI, over the local backend's state (the
//! scenario is `swell_e2e::operator`; `rbd_operator` runs it on Ceph).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swell_shows_every_expansion_on_the_local_backend() {
    swell_e2e::operator::swell_shows_every_expansion(&swell_e2e::never_stuck::Local).await;
}
