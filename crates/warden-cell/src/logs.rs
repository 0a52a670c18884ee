//! The shim's log sink: appends workload output to `output.log` and rotates it to
//! `output.log.1` .. `.N` so a chatty workload can never fill the disk.

use crate::diag::report;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub(crate) struct LogSink {
    path: PathBuf,
    /// `None` after an open failure; reopening is retried on the next write.
    file: Option<File>,
    /// Bytes in the live file, tracked in memory so writes need no extra syscall.
    size: u64,
    max_size: u64,
    max_files: u32,
    /// Only the first failure goes to `shim.err`; a full disk must not flood it.
    reported_error: bool,
}

impl LogSink {
    /// Creates the log's parent directories and opens it for appending.
    pub(crate) fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<LogSink> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let mut sink = LogSink { path: path.to_path_buf(), file: None, size: 0, max_size, max_files, reported_error: false };
        sink.reopen()?;
        Ok(sink)
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        let file = OpenOptions::new().append(true).create(true).mode(0o640).open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotated_name(&self, n: u32) -> PathBuf {
        let mut name = OsString::from(self.path.as_os_str());
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Shifts `.N-1` → `.N` … `.1` → `.2`, live → `.1` (the old `.N` is overwritten), then
    /// starts a fresh live file. With `max_files == 0` the live file is simply discarded.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.max_files == 0 {
            ignore_not_found(std::fs::remove_file(&self.path))?;
        } else {
            for n in (1..self.max_files).rev() {
                ignore_not_found(std::fs::rename(self.rotated_name(n), self.rotated_name(n + 1)))?;
            }
            ignore_not_found(std::fs::rename(&self.path, self.rotated_name(1)))?;
        }
        self.reopen()
    }

    /// Appends `data`, rotating first if it would push the live file past the limit. Never
    /// fails: losing log lines is better than blocking the workload on a full pipe.
    pub(crate) fn write(&mut self, data: &[u8]) {
        if let Err(e) = self.try_write(data) {
            if !self.reported_error {
                self.reported_error = true;
                report(format_args!("log {}: {e}", self.path.display()));
            }
        }
    }

    fn try_write(&mut self, data: &[u8]) -> io::Result<()> {
        let len = data.len() as u64;
        if self.max_size > 0 && self.size > 0 && self.size.saturating_add(len) > self.max_size {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(data)?;
        self.size += len;
        Ok(())
    }
}

fn ignore_not_found(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_at_most_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/output.log");
        let mut sink = LogSink::open(&path, 100, 2).unwrap();
        for i in 0..50 {
            sink.write(format!("line {i:04} ..........\n").as_bytes());
        }
        let mut names: Vec<_> =
            std::fs::read_dir(dir.path().join("sub")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["output.log", "output.log.1", "output.log.2"]);
        for name in &names {
            let len = std::fs::metadata(dir.path().join("sub").join(name)).unwrap().len();
            assert!(len <= 100, "{name} is {len} bytes");
        }
        let live = std::fs::read_to_string(&path).unwrap();
        assert!(live.ends_with("line 0049 ..........\n"));
        let older = std::fs::read_to_string(dir.path().join("sub/output.log.1")).unwrap();
        assert!(live.len() + older.len() > 100, "rotation dropped the newest output");
    }

    #[test]
    fn zero_max_files_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        let mut sink = LogSink::open(&path, 10, 0).unwrap();
        sink.write(b"0123456789");
        sink.write(b"abc");
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
