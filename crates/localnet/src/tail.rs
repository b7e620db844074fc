//! Following the nodes' `--events` files as they grow.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::history::EventLine;

/// One events file, read from where the last read stopped. A line still being written is kept
/// until its newline arrives.
pub struct EventFile {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// Lines that did not parse (a newer binary's events, or a torn write after a crash).
    pub skipped: u64,
}

impl EventFile {
    pub fn new(path: PathBuf) -> EventFile {
        EventFile {
            path,
            offset: 0,
            partial: Vec::new(),
            skipped: 0,
        }
    }

    /// The complete lines appended since the last call. A missing file has none yet.
    pub fn read_new(&mut self) -> std::io::Result<Vec<EventLine>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh)?;
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        let mut lines = Vec::new();
        for text in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<EventLine>(text) {
                Ok(line) => lines.push(line),
                Err(_) => self.skipped += 1,
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    const LINE: &str =
        r#"{"node":"miner-m1","at_ms":7,"event":{"event":"skipped","window":3,"reason":"x"}}"#;

    #[test]
    fn lines_arrive_once_and_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut events = EventFile::new(path.clone());
        assert!(events.read_new().unwrap().is_empty());
        let mut file = std::fs::File::create(&path).unwrap();
        write!(file, "{LINE}\n{}", &LINE[..20]).unwrap();
        assert_eq!(events.read_new().unwrap().len(), 1);
        assert!(events.read_new().unwrap().is_empty());
        writeln!(file, "{}", &LINE[20..]).unwrap();
        writeln!(file, "not json").unwrap();
        assert_eq!(events.read_new().unwrap().len(), 1);
        assert_eq!(events.skipped, 1);
    }
}
