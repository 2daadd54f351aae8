//! Fencing the Ceph client of a previous controller instance.
//!
//! A controller that dies without closing its images (SIGKILL, OOM, node
//! loss) leaves its watches on their header objects, and on images with the
//! exclusive-lock feature a lock owned by a dead client. The OSD drops them
//! only when the watch times out (`osd_client_watch_timeout`, 30 s), and until
//! then `rbd_remove` answers EBUSY and a resize of a locked image waits.
//!
//! So every connection records this client's address (`rados_getaddrs`) in
//! the controller's state directory, and a new controller process, on its
//! first connection, blocklists the addresses a previous instance recorded
//! (`osd blocklist add`, allowed by `mon 'profile rbd'`): the OSDs then drop
//! the dead client's watches and locks at once. Only the addresses found at
//! the first connection are fenced, never ones recorded later, so two live
//! processes (which should not share a state directory anyway) cannot take
//! turns fencing each other.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use swell_storage::durable;

use super::connection::Connection;

/// Whether a new controller blocklists the previous instance's client.
/// Off: measured on Ceph 16.2.15 (rbd_never_stuck chaos, 100 kills), a
/// blocklisted dead client's watch was *not* dropped at once, and some (3 of
/// ~30) then never expired at all (still listed by `rbd status` 9 minutes
/// later; `rbd_remove` answered EBUSY throughout), while unfenced dead
/// watches expire after ~30 s. Addresses are still recorded, so this can be
/// turned on where the OSDs drop blocklisted watchers.
pub const FENCE_PREVIOUS_INSTANCE: bool = false;

/// How long a fenced address stays blocklisted. A client address carries a
/// random nonce, so it is never reused; the entry only has to outlive any
/// op the dead client still had queued.
pub const BLOCKLIST_EXPIRE: Duration = Duration::from_secs(3600);
/// Addresses kept in the record at most (a process records each of its
/// connections; reconnects are rare).
const KEEP: usize = 16;

/// The record file: the addresses of this controller's Ceph clients.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    client_addrs: Vec<String>,
}

/// `{"prefix":"osd blocklist","blocklistop":"add","addr":..,"expire":..}`,
/// as librados's own `rados_blocklist_add` sends it (Ceph ≥ 15.2.5; `expire`
/// is a CephFloat of seconds).
pub fn blocklist_command(addr: &str, expire: Duration) -> String {
    serde_json::json!({
        "prefix": "osd blocklist",
        "blocklistop": "add",
        "addr": addr,
        "expire": expire.as_secs_f64(),
    })
    .to_string()
}

/// The addresses in `rados_getaddrs` output: one address, or a list
/// `[v2:…,v1:…]` when the client has several.
pub fn split_addrs(raw: &str) -> Vec<String> {
    raw.trim().trim_start_matches('[').trim_end_matches(']').split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect()
}

/// Whether `addr` names one client (`[type:]ip:port/nonce`, nonce > 0).
/// Anything else is never blocklisted: an address without a nonce (or with
/// nonce 0) would fence every client on that IP, this controller included.
pub fn is_one_client(addr: &str) -> bool {
    let Some((host, nonce)) = addr.rsplit_once('/') else { return false };
    !host.is_empty() && host.contains(':') && !host.chars().any(char::is_whitespace) && nonce.parse::<u64>().is_ok_and(|n| n > 0)
}

/// Failures after which the next connection should try again.
fn transient(errno: i32) -> bool {
    matches!(
        Errno::from_raw(errno),
        Errno::ETIMEDOUT | Errno::EAGAIN | Errno::ENOTCONN | Errno::ESHUTDOWN | Errno::ECONNREFUSED | Errno::ECONNRESET | Errno::EINTR
    )
}

/// The record after this connection: what was on file, minus what is done
/// with, plus this connection's addresses, the newest last, at most [`KEEP`].
fn merged(on_file: Vec<String>, done: &[String], own: &[String]) -> Vec<String> {
    let mut addrs: Vec<String> = on_file.into_iter().filter(|a| !done.contains(a) && !own.contains(a)).collect();
    addrs.extend(own.iter().cloned());
    let excess = addrs.len().saturating_sub(KEEP);
    addrs.drain(..excess);
    addrs
}

/// Records this process's client addresses and fences a previous instance's.
#[derive(Debug)]
pub struct Fence {
    path: PathBuf,
    /// The previous instance's addresses still to fence; `None` until the
    /// first connection has read the record.
    pending: Mutex<Option<Vec<String>>>,
}

impl Fence {
    /// A fence keeping its record at `path`.
    pub fn new(path: PathBuf) -> Self {
        Fence { path, pending: Mutex::new(None) }
    }

    fn read(&self) -> Vec<String> {
        match durable::read_json::<Record>(&self.path) {
            Ok(record) => record.unwrap_or_default().client_addrs,
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = %err, "unreadable Ceph client record; starting a new one");
                Vec::new()
            }
        }
    }

    fn write(&self, addrs: Vec<String>) {
        let record = Record { client_addrs: addrs };
        let dir = self.path.parent().unwrap_or(&self.path);
        if let Err(err) = std::fs::create_dir_all(dir).and_then(|()| durable::write_json(&self.path, &record)) {
            tracing::warn!(path = %self.path.display(), error = %err, "cannot record this Ceph client's address; a restart will not fence it");
        }
    }

    /// Runs on every new connection before any call uses it: records its
    /// address, so that even if this process is killed during its very
    /// first call, the next instance knows which client to fence. The first
    /// time, also notes what a previous instance recorded. Returns this
    /// connection's addresses for [`fence_previous`](Self::fence_previous).
    pub fn record(&self, conn: &Connection) -> Vec<String> {
        let own = match conn.addrs() {
            Ok(raw) => split_addrs(&raw),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read this Ceph client's address; it will not be recorded for fencing");
                return Vec::new();
            }
        };
        let on_file = self.read();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.get_or_insert_with(|| on_file.iter().filter(|a| !own.contains(a)).cloned().collect());
        self.write(merged(on_file, &[], &own));
        own
    }

    /// Blocklists what the previous instance recorded (the first time, and
    /// again after a transient failure), then drops it from the record.
    /// Failures are logged, never returned: fencing only shortens a wait.
    /// Runs beside the connection's first calls, which need not wait for it.
    pub fn fence_previous(&self, conn: &Connection, own: &[String]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(previous) = pending.as_mut().filter(|p| !p.is_empty()) else { return };
        let mut done = Vec::new();
        let mut fenced = 0;
        for addr in previous.iter().filter(|a| !own.contains(a)) {
            if !is_one_client(addr) {
                tracing::warn!(addr, "not fencing a recorded Ceph client address that does not name one client");
                done.push(addr.clone());
                continue;
            }
            match conn.mon_command_raw(&blocklist_command(addr, BLOCKLIST_EXPIRE)) {
                Ok(_) => {
                    tracing::info!(addr, expire = ?BLOCKLIST_EXPIRE, "blocklisted the Ceph client of a previous controller instance: its watches and locks are released now");
                    fenced += 1;
                    done.push(addr.clone());
                }
                Err((errno, status)) if transient(errno) => {
                    tracing::warn!(addr, errno, status, "could not blocklist the previous controller's Ceph client; trying again with the next connection");
                    break;
                }
                Err((errno, status)) => {
                    tracing::warn!(
                        addr,
                        errno,
                        status,
                        "could not blocklist the previous controller's Ceph client (does the user have mon 'profile rbd'?); \
                         its watches expire on their own (osd_client_watch_timeout)"
                    );
                    done.push(addr.clone());
                }
            }
        }
        previous.retain(|a| !done.contains(a));
        if fenced > 0
            && let Err(errno) = conn.wait_for_latest_osdmap()
        {
            tracing::warn!(errno, "waiting for the OSD map with the blocklist entry failed");
        }
        if !done.is_empty() {
            self.write(merged(self.read(), &done, own));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blocklist_command_is_what_the_monitor_expects() {
        let cmd: serde_json::Value = serde_json::from_str(&blocklist_command("127.0.0.1:0/3710147553", BLOCKLIST_EXPIRE)).unwrap();
        assert_eq!(cmd, serde_json::json!({"prefix":"osd blocklist","blocklistop":"add","addr":"127.0.0.1:0/3710147553","expire":3600.0}));
    }

    #[test]
    fn only_addresses_of_one_client_are_fenced() {
        for ok in ["127.0.0.1:0/3710147553", "v2:10.0.0.5:0/1", "[fd00::1]:0/42"] {
            assert!(is_one_client(ok), "{ok}");
        }
        for bad in ["127.0.0.1:0/0", "127.0.0.1", "127.0.0.1:0", "/12", "127.0.0.1:0/x", "127.0.0.1 :0/5", ""] {
            assert!(!is_one_client(bad), "{bad}");
        }
    }

    #[test]
    fn getaddrs_output_is_split_into_addresses() {
        assert_eq!(split_addrs("127.0.0.1:0/12\n"), vec!["127.0.0.1:0/12"]);
        assert_eq!(split_addrs("[v2:1.2.3.4:0/9,v1:1.2.3.4:0/9]"), vec!["v2:1.2.3.4:0/9", "v1:1.2.3.4:0/9"]);
        assert!(split_addrs("").is_empty());
    }

    #[test]
    fn the_record_drops_what_was_fenced_and_keeps_the_newest() {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(merged(s(&["a", "b"]), &s(&["a"]), &s(&["c"])), s(&["b", "c"]));
        assert_eq!(merged(s(&["c"]), &[], &s(&["c"])), s(&["c"]), "no duplicates");
        let many: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        let kept = merged(many, &[], &s(&["new"]));
        assert_eq!(kept.len(), KEEP);
        assert_eq!(kept.last().map(String::as_str), Some("new"));
    }

    #[test]
    fn transient_failures_are_retried_permanent_ones_are_not() {
        assert!(transient(Errno::ETIMEDOUT as i32));
        assert!(!transient(Errno::EACCES as i32));
        assert!(!transient(Errno::EINVAL as i32));
    }
}
