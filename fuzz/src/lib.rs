//! Fuzz targets over every input Swell takes from outside its process. Each
//! target takes arbitrary bytes, runs Swell's own code on them and panics
//! only when a property fails: no code path may panic, and an input that is
//! refused is refused with a precise answer (a named CSI status code, an
//! error of the documented kind). e2e/fuzz.sh runs them under libFuzzer
//! (src/bin/swell-fuzz.rs); tests/corpus.rs runs the checked-in corpus and
//! the inputs that once failed through them in every `cargo test`.

mod controller;
mod grpc;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use csi_endpoint::authority::AuthorityFix;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use swell_storage::rbd_volume::RbdVolume;
use swell_storage::{SnapshotId, VolumeId};
use tokio::io::{AsyncRead, ReadBuf};
use tonic::Code;

pub use controller::remove_scratch;

use crate::grpc::{precise, request};

/// One fuzz target: its name (a directory under fuzz/corpus/) and its check.
#[derive(Clone, Copy)]
pub struct Target {
    /// The name e2e/fuzz.sh and the corpus use.
    pub name: &'static str,
    /// Runs one input; panics when a property fails.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target { name: "csi_controller", run: controller::csi_controller },
    Target { name: "csi_node", run: csi_node },
    Target { name: "admission_review", run: admission_review },
    Target { name: "quantity", run: quantity },
    Target { name: "mountinfo", run: mountinfo },
    Target { name: "authority", run: authority },
    Target { name: "rbd_state", run: rbd_state },
    Target { name: "ids", run: ids },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|t| t.name == name).copied()
}

/// The node's request checks of every RPC that takes input (the first byte
/// picks the RPC, the rest is its protobuf message): a request is accepted,
/// or refused with INVALID_ARGUMENT naming a field, or NOT_FOUND for an id
/// that cannot name a volume.
fn csi_node(data: &[u8]) {
    use swell_node::fuzzing::{NodeRequest, check};
    let Some((&rpc, bytes)) = data.split_first() else { return };
    let request = match rpc % 6 {
        0 => request(bytes).map(NodeRequest::Stage),
        1 => request(bytes).map(NodeRequest::Unstage),
        2 => request(bytes).map(NodeRequest::Publish),
        3 => request(bytes).map(NodeRequest::Unpublish),
        4 => request(bytes).map(NodeRequest::Stats),
        _ => request(bytes).map(NodeRequest::Expand),
    };
    if let Some(request) = request {
        precise(&request, check(&request), &[Code::InvalidArgument, Code::NotFound]);
    }
}

/// The webhook's AdmissionReview decoding, then the reading of the claim's
/// size change and the response: a body decodes or is refused with a reason;
/// a decoded review always gets a response.
fn admission_review(data: &[u8]) {
    match swell_webhook::decode(data) {
        Ok(review) => {
            if let Some((old, new)) = &review.update {
                let _ = swell_webhook::read_update(old, new, "swell.csi.storage");
            }
            let verdict = swell_webhook::Verdict::Allow { warning: None };
            assert!(swell_webhook::respond(&review.request, &verdict).is_ok(), "a decoded review got no response");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// The quantity parser: a quantity it accepts is a byte count that formats
/// to a quantity parsing back to the same count.
fn quantity(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(bytes) = swell_k8s::quantity::bytes(&Quantity(text.to_owned())) {
        let again = swell_k8s::quantity::format(bytes);
        assert_eq!(swell_k8s::quantity::bytes(&Quantity(again.clone())).ok(), Some(bytes), "{text:?} read as {bytes}, formatted as {again:?}");
    }
}

/// The mountinfo parser: never more entries than lines, and every entry is
/// mounted at an absolute path.
fn mountinfo(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let entries = swell_node::mountinfo::parse(&text);
    assert!(entries.len() <= text.lines().count());
    for entry in &entries {
        assert!(entry.mount_point.is_absolute(), "{entry:?} is not mounted at an absolute path");
    }
}

/// Hands out the client's bytes in reads of a fixed size, as a socket might.
struct Chunked<'a> {
    rest: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.rest.len()).min(buf.remaining());
        buf.put_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Poll::Ready(Ok(()))
    }
}

/// The `:authority` shim's frame parser over a client's byte stream (the
/// first byte sets the read size): it passes bytes on or refuses the
/// connection with InvalidData, and never waits on a stream that has ended.
fn authority(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let mut shim = AuthorityFix::new(Chunked { rest: stream, chunk: usize::from(chunk).max(1) });
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = vec![0; 4096];
    loop {
        let mut buf = ReadBuf::new(&mut out);
        match Pin::new(&mut shim).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return,
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                return;
            }
            Poll::Pending => panic!("the shim waited on a stream that is always ready"),
        }
    }
}

/// The RBD state object's entries (the first byte picks a volume's, a
/// snapshot's or the promised total): an entry decodes, or is refused as
/// corrupt naming it; a decoded entry stores as what decodes to the same.
fn rbd_state(data: &[u8]) {
    let Some((&kind, raw)) = data.split_first() else { return };
    match kind % 3 {
        2 => {
            if let Err(e) = swell_rbd::fuzzing::total(raw) {
                assert!(e.contains("promised total"), "{e}");
            }
        }
        kind => {
            let snapshot = kind == 1;
            match swell_rbd::fuzzing::entry(snapshot, "fuzz", raw) {
                Ok(stored) => {
                    let again = swell_rbd::fuzzing::entry(snapshot, "fuzz", &stored);
                    assert_eq!(again.as_ref(), Ok(&stored), "an entry stored as what does not read back the same");
                }
                Err(e) => assert!(e.contains("fuzz"), "the refusal names no entry: {e}"),
            }
        }
    }
}

/// The volume and snapshot id parsers: an id that parses prints as the text
/// it came from, and an RBD volume id names its parts exactly.
fn ids(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = text.parse::<VolumeId>() {
        assert_eq!(id.to_string(), text);
        if let Some(rbd) = RbdVolume::parse(&id) {
            assert_eq!(rbd.id(), id);
        }
    }
    if let Ok(snapshot) = text.parse::<SnapshotId>() {
        assert_eq!(snapshot.to_string(), text);
        let place = snapshot.place();
        assert_eq!(SnapshotId::new(snapshot.backend(), place, snapshot.key()).ok().as_ref(), Some(&snapshot));
    }
}
