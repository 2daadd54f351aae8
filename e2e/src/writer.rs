//! A writer that streams through an operation and proves afterwards what it
//! wrote: it overwrites a ring of 4 KiB records in one file, each stamped
//! with its sequence number and filled from it, and fsyncs after every
//! record. Every write and fsync error is counted; once stopped, every slot
//! must hold exactly the last record acknowledged for it, read back from
//! the device (the page cache is dropped first).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::chaos::Xorshift;

const RECORD: usize = 4096;
/// 1024 records: a 4 MiB file.
const SLOTS: u64 = 1024;

/// A writer running on its own thread.
pub struct StreamingWriter {
    path: PathBuf,
    seed: u64,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    thread: JoinHandle<Written>,
}

/// What a stopped writer wrote.
#[derive(Debug)]
pub struct Written {
    /// Records written and fsynced.
    pub records: u64,
    /// Write or fsync errors, with the first few messages.
    pub errors: Vec<String>,
    /// The last acknowledged sequence number of each slot.
    last: Vec<Option<u64>>,
}

/// Record `seq`: its number, then bytes only it has.
fn record(seed: u64, seq: u64) -> Vec<u8> {
    let mut out = seq.to_le_bytes().to_vec();
    out.extend(Xorshift::pattern(seed ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15), RECORD - 8));
    out
}

impl StreamingWriter {
    /// Starts writing to `path` (created), one record every `pause`.
    pub fn start(path: &Path, seed: u64, pause: Duration) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path)?;
        let (stop, errors) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (stopping, failing) = (stop.clone(), errors.clone());
        let thread = std::thread::spawn(move || write_until_stopped(file, seed, pause, &stopping, &failing));
        Ok(StreamingWriter { path: path.to_owned(), seed, stop, errors, thread })
    }

    /// Write or fsync errors so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::SeqCst)
    }

    /// Stops the writer and checks every slot against what was acknowledged.
    pub fn stop_and_verify(self) -> Result<Written, String> {
        self.stop.store(true, Ordering::SeqCst);
        let written = self.thread.join().map_err(|_| "the writer thread panicked".to_owned())?;
        if !written.errors.is_empty() {
            return Err(format!("{}: {} I/O errors while writing, e.g. {:?}", self.path.display(), written.errors.len(), written.errors));
        }
        verify(&self.path, self.seed, &written.last)?;
        Ok(written)
    }
}

fn write_until_stopped(mut file: File, seed: u64, pause: Duration, stop: &AtomicBool, errors: &AtomicU64) -> Written {
    let mut written = Written { records: 0, errors: Vec::new(), last: vec![None; SLOTS as usize] };
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let slot = seq % SLOTS;
        let done = file.seek(SeekFrom::Start(slot * RECORD as u64)).and_then(|_| file.write_all(&record(seed, seq))).and_then(|_| file.sync_data());
        match done {
            Ok(()) => {
                written.last[slot as usize] = Some(seq);
                written.records += 1;
            }
            Err(e) => {
                errors.fetch_add(1, Ordering::SeqCst);
                if written.errors.len() < 5 {
                    written.errors.push(format!("record {seq}: {e}"));
                }
            }
        }
        seq += 1;
        std::thread::sleep(pause);
    }
    written
}

fn verify(path: &Path, seed: u64, last: &[Option<u64>]) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    // Read what the device holds, not what the page cache kept.
    nix::fcntl::posix_fadvise(file.as_fd(), 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .map_err(|e| format!("drop cached pages of {}: {e}", path.display()))?;
    let mut bad = Vec::new();
    let mut buf = vec![0u8; RECORD];
    for (slot, seq) in last.iter().enumerate() {
        let Some(seq) = seq else { continue };
        file.seek(SeekFrom::Start(slot as u64 * RECORD as u64)).and_then(|_| file.read_exact(&mut buf)).map_err(|e| format!("read slot {slot}: {e}"))?;
        if buf != record(seed, *seq) {
            let found = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
            bad.push(format!("slot {slot}: want record {seq}, found {found}"));
        }
    }
    match bad.len() {
        0 => Ok(()),
        n => Err(format!("{}: {n} acknowledged records lost or damaged, e.g. {:?}", path.display(), &bad[..n.min(5)])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_finds_a_damaged_record_and_a_lost_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream.bin");
        let writer = StreamingWriter::start(&path, 7, Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let written = writer.stop_and_verify().unwrap();
        assert!(written.records > 2, "{written:?}");

        let mut file = OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(100)).and_then(|_| file.write_all(b"bit rot")).unwrap();
        let err = verify(&path, 7, &written.last).unwrap_err();
        assert!(err.contains("slot 0"), "{err}");

        // An older record where the last acknowledged one should be.
        file.seek(SeekFrom::Start(0)).and_then(|_| file.write_all(&record(7, 0))).unwrap();
        let mut ahead = written.last.clone();
        ahead[0] = Some(SLOTS);
        assert!(verify(&path, 7, &ahead).unwrap_err().contains("want record 1024, found 0"));
    }
}
