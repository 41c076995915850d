//! The SPEC §9 capture file: JSON Lines, one consumed Kafka message per line,
//! `{"t": <record timestamp ms>, "partition": <int>, "offset": <int>, "payload": "<raw>"}`.
//!
//! A malformed capture *line* (not JSON, a missing or mistyped field, a negative
//! partition or offset) is an error of the file and is reported with its line
//! number; a malformed *payload* is just an invalid message, decided as such by the
//! pipeline. Lines holding only whitespace are skipped.
//!
//! Payloads are JSON strings, so they must be valid UTF-8; the generator guarantees
//! it (its "binary garbage" is control characters and symbols, not raw bytes), and
//! [`CaptureWriter::write`] refuses anything else rather than altering it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vtpga_dataflow::model::SourcePos;

use crate::changes::{ControlConfig, ControlGenerator, GenControl};
use crate::generator::{GenMessage, Generator, GeneratorConfig};
use crate::refdata::{self, RefDataError};

/// One line of a capture file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureRecord {
    /// The record timestamp as consumed, before the SPEC §4 clamping. Kafka's "no
    /// timestamp" (−1) and any other negative value read as 0, as the Kafka source takes
    /// them: the clamp then gives the partition's previous `t`.
    pub t: u64,
    /// The Kafka partition the record was consumed from (>= 0).
    pub partition: i32,
    /// The record's offset in its partition (>= 0).
    pub offset: i64,
    /// The raw message text (for a refused record: what could be read of it).
    pub payload: String,
    /// Why the record is decided `invalid` without being parsed: a `null` payload (a
    /// record without a value) or one that was not UTF-8 (SPEC §9).
    pub refused: Option<String>,
    /// A record of the control topic (SPEC §9 `"topic"`, §11); source positions are per
    /// topic.
    pub control: bool,
}

/// The control topic's name in a capture line's `"topic"` (SPEC §9, §11).
pub const CONTROL_TOPIC: &str = "transacoes-controle";
/// The transaction topic's name (the topic of a line without `"topic"`).
pub const TRANSACTION_TOPIC: &str = "transacoes";

/// A capture line as written, borrowed from the line's text (the payload is unescaped
/// once, into the record); [`CaptureRecord`] is what it means.
#[derive(Deserialize)]
struct Line<'a> {
    t: i64,
    partition: i32,
    offset: i64,
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
    #[serde(default, borrow)]
    topic: Option<std::borrow::Cow<'a, str>>,
}

/// The error of a capture line whose payload is `null` (SPEC §9).
pub const NO_VALUE: &str = "record has no value";
/// The error of a capture line whose payload holds a lone surrogate: the record's value
/// was not UTF-8 (SPEC §9).
pub const NOT_UTF8: &str = "payload is not valid UTF-8";

/// A capture line checked against SPEC §9 (all but its payload's decoding, which cannot
/// fail: a payload that does not decode is a refused record, not an error of the file).
struct Checked<'a> {
    line: Line<'a>,
    control: bool,
}

/// Checks one capture line (without its line end); the error says what is wrong with it.
fn check_line(bytes: &[u8]) -> Result<Checked<'_>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let line: Line<'_> =
        serde_json::from_str(text).map_err(|e| format!("not a capture record: {e}"))?;
    let control = match line.topic.as_deref() {
        None | Some(TRANSACTION_TOPIC) => false,
        Some(CONTROL_TOPIC) => true,
        Some(other) => {
            return Err(format!(
                "not a capture record: topic: expected {TRANSACTION_TOPIC:?} or {CONTROL_TOPIC:?}, not {:?}",
                other.chars().take(64).collect::<String>()
            ))
        }
    };
    let raw = line.payload.get();
    if raw != "null" && !raw.starts_with('"') {
        return Err("not a capture record: payload: expected a string or null".to_owned());
    }
    if line.partition < 0 {
        return Err(format!("negative partition {}", line.partition));
    }
    if line.offset < 0 {
        return Err(format!("negative offset {}", line.offset));
    }
    Ok(Checked { line, control })
}

/// A checked line's payload (its JSON text: a string or `null`) decoded: the message's
/// text, and why it is refused if it is.
pub fn decode_payload(raw: &str) -> (String, Option<String>) {
    if raw == "null" {
        (String::new(), Some(NO_VALUE.to_owned()))
    } else {
        match serde_json::from_str::<String>(raw) {
            Ok(text) => (text, None),
            // serde_json refuses only lone surrogates in a well-formed string: the value
            // was not UTF-8; its escaped text is what can be kept of it.
            Err(_) => (
                raw.get(1..raw.len().saturating_sub(1))
                    .unwrap_or("")
                    .to_owned(),
                Some(NOT_UTF8.to_owned()),
            ),
        }
    }
}

impl From<Checked<'_>> for CaptureRecord {
    fn from(Checked { line, control }: Checked<'_>) -> Self {
        let (payload, refused) = decode_payload(line.payload.get());
        CaptureRecord {
            t: line.t.max(0) as u64,
            partition: line.partition,
            offset: line.offset,
            payload,
            refused,
            control,
        }
    }
}

/// Reads one capture line (without its line end) into its record.
pub fn parse_line(bytes: &[u8]) -> Result<CaptureRecord, String> {
    check_line(bytes).map(CaptureRecord::from)
}

/// Where a capture line is in its file, and what ordering it needs (SPEC §4, §9): the
/// replay orders and splits these, and each worker reads its own lines when it needs
/// them (so the payloads are decoded in parallel, into memory freed by the messages
/// already decided).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineRef {
    /// The record timestamp as consumed (negative read as 0), before clamping.
    pub t: u64,
    /// The record's partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// A record of the control topic.
    pub control: bool,
    /// The first byte of the line's payload (its JSON text) in the file.
    pub start: u64,
    /// The payload's length in bytes.
    pub len: u32,
}

impl CaptureRecord {
    /// The record's SPEC §4 source position: (partition, offset).
    pub fn source_pos(&self) -> SourcePos {
        SourcePos {
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// An error of a capture file: opening, reading or writing it, or one of its lines.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be opened, read, written or flushed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file (or the name given to the reader or writer).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line that is not a capture record (SPEC §9), or has a negative partition or
    /// offset.
    #[error("{}: line {line}: {message}", path.display())]
    Line {
        /// The file (or the name given to the reader).
        path: PathBuf,
        /// The 1-based line number.
        line: u64,
        /// What is wrong with the line.
        message: String,
    },
    /// A generated payload that is not valid UTF-8, refused by [`CaptureWriter::write`].
    #[error("{}: payload of a message keyed {key:?} (partition {partition}) is not valid UTF-8", path.display())]
    NotUtf8 {
        /// The file (or the name given to the writer).
        path: PathBuf,
        /// The message's partition.
        partition: i32,
        /// The message's Kafka key (the payer id).
        key: String,
    },
}

impl CaptureError {
    /// The line the error is about, when it is about one.
    pub fn line(&self) -> Option<u64> {
        match self {
            CaptureError::Line { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// Writes a capture file, assigning each partition's offsets 0, 1, 2, … in write
/// order, as a Kafka broker would.
pub struct CaptureWriter<W: Write = BufWriter<File>> {
    out: W,
    path: PathBuf,
    next_offset: BTreeMap<i32, i64>,
    written: u64,
    line: Vec<u8>,
}

impl CaptureWriter<BufWriter<File>> {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> Result<Self, CaptureError> {
        let file = File::create(path).map_err(|source| CaptureError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(CaptureWriter::new(BufWriter::new(file), path))
    }
}

impl<W: Write> CaptureWriter<W> {
    /// Wraps any writer; `name` is used in error messages.
    pub fn new(out: W, name: impl Into<PathBuf>) -> Self {
        CaptureWriter {
            out,
            path: name.into(),
            next_offset: BTreeMap::new(),
            written: 0,
            line: Vec::with_capacity(512),
        }
    }

    fn io(&self, source: std::io::Error) -> CaptureError {
        CaptureError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends a generated message at the next offset of its partition and
    /// returns that position.
    pub fn write(&mut self, msg: &GenMessage) -> Result<SourcePos, CaptureError> {
        let payload = std::str::from_utf8(&msg.payload).map_err(|_| CaptureError::NotUtf8 {
            path: self.path.clone(),
            partition: msg.partition,
            key: msg.key.clone(),
        })?;
        let offset = self.next_offset.get(&msg.partition).copied().unwrap_or(0);
        self.emit(None, msg.record_ts, msg.partition, offset, payload)?;
        Ok(SourcePos {
            partition: msg.partition,
            offset,
        })
    }

    /// Appends a record as it is (e.g. one consumed from Kafka with its real offset).
    /// Later [`write`](Self::write)s to that partition continue after its offset.
    pub fn write_record(&mut self, rec: &CaptureRecord) -> Result<(), CaptureError> {
        let topic = rec.control.then_some(CONTROL_TOPIC);
        self.emit(topic, rec.t, rec.partition, rec.offset, &rec.payload)
    }

    fn emit(
        &mut self,
        topic: Option<&str>,
        t: u64,
        partition: i32,
        offset: i64,
        payload: &str,
    ) -> Result<(), CaptureError> {
        #[derive(Serialize)]
        struct Line<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            topic: Option<&'a str>,
            t: u64,
            partition: i32,
            offset: i64,
            payload: &'a str,
        }
        self.line.clear();
        serde_json::to_writer(
            &mut self.line,
            &Line {
                topic,
                t,
                partition,
                offset,
                payload,
            },
        )
        .expect("serialising to memory cannot fail");
        self.line.push(b'\n');
        if let Err(e) = self.out.write_all(&self.line) {
            return Err(self.io(e));
        }
        if topic.is_none() {
            let next = self.next_offset.entry(partition).or_insert(0);
            *next = (*next).max(offset.saturating_add(1));
        }
        self.written += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The next offset [`write`](Self::write) will assign in `partition`.
    pub fn next_offset(&self, partition: i32) -> i64 {
        self.next_offset.get(&partition).copied().unwrap_or(0)
    }

    /// Flushes and returns the number of records written.
    pub fn finish(mut self) -> Result<u64, CaptureError> {
        if let Err(e) = self.out.flush() {
            return Err(self.io(e));
        }
        Ok(self.written)
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> Result<W, CaptureError> {
        if let Err(e) = self.out.flush() {
            return Err(self.io(e));
        }
        Ok(self.out)
    }
}

/// A streaming reader of capture records; see [`capture_lines`].
pub struct CaptureLines<R = BufReader<File>> {
    reader: Option<R>,
    path: PathBuf,
    line: u64,
    buf: Vec<u8>,
    open_error: Option<CaptureError>,
}

impl<R: BufRead> CaptureLines<R> {
    /// Reads capture lines from any buffered reader; `name` is used in errors.
    pub fn from_reader(reader: R, name: impl Into<PathBuf>) -> Self {
        CaptureLines {
            reader: Some(reader),
            path: name.into(),
            line: 0,
            buf: Vec::new(),
            open_error: None,
        }
    }

    fn line_err(&self, message: String) -> CaptureError {
        CaptureError::Line {
            path: self.path.clone(),
            line: self.line,
            message,
        }
    }

    fn parse(&self, bytes: &[u8]) -> Result<CaptureRecord, CaptureError> {
        parse_line(bytes).map_err(|e| self.line_err(e))
    }
}

impl<R: BufRead> Iterator for CaptureLines<R> {
    type Item = Result<CaptureRecord, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.open_error.take() {
            return Some(Err(e));
        }
        loop {
            let reader = self.reader.as_mut()?;
            self.buf.clear();
            match reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.reader = None;
                    return None;
                }
                Ok(_) => {
                    self.line += 1;
                    let mut end = self.buf.len();
                    while end > 0 && matches!(self.buf[end - 1], b'\n' | b'\r') {
                        end -= 1;
                    }
                    let bytes = &self.buf[..end];
                    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    return Some(self.parse(bytes));
                }
                Err(source) => {
                    self.reader = None;
                    return Some(Err(CaptureError::Io {
                        path: self.path.clone(),
                        source,
                    }));
                }
            }
        }
    }
}

/// Streams the records of a capture file in file order. Errors carry the line
/// number; a file that cannot be opened yields that error once.
pub fn capture_lines(path: &Path) -> CaptureLines {
    match File::open(path) {
        Ok(f) => CaptureLines::from_reader(BufReader::with_capacity(1 << 16, f), path),
        Err(source) => CaptureLines {
            reader: None,
            path: path.to_path_buf(),
            line: 0,
            buf: Vec::new(),
            open_error: Some(CaptureError::Io {
                path: path.to_path_buf(),
                source,
            }),
        },
    }
}

/// Reads a whole capture file; the first malformed line is an error.
pub fn read_capture(path: &Path) -> Result<Vec<CaptureRecord>, CaptureError> {
    capture_lines(path).collect()
}

/// [`read_capture`] on `threads` threads: the file is cut at line ends into one piece per
/// thread, and each thread reads and parses its own piece (no copy of the whole file in
/// memory). Same records, same order, same first error (with its line number).
pub fn read_capture_parallel(
    path: &Path,
    threads: usize,
) -> Result<Vec<CaptureRecord>, CaptureError> {
    read_lines_parallel(path, threads, |bytes, _| parse_line(bytes))
}

/// Checks every line of a capture file as [`read_capture_parallel`] does, and gives where
/// each line's payload is instead of its record (nothing is decoded).
pub fn index_capture_parallel(path: &Path, threads: usize) -> Result<Vec<LineRef>, CaptureError> {
    read_lines_parallel(path, threads, |bytes, start| {
        let Checked { line, control } = check_line(bytes)?;
        let raw = line.payload.get();
        // The payload is borrowed from the line: where it starts in it.
        let within = raw.as_ptr() as usize - bytes.as_ptr() as usize;
        Ok(LineRef {
            t: line.t.max(0) as u64,
            partition: line.partition,
            offset: line.offset,
            control,
            start: start + within as u64,
            len: u32::try_from(raw.len()).map_err(|_| "a payload of 4 GiB or more".to_owned())?,
        })
    })
}

/// Reads the lines of a capture file on `threads` threads, each its own piece (cut at
/// line ends), with `each(line, its first byte)`; lines holding only whitespace are
/// skipped, line ends (`\n`, `\r\n`) are not part of a line. In file order; the first
/// error of the file, with its line number.
fn read_lines_parallel<T: Send>(
    path: &Path,
    threads: usize,
    each: impl Fn(&[u8], u64) -> Result<T, String> + Sync,
) -> Result<Vec<T>, CaptureError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| CaptureError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let threads = threads.clamp(1, 64) as u64;
    // Piece boundaries just after a newline, so no line is cut.
    let mut cuts = vec![0u64];
    for k in 1..threads {
        let from = (len * k / threads).max(*cuts.last().expect("one cut"));
        file.seek(SeekFrom::Start(from)).map_err(io)?;
        let mut rest = Vec::new();
        let n = BufReader::with_capacity(1 << 16, &mut file)
            .read_until(b'\n', &mut rest)
            .map_err(io)?;
        if rest.last() != Some(&b'\n') {
            break;
        }
        cuts.push(from + n as u64);
    }
    cuts.push(len);
    cuts.dedup();
    // Each piece: what its lines gave and its number of lines, or its first error (whose
    // line number counts from the piece's start).
    type Piece<T> = Result<(Vec<T>, u64), CaptureError>;
    let each = &each;
    let pieces: Vec<Piece<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = cuts
            .windows(2)
            .map(|w| {
                let (start, end) = (w[0], w[1]);
                scope.spawn(move || -> Piece<T> {
                    let mut file = File::open(path).map_err(io)?;
                    file.seek(SeekFrom::Start(start)).map_err(io)?;
                    let mut reader = BufReader::with_capacity(1 << 20, file.take(end - start));
                    // A capture line is about 300 bytes; room for that many, untouched
                    // until used.
                    let mut out = Vec::with_capacity(((end - start) / 128) as usize);
                    let mut buf = Vec::new();
                    let (mut at, mut line) = (start, 0u64);
                    loop {
                        buf.clear();
                        let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
                        if n == 0 {
                            return Ok((out, line));
                        }
                        line += 1;
                        let first = at;
                        at += n as u64;
                        let mut end = buf.len();
                        while end > 0 && matches!(buf[end - 1], b'\n' | b'\r') {
                            end -= 1;
                        }
                        let bytes = &buf[..end];
                        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                            continue;
                        }
                        out.push(each(bytes, first).map_err(|message| CaptureError::Line {
                            path: path.to_path_buf(),
                            line,
                            message,
                        })?);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a capture reader thread panicked"))
            .collect()
    });
    let mut lines_before = 0;
    let mut parsed = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match piece {
            Ok((items, lines)) => {
                lines_before += lines;
                parsed.push(items);
            }
            Err(CaptureError::Line {
                path,
                line,
                message,
            }) => {
                return Err(CaptureError::Line {
                    path,
                    line: line + lines_before,
                    message,
                })
            }
            Err(e) => return Err(e),
        }
    }
    let mut all = Vec::with_capacity(parsed.iter().map(Vec::len).sum());
    for mut piece in parsed {
        all.append(&mut piece);
    }
    Ok(all)
}

/// An error of [`generate_dataset`].
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The output directory could not be created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The output directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing `regions.csv` or `users.csv` failed.
    #[error(transparent)]
    RefData(#[from] RefDataError),
    /// Writing `capture.jsonl` failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// Fewer than two users were asked for (the number asked).
    #[error("a dataset needs at least two users, not {0}")]
    TooFewUsers(usize),
}

/// What [`generate_dataset`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetSummary {
    /// The `regions.csv` written.
    pub regions_path: PathBuf,
    /// The `users.csv` written.
    pub users_path: PathBuf,
    /// The `capture.jsonl` written.
    pub capture_path: PathBuf,
    /// Regions written: the 27 capitals plus the extra ones.
    pub regions: usize,
    /// Users written.
    pub users: usize,
    /// Transaction messages written to the capture.
    pub messages: u64,
    /// Control records (SPEC §11) written to the capture, on the control topic.
    pub controls: u64,
    /// Record timestamps of the first and last message.
    pub first_t: Option<u64>,
    /// Record timestamp of the last message (ms since the Unix epoch); `None` when no
    /// message was written.
    pub last_t: Option<u64>,
}

/// Writes `regions.csv` (capitals plus `extra_regions`), `users.csv` (`users`
/// users) and `capture.jsonl` (`count` generated messages) into `dir`, creating
/// it if needed. All three derive from `cfg.seed`. The arrival clock is the one
/// of [`Generator::next_message`] with `cfg` as given: to span a day, pass
/// `cfg.spanning(count, 86_400_000)`.
pub fn generate_dataset(
    dir: &Path,
    count: usize,
    users: usize,
    extra_regions: usize,
    cfg: GeneratorConfig,
) -> Result<DatasetSummary, DatasetError> {
    generate_dataset_with_controls(dir, count, users, extra_regions, cfg, None)
}

/// A generated control record as a capture line of the control topic.
fn control_line(rec: GenControl) -> CaptureRecord {
    CaptureRecord {
        t: rec.record_ts,
        partition: rec.partition,
        offset: rec.offset,
        // The generator writes JSON text, always UTF-8.
        payload: String::from_utf8(rec.payload).expect("generated control records are UTF-8"),
        refused: None,
        control: true,
    }
}

/// [`generate_dataset`], with the control records of a [`ControlGenerator`] of
/// `controls` (over the same regions and users) mixed in on its own clock: before each
/// transaction message, every control record due at or before its record timestamp, as a
/// line of the control topic (SPEC §9 `"topic"`). Its `start_ms` is normally the
/// transactions' (`cfg.start_ms`); the last transaction message ends the stream of both.
/// With `None` the capture is exactly [`generate_dataset`]'s.
pub fn generate_dataset_with_controls(
    dir: &Path,
    count: usize,
    users: usize,
    extra_regions: usize,
    cfg: GeneratorConfig,
    controls: Option<ControlConfig>,
) -> Result<DatasetSummary, DatasetError> {
    if users < 2 {
        return Err(DatasetError::TooFewUsers(users));
    }
    std::fs::create_dir_all(dir).map_err(|source| DatasetError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let regions = refdata::generate_regions(extra_regions, cfg.seed);
    let user_list = refdata::generate_users(users, &regions, cfg.seed);
    let regions_path = dir.join("regions.csv");
    let users_path = dir.join("users.csv");
    let capture_path = dir.join("capture.jsonl");
    refdata::write_regions(&regions_path, &regions)?;
    refdata::write_users(&users_path, &user_list)?;
    let (n_regions, n_users) = (regions.len(), user_list.len());
    let mut control_generator = controls.map(|c| ControlGenerator::new(c, &regions, &user_list));
    let mut generator = Generator::new(cfg, regions, user_list);
    let mut writer = CaptureWriter::create(&capture_path)?;
    let (mut first_t, mut last_t) = (None, None);
    let mut n_controls = 0u64;
    for _ in 0..count {
        let msg = generator.next_message();
        if let Some(c) = control_generator.as_mut() {
            while c.next_due() <= msg.record_ts {
                writer.write_record(&control_line(c.next_message()))?;
                n_controls += 1;
            }
        }
        first_t.get_or_insert(msg.record_ts);
        last_t = Some(msg.record_ts);
        writer.write(&msg)?;
    }
    let written = writer.finish()?;
    Ok(DatasetSummary {
        regions_path,
        users_path,
        capture_path,
        regions: n_regions,
        users: n_users,
        messages: written - n_controls,
        controls: n_controls,
        first_t,
        last_t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refdata::{generate_regions, generate_users};
    use crate::testutil::TempDir;
    use std::collections::HashMap;

    fn tmpdir(name: &str) -> TempDir {
        crate::testutil::tmpdir("capture", name)
    }

    fn msg(partition: i32, ts: u64, payload: &str) -> GenMessage {
        GenMessage {
            record_ts: ts,
            partition,
            key: format!("k{partition}"),
            payload: payload.as_bytes().to_vec(),
        }
    }

    /// The parallel reader gives the sequential reader's records for any thread count,
    /// blank lines, escapes, `null` payloads and control lines among them, and the same
    /// first error with the same line number wherever the pieces are cut.
    #[test]
    fn parallel_reading_equals_sequential_reading() {
        let dir = tmpdir("parallel");
        let mut text = String::new();
        for i in 0..200 {
            let payload = match i % 5 {
                0 => "null".to_owned(),
                1 => format!("\"{{\\\"id\\\": {i}, \\\"x\\\": \\\"\\u00e9\\n\\\"}}\""),
                _ => format!("\"{i}\""),
            };
            let topic = if i % 7 == 0 {
                r#","topic":"transacoes-controle""#
            } else {
                ""
            };
            text.push_str(&format!(
                "{{\"t\":{},\"partition\":{},\"offset\":{i}{topic},\"payload\":{payload}}}\n",
                1000 + i,
                i % 3
            ));
            if i % 11 == 0 {
                text.push_str("  \n");
            }
        }
        let good = dir.join("good.jsonl");
        std::fs::write(&good, &text).unwrap();
        let want = read_capture(&good).unwrap();
        assert_eq!(want.len(), 200);
        assert!(want.iter().any(|r| r.control) && want.iter().any(|r| r.refused.is_some()));
        assert!(want.iter().any(|r| r.payload.contains('\u{e9}')));
        for threads in [1, 2, 3, 7, 64] {
            assert_eq!(
                read_capture_parallel(&good, threads).unwrap(),
                want,
                "{threads}"
            );
        }
        // A bad line near the end: its number is the same however the file is cut.
        let bad = dir.join("bad.jsonl");
        let mut lines: Vec<&str> = text.lines().collect();
        lines.insert(190, "{\"t\": 1}");
        std::fs::write(&bad, lines.join("\n")).unwrap();
        let want = read_capture(&bad).unwrap_err().to_string();
        assert!(want.contains("line 191"), "{want}");
        for threads in [1, 2, 3, 7, 64] {
            let got = read_capture_parallel(&bad, threads)
                .unwrap_err()
                .to_string();
            assert_eq!(got, want, "{threads} threads");
        }
    }

    #[test]
    fn offsets_are_per_partition_in_write_order() {
        let mut w = CaptureWriter::new(Vec::new(), "mem");
        let parts = [2, 0, 2, 1, 2, 0, 3, 2];
        let got: Vec<SourcePos> = parts
            .iter()
            .enumerate()
            .map(|(i, &p)| w.write(&msg(p, 100 + i as u64, "{}")).unwrap())
            .collect();
        let offsets: Vec<i64> = got.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![0, 0, 1, 0, 2, 1, 0, 3]);
        assert_eq!(w.written(), 8);
        let bytes = w.into_inner().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            r#"{"t":100,"partition":2,"offset":0,"payload":"{}"}"#
        );
        let recs: Vec<CaptureRecord> = CaptureLines::from_reader(text.as_bytes(), "mem")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(recs.len(), 8);
        assert_eq!(
            recs[4].source_pos(),
            SourcePos {
                partition: 2,
                offset: 2
            }
        );
    }

    #[test]
    fn write_record_keeps_offsets_and_later_writes_continue() {
        let mut w = CaptureWriter::new(Vec::new(), "mem");
        w.write_record(&CaptureRecord {
            t: 5,
            partition: 1,
            offset: 41,
            payload: "x".into(),
            refused: None,
            control: false,
        })
        .unwrap();
        assert_eq!(w.write(&msg(1, 6, "y")).unwrap().offset, 42);
        assert_eq!(w.next_offset(1), 43);
        assert_eq!(w.next_offset(0), 0);
    }

    #[test]
    fn generated_capture_round_trips_with_offsets_0_to_n() {
        let d = tmpdir("gen");
        let regions = generate_regions(10, 3);
        let users = generate_users(300, &regions, 3);
        let mut g = Generator::new(
            GeneratorConfig {
                invalid_share: 0.2,
                ..GeneratorConfig::default()
            },
            regions,
            users,
        );
        let p = d.join("c.jsonl");
        let mut w = CaptureWriter::create(&p).unwrap();
        let msgs: Vec<GenMessage> = (0..3000).map(|_| g.next_message()).collect();
        for m in &msgs {
            w.write(m).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 3000);
        let recs = read_capture(&p).unwrap();
        assert_eq!(recs.len(), 3000);
        let mut next: HashMap<i32, i64> = HashMap::new();
        for (r, m) in recs.iter().zip(&msgs) {
            let n = next.entry(r.partition).or_insert(0);
            assert_eq!(r.offset, *n);
            *n += 1;
            assert_eq!((r.t, r.partition), (m.record_ts, m.partition));
            assert_eq!(r.payload.as_bytes(), &m.payload[..]);
        }
        assert_eq!(next.values().sum::<i64>(), 3000);
        assert!(next.len() == 4 && next.keys().all(|p| (0..4).contains(p)));
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        let d = tmpdir("bad");
        let good = r#"{"t":1,"partition":0,"offset":0,"payload":"not json at all"}"#;
        let cases: [(&str, &str); 7] = [
            (
                "{\"t\":1,\"partition\":0,\"offset\":1}",
                "missing field `payload`",
            ),
            ("not json", "not a capture record"),
            (
                "{\"t\":1.5,\"partition\":0,\"offset\":1,\"payload\":\"\"}",
                "not a capture record",
            ),
            (
                "{\"t\":1,\"partition\":\"0\",\"offset\":1,\"payload\":\"\"}",
                "not a capture record",
            ),
            (
                "{\"t\":1,\"partition\":-1,\"offset\":1,\"payload\":\"\"}",
                "negative partition",
            ),
            (
                "{\"t\":1,\"partition\":0,\"offset\":-3,\"payload\":\"\"}",
                "negative offset",
            ),
            (
                "{\"t\":1,\"t\":2,\"partition\":0,\"offset\":1,\"payload\":\"\"}",
                "duplicate field",
            ),
        ];
        for (i, (bad, msg)) in cases.iter().enumerate() {
            let p = d.join(format!("c{i}.jsonl"));
            std::fs::write(&p, format!("{good}\n\n{good}\r\n{bad}\n{good}\n")).unwrap();
            let e = read_capture(&p).unwrap_err();
            assert_eq!(e.line(), Some(4), "{e}");
            let shown = e.to_string();
            assert!(shown.contains(msg), "{shown}");
            assert!(shown.contains(&format!("c{i}.jsonl: line 4:")), "{shown}");
            // The streaming reader yields the good lines around it.
            let items: Vec<_> = capture_lines(&p).collect();
            assert_eq!(items.len(), 4);
            assert!(items[0].is_ok() && items[1].is_ok() && items[2].is_err() && items[3].is_ok());
        }
        let p = d.join("utf8.jsonl");
        std::fs::write(
            &p,
            b"{\"t\":1,\"partition\":0,\"offset\":0,\"payload\":\"\xff\"}\n",
        )
        .unwrap();
        let e = read_capture(&p).unwrap_err();
        assert_eq!(e.line(), Some(1));
        assert!(e.to_string().contains("UTF-8"), "{e}");
        let e = read_capture(&d.join("absent.jsonl")).unwrap_err();
        assert!(matches!(e, CaptureError::Io { .. }));
        assert_eq!(capture_lines(&d.join("absent.jsonl")).count(), 1);
        // Extra fields are ignored; a missing final newline is fine.
        let p = d.join("extra.jsonl");
        std::fs::write(
            &p,
            r#"{"t":7,"partition":3,"offset":9,"payload":"p","key":"u1"}"#,
        )
        .unwrap();
        assert_eq!(
            read_capture(&p).unwrap(),
            vec![CaptureRecord {
                t: 7,
                partition: 3,
                offset: 9,
                payload: "p".into(),
                refused: None,
                control: false,
            }]
        );
    }

    /// SPEC §9 (revision 3): `"payload": null`, a payload holding a lone surrogate and
    /// `"t": -1` are records to decide, not errors of the file.
    #[test]
    fn null_and_non_utf8_payloads_and_no_timestamp_are_records() {
        let text = concat!(
            r#"{"t":-1,"partition":0,"offset":0,"payload":"{}"}"#,
            "\n",
            r#"{"t":7,"partition":0,"offset":1,"payload":null}"#,
            "\n",
            r#"{"t":8,"partition":0,"offset":2,"payload":"a\ud800b"}"#,
            "\n",
            r#"{"t":9,"partition":0,"offset":3,"payload":"\ud83d\ude00"}"#,
            "\n",
        );
        let got: Vec<CaptureRecord> = CaptureLines::from_reader(text.as_bytes(), "mem")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got[0].t, 0);
        assert_eq!(got[0].refused, None);
        assert_eq!(got[1].refused.as_deref(), Some(NO_VALUE));
        assert_eq!(got[2].refused.as_deref(), Some(NOT_UTF8));
        assert_eq!(got[2].payload, "a\\ud800b");
        assert_eq!(got[3].refused, None);
        assert_eq!(got[3].payload, "\u{1F600}");
        let bad = r#"{"t":1,"partition":0,"offset":0,"payload":5}"#;
        let e = CaptureLines::from_reader(bad.as_bytes(), "mem")
            .next()
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("expected a string or null"), "{e}");
    }

    #[test]
    fn non_utf8_payload_is_refused() {
        let mut w = CaptureWriter::new(Vec::new(), "mem");
        let m = GenMessage {
            record_ts: 1,
            partition: 0,
            key: "u1".into(),
            payload: vec![0xff, 0xfe],
        };
        assert!(matches!(w.write(&m), Err(CaptureError::NotUtf8 { .. })));
        assert_eq!(w.written(), 0);
        assert_eq!(w.next_offset(0), 0);
    }

    #[test]
    fn dataset_is_written_and_readable() {
        let base = tmpdir("dataset");
        let d = base.join("out");
        let cfg = GeneratorConfig::default().spanning(2000, 86_400_000);
        let s = generate_dataset(&d, 2000, 100, 5, cfg.clone()).unwrap();
        assert_eq!((s.regions, s.users, s.messages), (32, 100, 2000));
        assert_eq!(s.first_t, Some(1_764_165_600_000));
        let span = s.last_t.unwrap() - s.first_t.unwrap();
        assert!(span > 85_000_000, "{span}");
        let regions = refdata::read_regions(&s.regions_path).unwrap();
        let users = refdata::read_users(&s.users_path).unwrap();
        assert_eq!(regions.len(), 32);
        assert_eq!(users.len(), 100);
        refdata::check_user_regions(&s.users_path, &regions, &users).unwrap();
        let recs = read_capture(&s.capture_path).unwrap();
        assert_eq!(recs.len(), 2000);
        // Deterministic: a second run writes identical bytes.
        let d2 = tmpdir("dataset2");
        let s2 = generate_dataset(&d2, 2000, 100, 5, cfg).unwrap();
        for (a, b) in [
            (&s.regions_path, &s2.regions_path),
            (&s.users_path, &s2.users_path),
            (&s.capture_path, &s2.capture_path),
        ] {
            assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
        }
        assert!(matches!(
            generate_dataset(&d2, 10, 1, 0, GeneratorConfig::default()),
            Err(DatasetError::TooFewUsers(1))
        ));
    }

    #[test]
    fn dataset_with_controls_interleaves_them_by_time() {
        let base = tmpdir("controls");
        let cfg = GeneratorConfig::default().spanning(3000, 3_600_000);
        let controls = ControlConfig {
            rate_per_sec: 0.5,
            start_ms: cfg.start_ms,
            ..ControlConfig::default()
        };
        let s = generate_dataset_with_controls(
            &base.join("a"),
            3000,
            200,
            5,
            cfg.clone(),
            Some(controls.clone()),
        )
        .unwrap();
        assert_eq!(s.messages, 3000);
        // One hour at 0.5 per second.
        assert!((1700..=1900).contains(&s.controls), "{}", s.controls);
        let recs = read_capture(&s.capture_path).unwrap();
        assert_eq!(recs.len() as u64, s.messages + s.controls);
        // Arrival times never decrease in file order, controls included.
        assert!(recs.windows(2).all(|w| w[0].t <= w[1].t));
        let mut next: HashMap<(bool, i32), i64> = HashMap::new();
        for r in &recs {
            let n = next.entry((r.control, r.partition)).or_insert(0);
            assert_eq!(r.offset, *n);
            *n += 1;
            if r.control {
                assert!((0..2).contains(&r.partition));
            }
        }
        let text = std::fs::read_to_string(&s.capture_path).unwrap();
        let control_lines = text
            .lines()
            .filter(|l| l.starts_with(r#"{"topic":"transacoes-controle","#))
            .count();
        assert_eq!(control_lines as u64, s.controls);
        // The transaction lines are those of the same dataset without controls, and a
        // second run writes the same bytes.
        let plain = generate_dataset(&base.join("b"), 3000, 200, 5, cfg.clone()).unwrap();
        let plain_text = std::fs::read_to_string(&plain.capture_path).unwrap();
        let without: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(r#"{"topic""#))
            .collect();
        assert_eq!(without, plain_text.lines().collect::<Vec<_>>());
        let again =
            generate_dataset_with_controls(&base.join("c"), 3000, 200, 5, cfg, Some(controls))
                .unwrap();
        assert_eq!(
            std::fs::read(&s.capture_path).unwrap(),
            std::fs::read(&again.capture_path).unwrap()
        );
        // Replay's preparation reads them as control records.
        let prepared = crate::replay::prepare(recs);
        let n = prepared
            .messages
            .iter()
            .filter(|m| matches!(m.body, vtpga_dataflow::graph::Body::Control(_)))
            .count();
        assert_eq!(n as u64, s.controls);
    }
}
