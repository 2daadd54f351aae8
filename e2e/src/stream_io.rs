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
//!
//! A [`Span`] lets the writer start near the volume's old end and wait there
//! (at its gate) until the test has grown the volume, so the records after
//! the gate land in the grown space. The final check reads with O_DIRECT:
//! from the device, not from the page cache the writer filled.

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

/// The records a writer writes: `first..limit`, waiting before record
/// `gate` until the gate file exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The first record written.
    pub first: u64,
    /// The first record written only once the gate file exists.
    pub gate: u64,
    /// One past the last record written.
    pub limit: u64,
}

impl Span {
    /// Records `0..limit`, no gate.
    pub fn to(limit: u64) -> Self {
        Span { first: 0, gate: limit, limit }
    }
}

/// The gate file of a writer whose progress file is `progress`.
pub fn gate_file(progress: &Path) -> std::path::PathBuf {
    progress.with_extension("gate")
}

/// Writes records `0..limit` to `path` (created if it is not a device),
/// fdatasync after each, until `stop` exists; after each record its count
/// goes to `progress` (read by the test to know the writer is running).
pub fn write_until(path: &Path, stop: &Path, progress: &Path, limit: u64) -> Report {
    write_span(path, stop, progress, Span::to(limit))
}

/// Like [`write_until`] over `span`; `progress` counts the records from
/// `span.first`. Before record `span.gate` it waits for [`gate_file`].
pub fn write_span(path: &Path, stop: &Path, progress: &Path, span: Span) -> Report {
    let mut report = Report::default();
    let file = match OpenOptions::new().write(true).create(true).truncate(false).open(path) {
        Ok(file) => file,
        Err(e) => {
            report.io_errors.push(format!("open {}: {e}", path.display()));
            return report;
        }
    };
    while span.first + report.records < span.limit && !stop.exists() {
        let i = span.first + report.records;
        if i >= span.gate && !gate_file(progress).exists() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
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
/// new), from record `first`, until `stop` exists; counts the records verified.
pub fn read_until(path: &Path, stop: &Path, progress: &Path, first: u64) -> Report {
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
        for i in first..first + synced {
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

/// Checks that records `0..count` of `path` are all intact, read from the
/// device (O_DIRECT), not from the page cache.
pub fn verify(path: &Path, count: u64) -> Result<(), String> {
    verify_from(path, 0, count)
}

/// Like [`verify`] for records `first..first + count`.
pub fn verify_from(path: &Path, first: u64, count: u64) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
        .map_err(|e| format!("open {} with O_DIRECT: {e}", path.display()))?;
    // O_DIRECT wants the buffer aligned to the logical block size (4 KiB covers it).
    const ALIGN: usize = 4096;
    let mut backing = vec![0u8; RECORD + ALIGN];
    let start = backing.as_ptr().align_offset(ALIGN);
    let buf = &mut backing[start..start + RECORD];
    for i in first..first + count {
        let n = read_record(&file, i, buf).map_err(|e| format!("read record {i}: {e}"))?;
        if !check(i, &buf[..n])? {
            return Err(format!("acknowledged record {i} is missing"));
        }
    }
    Ok(())
}

/// Bytes a filesystem holding `path` can still give.
pub fn room(path: &Path) -> Result<u64, String> {
    let stats = nix::sys::statvfs::statvfs(path).map_err(|e| format!("statvfs {}: {e}", path.display()))?;
    Ok(stats.blocks_available() as u64 * stats.fragment_size() as u64)
}

/// Fills the filesystem holding `dir` with one allocated file until about
/// `leave` bytes are left; returns the room left.
pub fn fill_leaving(dir: &Path, leave: u64) -> Result<u64, String> {
    let filler = dir.join("filler");
    let file = File::create(&filler).map_err(|e| format!("create {}: {e}", filler.display()))?;
    let size = room(dir)?.saturating_sub(leave);
    let size = i64::try_from(size).map_err(|e| e.to_string())?;
    nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, size).map_err(|e| format!("fallocate {size} bytes: {e}"))?;
    file.sync_all().map_err(|e| e.to_string())?;
    room(dir)
}

/// A writer and a reader running as `swell-io` processes over one path.
pub struct Streams {
    writer: Child,
    reader: Child,
    stop: std::path::PathBuf,
    progress: std::path::PathBuf,
    span: Span,
}

impl Streams {
    /// Starts both on `path` (the writer over `span`); their stop, progress
    /// and gate files go in `work_dir`.
    pub fn start(path: &Path, work_dir: &Path, span: Span) -> Result<Self, HarnessError> {
        let binary = process::built_binary("swell-io")?;
        let (stop, progress) = (work_dir.join("swell-io.stop"), work_dir.join("swell-io.progress"));
        let _ = std::fs::remove_file(&stop);
        let _ = std::fs::remove_file(&progress);
        let _ = std::fs::remove_file(gate_file(&progress));
        let spawn = |args: Vec<std::ffi::OsString>| {
            Command::new(&binary)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| HarnessError::Process(format!("spawn {}: {e}", binary.display())))
        };
        let numbers = |n: &[u64]| n.iter().map(|n| n.to_string().into()).collect::<Vec<std::ffi::OsString>>();
        let mut write = vec!["write".into(), path.into(), stop.clone().into(), progress.clone().into()];
        write.extend(numbers(&[span.limit, span.first, span.gate]));
        let writer = spawn(write)?;
        let mut read = vec!["read".into(), path.into(), stop.clone().into(), progress.clone().into()];
        read.extend(numbers(&[span.first]));
        let reader = spawn(read)?;
        Ok(Streams { writer, reader, stop, progress, span })
    }

    /// Records the writer has synced so far.
    pub fn written(&self) -> u64 {
        synced(&self.progress)
    }

    /// Lets the writer go past its gate.
    pub fn open_gate(&self) -> Result<(), String> {
        std::fs::write(gate_file(&self.progress), "").map_err(|e| format!("create the gate file: {e}"))
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
        let first = self.span.first;
        let (writer, reader) = self.stop().await?;
        if !writer.io_errors.is_empty() || !reader.io_errors.is_empty() || !reader.corrupt.is_empty() {
            return Err(format!("errors under the workload: writer {writer:?}, reader {reader:?}"));
        }
        if reader.records == 0 {
            return Err("the reader read nothing back".into());
        }
        verify_from(path, first, writer.records)?;
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
        assert_eq!(read_until(&data, &stop, &progress, 0).records, 0, "stopped before its first pass");
    }

    #[test]
    fn a_writer_waits_at_its_gate_until_the_gate_file_exists() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (data, stop, progress) = (dir.path().join("data"), dir.path().join("stop"), dir.path().join("progress"));
        let span = Span { first: 10, gate: 13, limit: 16 };
        let writer = std::thread::spawn({
            let (data, stop, progress) = (data.clone(), stop.clone(), progress.clone());
            move || write_span(&data, &stop, &progress, span)
        });
        while synced(&progress) < 3 {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(std::fs::metadata(&data).expect("data").len(), 13 * RECORD as u64, "nothing past the gate while it is shut");
        std::fs::write(gate_file(&progress), "").expect("gate");
        assert_eq!(writer.join().expect("writer").records, 6);
        verify_from(&data, 10, 6).expect("records 10..16 intact");
        assert!(verify(&data, 1).is_err(), "record 0 was never written");
    }
}
