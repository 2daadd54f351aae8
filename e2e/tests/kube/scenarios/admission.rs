//! Resizes judged before they start: Swell's webhook and the API server in
//! the path of `kubectl patch pvc`, and KEP-1790's way back from a failed grow.

use super::*;

/// An increase beyond what the backend can promise: refused by the webhook
/// with Swell's reason, the claim left as it was.
pub(crate) fn oversize_denied(backend: &Backend, module: &str) {
    let Some((_test, _timer)) = ready(backend, module, "oversize_denied") else { return };
    let (ns, _pv, _id, _uid) = mounted(backend, &format!("{}-oversize", backend.name), "1Gi", false);
    let (room, message) = room_left(&ns, "data");
    assert!(room > 0, "the pool has no room: {message}");
    let spec = ns.get(&["pvc", "data"]).expect("claim");
    assert_eq!(text(&spec, "/spec/resources/requests/storage"), "1Gi", "a denied request changed the claim");
}

/// Asks `claim` for 1 Pi (more than any test pool holds) and returns the room
/// Swell's denial names ("can promise only X more") with the message.
fn room_left(ns: &Namespace, claim: &str) -> (u64, String) {
    let ran = request(ns, claim, "1Pi");
    assert!(!ran.ok, "1Pi was admitted");
    let message = ran.stderr;
    assert!(message.contains("admission webhook \"resize.swell.csi.storage\" denied the request"), "not denied by Swell's webhook: {message}");
    assert!(message.contains("under Swell's capacity policy: request at most"), "not Swell's capacity reason: {message}");
    let room = message.split("can promise only ").nth(1).and_then(|r| r.split(' ').next()).map(bytes).expect("the denial names the room");
    (room, message)
}

/// Two `kubectl patch` at once on a claim at rest: exactly one is admitted,
/// the other denied as "still growing", and the claim ends at the winner's size.
pub(crate) fn racing_patches(backend: &Backend, module: &str) {
    let Some((_test, _timer)) = ready(backend, module, "racing_patches") else { return };
    let (ns, _pv, _id, _uid) = mounted(backend, &format!("{}-race", backend.name), "1Gi", false);
    let (two, three) = std::thread::scope(|s| {
        let two = s.spawn(|| request(&ns, "data", "2Gi"));
        let three = s.spawn(|| request(&ns, "data", "3Gi"));
        (two.join().expect("patch 2Gi"), three.join().expect("patch 3Gi"))
    });
    assert!(two.ok != three.ok, "both or neither admitted: 2Gi {:?}, 3Gi {:?}", two.stderr, three.stderr);
    let (winner, loser) = if two.ok { ("2Gi", three) } else { ("3Gi", two) };
    assert!(
        loser.stderr.contains("denied the request") && loser.stderr.contains("still growing"),
        "the loser was not refused as a resize in flight: {}",
        loser.stderr
    );
    capacity_reaches(&ns, "data", winner, Instant::now(), RESIZE_DEADLINE);
}

/// A request below the claim's capacity never reaches the webhook: the API
/// server refuses it itself.
pub(crate) fn shrink_refused(backend: &Backend, module: &str) {
    let Some((_test, _timer)) = ready(backend, module, "shrink_refused") else { return };
    let (ns, _pv, _id, _uid) = mounted(backend, &format!("{}-shrink", backend.name), "1Gi", false);
    let ran = request(&ns, "data", "512Mi");
    assert!(!ran.ok, "a shrink to 512Mi was admitted");
    assert!(ran.stderr.contains("can not be less than"), "not the API server's refusal: {}", ran.stderr);
    assert!(!ran.stderr.contains("admission webhook"), "the webhook, not the API server, refused it: {}", ran.stderr);
}

/// KEP-1790: two claims grown while no resizer leads, each admitted alone,
/// together more than the pool holds: one fails (ControllerResizeInfeasible);
/// asking more on top is denied, lowering it is admitted and it then grows.
pub(crate) fn infeasible_lowered(backend: &Backend, module: &str) {
    let Some((_test, _timer)) = ready(backend, module, "infeasible_lowered") else { return };
    let meeting = join("kep1790", backend.name);
    let ns = Namespace::new(&format!("{}-kep1790", backend.name));
    let items: Vec<Value> = ["a", "b"].iter().flat_map(|n| [claim(n, backend.class, "1Gi", false, None), pod(n, n, false)]).collect();
    apply(&json!({ "apiVersion": "v1", "kind": "List", "items": items }).with_ns(&ns));
    for n in ["a", "b"] {
        running(&ns, n);
        bound(&ns, n);
    }
    let (room, _) = room_left(&ns, "a");
    // Each alone fits; both together do not.
    let each = GI + (room / 10 * 6) / (1 << 20) * (1 << 20);
    let each_size = format!("{}Mi", each >> 20);
    meeting.together("delete the resizer's leader", || {
        *DELETED.lock().unwrap_or_else(|p| p.into_inner()) = Some(delete_resizer_leader());
    });
    for n in ["a", "b"] {
        let ran = request(&ns, n, &each_size);
        assert!(ran.ok, "claim {n} to {each_size} (room {room}) was refused: {}", ran.stderr);
    }
    let (failed, grew) = wait_for("one claim infeasible, the other growing", RESIZE_DEADLINE, Duration::from_millis(500), |last| {
        let (a, b) = (resize_state(&ns, "a"), resize_state(&ns, "b"));
        *last = format!("a {a}, b {b}");
        match (a.as_str(), b.as_str()) {
            ("ControllerResizeInfeasible", _) => Some(("a", "b")),
            (_, "ControllerResizeInfeasible") => Some(("b", "a")),
            _ => None,
        }
    });
    capacity_reaches(&ns, grew, &each_size, Instant::now(), RESIZE_DEADLINE);
    let more = request(&ns, failed, &format!("{}Mi", (each >> 20) + 1024));
    assert!(!more.ok && more.stderr.contains("cannot be asked for on top of it"), "more on top of a failed grow was not refused by Swell: {}", more.stderr);
    let lowered = request(&ns, failed, "2Gi");
    assert!(lowered.ok, "lowering the failed request to 2Gi (KEP-1790) was refused: {}", lowered.stderr);
    capacity_reaches(&ns, failed, "2Gi", Instant::now(), RESIZE_DEADLINE);
}
