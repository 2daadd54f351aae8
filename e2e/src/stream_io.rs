//! Application I/O running through a volume while it grows: a writer that
//! writes numbered records and fdatasyncs each one, a reader that keeps
//! reading back what is already written, and the final check that every
//! acknowledged record is intact. `swell-io` runs the writer and the reader
//! as processes of their own, as a workload would; the tests start them
//! around NodeExpandVolume and read their reports. The reader checks only
//! records the writer has synced: one being written may read half old, half
//! new on a raw device, which is no error.
//!
//! Record `i` lies at offset `i * RECORD`: its index, a magic number, then
//! pseudo-random bytes seeded by `i`, so a record that is torn, misplaced or
//! stale is told apart from one not written yet (zeros or beyond the end).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use crate::chaos::Xorshift;
use crate::harness::HarnessError;
use crate::process;

/// Bytes per record.
pub const RECORD: usize = 64 << 10;
const MAGIC: u64 = 0x5357_454c_4c49_4f21;

/// What a writer or reader saw.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Records written and synced (writer) or verified (reader).
    pub records: u64,
    /// Failed reads, writes or syncs, with the record they hit.
    pub io_errors: Vec<String>,
    /// Records that read back wrong.
    pub corrupt: Vec<String>,
}

/// The bytes of record `i`.
pub fn record(i: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(RECORD);
    data.extend_from_slice(&i.to_le_bytes());
    data.extend_from_slice(&MAGIC.to_le_bytes());
    data.extend_from_slice(&Xorshift::pattern(i.wrapping_add(1), RECORD - 16));
    data
}

/// `Ok(true)` for record `i` intact, `Ok(false)` for one not written yet
/// (all zeros or short), `Err` for anything else.
pub fn check(i: u64, data: &[u8]) -> Result<bool, String> {
    if data.len() < RECORD || data.iter().all(|b| *b == 0) {
        return Ok(false);
    }
    if data != record(i).as_slice() {
        let index = data.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        return Err(format!("record {i} reads back wrong (it names record {index:?})"));
    }
    Ok(true)
}

fn offset(i: u64) -> u64 {
    i * RECORD as u64
}

/// Writes records `0..limit` to `path` (created if it is not a device),
/// fdatasync after each, until `stop` exists; after each record its count
/// goes to `progress` (read by the test to know the writer is running).
pub fn write_until(path: &Path, stop: &Path, progress: &Path, limit: u64) -> Report {
    let mut report = Report::default();
    let file = match OpenOptions::new().write(true).create(true).truncate(false).open(path) {
        Ok(file) => file,
        Err(e) => {
            report.io_errors.push(format!("open {}: {e}", path.display()));
            return report;
        }
    };
    while report.records < limit && !stop.exists() {
        let i = report.records;
        if let Err(e) = file.write_all_at(&record(i), offset(i)).and_then(|()| file.sync_data()) {
            report.io_errors.push(format!("write record {i}: {e}"));
            break;
        }
        report.records += 1;
        if let Err(e) = publish_progress(progress, report.records) {
            report.io_errors.push(format!("progress file {}: {e}", progress.display()));
            break;
        }
    }
    report
}

/// The count of synced records, replaced whole (write, then rename) so a
/// reader never sees it half written.
fn publish_progress(progress: &Path, records: u64) -> io::Result<()> {
    let partial = progress.with_extension("partial");
    std::fs::write(&partial, records.to_string())?;
    std::fs::rename(&partial, progress)
}

/// The count of records the writer has synced so far (0 before it starts).
pub fn synced(progress: &Path) -> u64 {
    std::fs::read_to_string(progress).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

/// Reads back, pass after pass, every record the writer has synced (as its
/// progress file says: a record being written may be read half old, half
/// new), until `stop` exists; counts the records verified.
pub fn read_until(path: &Path, stop: &Path, progress: &Path) -> Report {
    let mut report = Report::default();
    let mut buf = vec![0u8; RECORD];
    while !stop.exists() {
        let synced = synced(progress);
        if synced == 0 {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) => {
                report.io_errors.push(format!("open {}: {e}", path.display()));
                return report;
            }
        };
        for i in 0..synced {
            match read_record(&file, i, &mut buf).map(|n| check(i, &buf[..n])) {
                Err(e) => {
                    report.io_errors.push(format!("read record {i}: {e}"));
                    return report;
                }
                Ok(Ok(true)) => report.records += 1,
                Ok(Ok(false)) => {
                    report.corrupt.push(format!("synced record {i} reads back as never written"));
                    return report;
                }
                Ok(Err(corrupt)) => {
                    report.corrupt.push(corrupt);
                    return report;
                }
            }
            if stop.exists() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    report
}

fn read_record(file: &File, i: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset(i) + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Checks that records `0..count` of `path` are all intact.
pub fn verify(path: &Path, count: u64) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut buf = vec![0u8; RECORD];
    for i in 0..count {
        let n = read_record(&file, i, &mut buf).map_err(|e| format!("read record {i}: {e}"))?;
        if !check(i, &buf[..n])? {
            return Err(format!("acknowledged record {i} is missing"));
        }
    }
    Ok(())
}

/// A writer and a reader running as `swell-io` processes over one path.
pub struct Streams {
    writer: Child,
    reader: Child,
    stop: std::path::PathBuf,
    progress: std::path::PathBuf,
}

impl Streams {
    /// Starts both on `path` (at most `limit` records); their stop and
    /// progress files go in `work_dir`.
    pub fn start(path: &Path, work_dir: &Path, limit: u64) -> Result<Self, HarnessError> {
        let binary = process::built_binary("swell-io")?;
        let (stop, progress) = (work_dir.join("swell-io.stop"), work_dir.join("swell-io.progress"));
        let _ = std::fs::remove_file(&stop);
        let _ = std::fs::remove_file(&progress);
        let spawn = |args: Vec<std::ffi::OsString>| {
            Command::new(&binary)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| HarnessError::Process(format!("spawn {}: {e}", binary.display())))
        };
        let writer = spawn(vec!["write".into(), path.into(), stop.clone().into(), progress.clone().into(), limit.to_string().into()])?;
        let reader = spawn(vec!["read".into(), path.into(), stop.clone().into(), progress.clone().into()])?;
        Ok(Streams { writer, reader, stop, progress })
    }

    /// Records the writer has synced so far.
    pub fn written(&self) -> u64 {
        synced(&self.progress)
    }

    /// Waits until the writer has synced `records`; `false` after `deadline`.
    pub async fn wait_for(&self, records: u64, deadline: Duration) -> bool {
        let started = std::time::Instant::now();
        while self.written() < records {
            if started.elapsed() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops both and checks what they saw: no I/O error, nothing read back
    /// wrong, something read back, every synced record of `path` intact.
    /// Returns the reports (writer, reader).
    pub async fn finish(self, path: &Path) -> Result<(Report, Report), String> {
        let (writer, reader) = self.stop().await?;
        if !writer.io_errors.is_empty() || !reader.io_errors.is_empty() || !reader.corrupt.is_empty() {
            return Err(format!("errors under the workload: writer {writer:?}, reader {reader:?}"));
        }
        if reader.records == 0 {
            return Err("the reader read nothing back".into());
        }
        verify(path, writer.records)?;
        Ok((writer, reader))
    }

    /// Stops both and returns their reports: (writer, reader).
    pub async fn stop(self) -> Result<(Report, Report), String> {
        std::fs::write(&self.stop, "").map_err(|e| format!("create {}: {e}", self.stop.display()))?;
        let collect = |child: Child| async move {
            let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.map_err(|_| "swell-io did not stop".to_owned())?;
            let out = out.map_err(|e| e.to_string())?;
            serde_json::from_slice::<Report>(&out.stdout).map_err(|e| format!("swell-io report ({}): {e}", out.status))
        };
        Ok((collect(self.writer).await?, collect(self.reader).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_tell_written_unwritten_and_wrong_apart() {
        assert_eq!(record(3).len(), RECORD);
        assert_eq!(check(3, &record(3)), Ok(true));
        assert_eq!(check(3, &vec![0; RECORD]), Ok(false), "zeros: not written yet");
        assert_eq!(check(3, &record(3)[..100]), Ok(false), "short: beyond the end");
        assert!(check(3, &record(4)).is_err(), "another record's bytes");
        let mut torn = record(3);
        torn[RECORD - 1] ^= 1;
        assert!(check(3, &torn).is_err(), "a torn record");
    }

    #[test]
    fn a_writer_and_reader_round_trip_through_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (data, stop, progress) = (dir.path().join("data"), dir.path().join("stop"), dir.path().join("progress"));
        let written = write_until(&data, &stop, &progress, 5);
        assert_eq!(written, Report { records: 5, ..Default::default() });
        assert_eq!(std::fs::read_to_string(&progress).expect("progress"), "5");
        verify(&data, 5).expect("intact");
        assert!(verify(&data, 6).is_err(), "a record never written is missing");
        std::fs::write(&stop, "").expect("stop");
        assert_eq!(read_until(&data, &stop, &progress).records, 0, "stopped before its first pass");
    }
}
