//! Reading a build's log file for catch-up, and turning its lines into `lines` frames.
//!
//! Each line of `log.jsonl` is a log line's JSON exactly as the worker encoded it, which is
//! also how it appears inside a published `lines` message. So a catch-up sends the stored
//! text on unchanged and reads only each line's numbers: decoding every line (timestamp
//! included) and encoding it again for every watcher was most of the gateway's CPU when
//! many watchers joined a chatty build at once.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytestring::ByteString;

use crate::hub::LightLine;

/// Most bytes read from the log file per catch-up; a longer backlog takes several rounds.
const READ_CHUNK: u64 = 4 * 1024 * 1024;

/// Where a watcher is in a build's log file.
pub(crate) struct Cursor {
    path: Option<PathBuf>,
    offset: u64,
}

/// Complete lines read from the log file, in file order.
#[derive(Default)]
pub(crate) struct Chunk {
    buf: String,
    lines: Vec<(LightLine, Range<usize>)>,
}

impl Chunk {
    pub(crate) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Each line's numbers and its JSON text as stored.
    pub(crate) fn lines(&self) -> impl Iterator<Item = (LightLine, &str)> {
        self.lines.iter().map(|(l, r)| (*l, &self.buf[r.clone()]))
    }
}

impl Cursor {
    /// A cursor at the start of the file; `None` when the build has no storage path.
    pub(crate) fn new(path: Option<PathBuf>) -> Self {
        Cursor { path, offset: 0 }
    }

    /// The complete lines written since the last read (a line still being written waits
    /// for the next read). A line that is not a log line's JSON is skipped; a file that
    /// cannot be read reads as nothing new, and the watcher tries again on its next poll.
    pub(crate) async fn read(&mut self) -> Chunk {
        let Some(path) = self.path.clone() else {
            return Chunk::default();
        };
        let offset = self.offset;
        // One trip to the blocking pool for open, size, seek and read together.
        let Ok(Some((start, mut bytes))) =
            tokio::task::spawn_blocking(move || read_from(&path, offset)).await
        else {
            return Chunk::default();
        };
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.offset = start + complete as u64;
        bytes.truncate(complete);
        parse(bytes)
    }
}

/// Reads up to `READ_CHUNK` bytes from `offset`, or from the start when the file is now
/// shorter than `offset` (a new attempt started a fresh file). Returns where it read from.
fn read_from(path: &Path, offset: u64) -> Option<(u64, Vec<u8>)> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::new();
    f.take(READ_CHUNK).read_to_end(&mut bytes).ok()?;
    Some((start, bytes))
}

fn parse(bytes: Vec<u8>) -> Chunk {
    // The worker writes valid UTF-8; a damaged byte becomes U+FFFD instead of costing its
    // line, and the usual case keeps the bytes read without copying them.
    let buf = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    let mut lines = Vec::new();
    let mut at = 0;
    for line in buf.split('\n') {
        let range = at..at + line.len();
        at = range.end + 1;
        // Parsing checks the whole line is JSON while skipping the text it does not keep.
        if let Ok(numbers) = serde_json::from_str::<LightLine>(line) {
            lines.push((numbers, range));
        }
    }
    Chunk { buf, lines }
}

/// A `lines` frame being assembled from stored line texts.
pub(crate) struct LinesFrame {
    text: String,
    lines: usize,
    last_seq: u64,
}

const FRAME_START: &str = r#"{"type":"lines","lines":["#;
const FRAME_END: &str = "]}";

impl LinesFrame {
    pub(crate) fn new() -> Self {
        LinesFrame {
            text: String::from(FRAME_START),
            lines: 0,
            last_seq: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// Whether adding a line of this length would make the frame longer than `max` (a
    /// line longer than `max` on its own still goes out, alone).
    pub(crate) fn would_exceed(&self, line_len: usize, max: usize) -> bool {
        !self.is_empty() && self.text.len() + 1 + line_len + FRAME_END.len() > max
    }

    pub(crate) fn push(&mut self, seq: u64, json: &str) {
        if self.lines > 0 {
            self.text.push(',');
        }
        self.text.push_str(json);
        self.lines += 1;
        self.last_seq = seq;
    }

    /// The frame's text and its last line's sequence number; the builder starts over.
    pub(crate) fn take(&mut self) -> (ByteString, u64) {
        let mut text = std::mem::replace(&mut self.text, String::from(FRAME_START));
        text.push_str(FRAME_END);
        self.lines = 0;
        (ByteString::from(text), self.last_seq)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use kiln_model::{LogLine, OutputMessage, Stream};

    use super::*;

    fn line(seq: u64, attempt: u32, text: &str) -> LogLine {
        LogLine {
            seq,
            ts: Utc::now(),
            stream: Stream::Stdout,
            attempt,
            line: text.to_owned(),
        }
    }

    fn jsonl(lines: &[LogLine]) -> String {
        lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect()
    }

    #[tokio::test]
    async fn reads_complete_lines_only_and_resumes_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let first = [line(1, 1, "one"), line(2, 1, "two \"quoted\" ✓")];
        let partial = serde_json::to_string(&line(3, 1, "three")).unwrap();
        std::fs::write(&path, jsonl(&first) + &partial[..10]).unwrap();
        let mut cursor = Cursor::new(Some(path.clone()));

        let chunk = cursor.read().await;
        let read: Vec<LogLine> = chunk
            .lines()
            .map(|(_, json)| serde_json::from_str(json).unwrap())
            .collect();
        assert_eq!(read, first);

        std::fs::write(&path, jsonl(&first) + &partial + "\n").unwrap();
        let chunk = cursor.read().await;
        let seqs: Vec<u64> = chunk.lines().map(|(l, _)| l.seq).collect();
        assert_eq!(seqs, [3], "only the line completed since the last read");
        assert!(cursor.read().await.is_empty());
    }

    #[tokio::test]
    async fn skips_what_is_not_a_log_line_and_restarts_on_a_shorter_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let good = jsonl(&[line(1, 1, "a"), line(2, 1, "b")]);
        let mut bytes = format!("{good}not json\n{{\"seq\":3}}\n").into_bytes();
        bytes.extend_from_slice(b"{\"seq\":4,\"attempt\":1,\"line\":\"\xff\"}\n");
        std::fs::write(&path, bytes).unwrap();
        let mut cursor = Cursor::new(Some(path.clone()));
        let chunk = cursor.read().await;
        let got: Vec<(u64, &str)> = chunk.lines().map(|(l, json)| (l.seq, json)).collect();
        assert_eq!(got.len(), 3, "two good lines and the damaged one: {got:?}");
        assert!(
            got[2].1.contains('\u{fffd}'),
            "a damaged byte is replaced, not its line"
        );

        // A retry's fresh log is shorter than what was read: read again from its start.
        std::fs::write(&path, jsonl(&[line(1, 2, "again")])).unwrap();
        let chunk = cursor.read().await;
        let got: Vec<(u64, u32)> = chunk.lines().map(|(l, _)| (l.seq, l.attempt)).collect();
        assert_eq!(got, [(1, 2)]);

        assert!(Cursor::new(None).read().await.is_empty());
        let mut missing = Cursor::new(Some(dir.path().join("gone.jsonl")));
        assert!(missing.read().await.is_empty());
    }

    #[test]
    fn frames_decode_as_the_lines_the_worker_wrote_and_respect_the_size_limit() {
        let lines: Vec<LogLine> = (1..=5).map(|n| line(n, 1, &"x".repeat(40))).collect();
        let chunk = parse(jsonl(&lines).into_bytes());
        let one = chunk.lines().next().unwrap().1.len();
        // Room for two lines per frame, not three.
        let max = FRAME_START.len() + 2 * one + 1 + FRAME_END.len();
        let mut frame = LinesFrame::new();
        let mut sent = Vec::new();
        for (l, json) in chunk.lines() {
            if frame.would_exceed(json.len(), max) {
                sent.push(frame.take());
            }
            frame.push(l.seq, json);
        }
        sent.push(frame.take());

        assert_eq!(
            sent.iter().map(|(_, last)| *last).collect::<Vec<_>>(),
            [2, 4, 5]
        );
        let mut decoded = Vec::new();
        for (text, _) in &sent {
            assert!(text.len() <= max);
            match serde_json::from_str(text).unwrap() {
                OutputMessage::Lines { lines } => decoded.extend(lines),
                other => panic!("not a lines frame: {other:?}"),
            }
        }
        assert_eq!(decoded, lines);
        assert!(
            !LinesFrame::new().would_exceed(10 * max, max),
            "a long line goes alone"
        );
    }
}
