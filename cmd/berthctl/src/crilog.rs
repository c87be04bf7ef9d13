//! Container log files in the CRI format, as runtimes write them for kubelet:
//! `<RFC3339Nano> <stdout|stderr> <P|F>[:tags] <text>`, one line per write; a line the
//! runtime had to split is a run of `P` (partial) pieces ended by an `F` (full) one. Reading
//! joins the pieces, routes each line to the stream it came from, and can follow the file across
//! kubelet's rotation (the file renamed, the runtime told to reopen and so create a new one at the
//! same path).

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};

/// How often a followed file is looked at for new data or a rotation.
pub(crate) const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How long a rotated file is still read after the switch to the new one: the runtime opens
/// the new file before it stops writing to the old.
const RETIRED_GRACE: Duration = Duration::from_secs(2);
/// How often, while a followed file is quiet, the runtime is asked whether the container still
/// runs (kubelet looks once a second too).
const STATUS_PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// One line of the file, as written by the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub time: DateTime<FixedOffset>,
    pub stream: Stream,
    pub partial: bool,
    /// Without the line's newline.
    pub content: &'a [u8],
}

/// Parses one line (without its newline); `None` when it is not in the CRI format.
pub(crate) fn parse_entry(line: &[u8]) -> Option<Entry<'_>> {
    let mut fields = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?;
    let time = DateTime::parse_from_rfc3339(time).ok()?;
    let stream = match fields.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    // tags are `P` or `F`, possibly followed by `:`-separated others (kept for compatibility)
    let tags = fields.next()?;
    let partial = tags.split(|&b| b == b':').next() == Some(b"P");
    // an empty line is `... F ` or, from some writers, `... F` with no separator at all
    let content = fields.next().unwrap_or_default();
    Some(Entry {
        time,
        stream,
        partial,
        content,
    })
}

/// A line of the container's output: its pieces joined, without the newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// The time of the first piece.
    pub time: DateTime<FixedOffset>,
    pub stream: Stream,
    pub text: Vec<u8>,
    /// False for pieces still waiting for their end when the reading stopped.
    pub complete: bool,
}

/// Joins `P` pieces, per stream, until the `F` that ends them.
#[derive(Debug, Default)]
struct Assembler {
    pending: [Option<(DateTime<FixedOffset>, Vec<u8>)>; 2],
}

impl Assembler {
    fn push(&mut self, e: Entry<'_>) -> Option<Line> {
        let slot = &mut self.pending[e.stream.index()];
        let (time, mut text) = slot.take().unwrap_or_else(|| (e.time, Vec::new()));
        text.extend_from_slice(e.content);
        if e.partial {
            *slot = Some((time, text));
            return None;
        }
        Some(Line {
            time,
            stream: e.stream,
            text,
            complete: true,
        })
    }

    /// The unfinished lines, oldest first.
    fn drain(&mut self) -> Vec<Line> {
        let mut out: Vec<Line> = [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .filter_map(|stream| {
                self.pending[stream.index()]
                    .take()
                    .map(|(time, text)| Line {
                        time,
                        stream,
                        text,
                        complete: false,
                    })
            })
            .collect();
        out.sort_by_key(|l| l.time);
        out
    }
}

/// Where lines go: stdout lines to one writer, stderr lines to the other.
pub(crate) trait Sink {
    fn write(&mut self, stream: Stream, buf: &[u8]) -> io::Result<()>;
}

/// Our own stdout and stderr.
pub(crate) struct StdSink;

impl Sink for StdSink {
    fn write(&mut self, stream: Stream, buf: &[u8]) -> io::Result<()> {
        match stream {
            Stream::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
            Stream::Stderr => io::stderr().lock().write_all(buf),
        }
    }
}

/// What to show, as `crictl logs` flags say.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogOptions {
    /// Prefix each line with its time (RFC 3339, nanoseconds).
    pub timestamps: bool,
    /// Only lines at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only the last N lines (whole lines: pieces count once).
    pub tail: Option<usize>,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
    /// Only this stream.
    pub stream: Option<Stream>,
}

/// Whether to go on reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Filters lines by `LogOptions` and writes the rest to a `Sink`.
struct Writer<'a, S: Sink> {
    opts: &'a LogOptions,
    sink: &'a mut S,
    remaining: u64,
}

impl<'a, S: Sink> Writer<'a, S> {
    fn new(opts: &'a LogOptions, sink: &'a mut S) -> Self {
        Self {
            opts,
            sink,
            remaining: opts.limit_bytes.unwrap_or(u64::MAX),
        }
    }

    fn wanted(&self, line: &Line) -> bool {
        self.opts.stream.is_none_or(|s| s == line.stream)
            && self.opts.since.is_none_or(|since| line.time >= since)
    }

    fn write(&mut self, line: &Line) -> io::Result<Flow> {
        if !self.wanted(line) {
            return Ok(Flow::Continue);
        }
        if self.remaining == 0 {
            return Ok(Flow::Stop);
        }
        let mut out = Vec::with_capacity(line.text.len() + 40);
        if self.opts.timestamps {
            out.extend_from_slice(
                line.time
                    .to_rfc3339_opts(SecondsFormat::Nanos, true)
                    .as_bytes(),
            );
            out.push(b' ');
        }
        out.extend_from_slice(&line.text);
        if line.complete {
            out.push(b'\n');
        }
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        out.truncate(n);
        self.sink.write(line.stream, &out)?;
        self.remaining -= out.len() as u64;
        Ok(if self.remaining == 0 {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}

/// An open log file being read from where we are to its end, again and again.
struct LogFile {
    path: PathBuf,
    file: File,
    /// Bytes after the last newline: a line still being written.
    partial: Vec<u8>,
    assembler: Assembler,
    offset: u64,
    /// The file before the last rotation, its unfinished line, and until when to read it.
    retired: Option<(File, Vec<u8>, Instant)>,
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

impl LogFile {
    fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            file: File::open(path)?,
            partial: Vec::new(),
            assembler: Assembler::default(),
            offset: 0,
            retired: None,
        })
    }

    /// Reads to the current end of the file, handing every finished line to `each`; returns how
    /// many bytes were read. Lines that are not in the CRI format are skipped, as kubelet does.
    fn read_available(
        &mut self,
        each: &mut dyn FnMut(Line) -> io::Result<Flow>,
    ) -> Result<(u64, Flow)> {
        if let Some((file, partial, until)) = &mut self.retired {
            let (_, flow) = read_lines(file, partial, &mut self.assembler, each)
                .with_context(|| format!("read the rotated {}", self.path.display()))?;
            if flow == Flow::Stop {
                return Ok((0, flow));
            }
            if Instant::now() >= *until {
                self.retired = None;
            }
        }
        let (n, flow) = read_lines(&mut self.file, &mut self.partial, &mut self.assembler, each)
            .with_context(|| format!("read {}", self.path.display()))?;
        self.offset += n;
        Ok((n, flow))
    }

    /// At the end of reading for good: the last line even without its newline, then any pieces
    /// whose `F` never came.
    fn finish(&mut self, each: &mut dyn FnMut(Line) -> io::Result<Flow>) -> io::Result<Flow> {
        let raw = std::mem::take(&mut self.partial);
        let mut lines: Vec<Line> = parse_entry(&raw)
            .and_then(|e| self.assembler.push(e))
            .into_iter()
            .collect();
        lines.extend(self.assembler.drain());
        for line in lines {
            if each(line)? == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// Whether the path now names another file than the one we read (kubelet rotated it and
    /// the runtime reopened). `false` while nothing is at the path yet.
    fn replaced(&self) -> io::Result<bool> {
        let ours = file_id(&self.file.metadata()?);
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(file_id(&m) != ours),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Starts over when the file was truncated under us (copytruncate rotation).
    fn rewind_if_truncated(&mut self) -> io::Result<()> {
        if self.file.metadata()?.len() < self.offset {
            self.file.seek(SeekFrom::Start(0))?;
            self.offset = 0;
            self.partial.clear();
        }
        Ok(())
    }

    /// Moves to the file now at the path, keeping unfinished pieces (their `F` may be there)
    /// and, for a while, the old file, which the runtime may still write to.
    fn switch(&mut self) -> io::Result<bool> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let old = std::mem::replace(&mut self.file, file);
        let partial = std::mem::take(&mut self.partial);
        self.retired = Some((old, partial, Instant::now() + RETIRED_GRACE));
        self.offset = 0;
        Ok(true)
    }
}

/// Reads `file` to its current end, handing every finished line to `each`; returns how many
/// bytes were read. `partial` holds a line not ended yet. Lines that are not in the CRI
/// format are skipped, as kubelet does.
fn read_lines(
    file: &mut File,
    partial: &mut Vec<u8>,
    assembler: &mut Assembler,
    each: &mut dyn FnMut(Line) -> io::Result<Flow>,
) -> Result<(u64, Flow)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok((total, Flow::Continue)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        total += n as u64;
        let mut chunk = &buf[..n];
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            let raw = if partial.is_empty() {
                &chunk[..i]
            } else {
                partial.extend_from_slice(&chunk[..i]);
                partial.as_slice()
            };
            let line = parse_entry(raw).and_then(|e| assembler.push(e));
            chunk = &chunk[i + 1..];
            partial.clear();
            if let Some(line) = line {
                if each(line)? == Flow::Stop {
                    return Ok((total, Flow::Stop));
                }
            }
        }
        partial.extend_from_slice(chunk);
    }
}

/// Prints the log at `path` as `opts` say; with `follow`, keeps printing what is appended,
/// across rotations, until `is_running` says the container stopped and the file is read to
/// its end.
pub(crate) async fn read_logs<S, F, Fut>(
    path: &Path,
    opts: &LogOptions,
    follow: bool,
    sink: &mut S,
    mut is_running: F,
) -> Result<()>
where
    S: Sink,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    // kubelet resolves symlinks too: rotation renames the file the link points to
    let path =
        std::fs::canonicalize(path).with_context(|| format!("open log file {}", path.display()))?;
    let mut file =
        LogFile::open(&path).with_context(|| format!("open log file {}", path.display()))?;
    let mut writer = Writer::new(opts, sink);
    let res = print_logs(&mut file, opts.tail, follow, &mut writer, &mut is_running).await;
    match res {
        // a closed pipe (`| head`) only means nobody reads any more
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

async fn print_logs<S, F, Fut>(
    file: &mut LogFile,
    tail: Option<usize>,
    follow: bool,
    writer: &mut Writer<'_, S>,
    is_running: &mut F,
) -> Result<()>
where
    S: Sink,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    if let Some(n) = tail {
        let mut last: VecDeque<Line> = VecDeque::with_capacity(n.min(4096));
        let mut keep = |line: Line| {
            if n > 0 && writer.wanted(&line) {
                if last.len() == n {
                    last.pop_front();
                }
                last.push_back(line);
            }
            Ok(Flow::Continue)
        };
        file.read_available(&mut keep)?;
        if !follow {
            file.finish(&mut keep)?;
        }
        for line in &last {
            if writer.write(line)? == Flow::Stop {
                return Ok(());
            }
        }
        if !follow {
            return Ok(());
        }
    }
    let mut write = |line: Line| writer.write(&line);
    follow_or_read(file, follow, &mut write, is_running).await
}

async fn follow_or_read<W, F, Fut>(
    file: &mut LogFile,
    follow: bool,
    write: &mut W,
    is_running: &mut F,
) -> Result<()>
where
    W: FnMut(Line) -> io::Result<Flow>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let mut last_check: Option<Instant> = None;
    loop {
        let (n, flow) = file.read_available(write)?;
        if flow == Flow::Stop {
            return Ok(());
        }
        if !follow {
            file.finish(write)?;
            return Ok(());
        }
        if n > 0 {
            continue;
        }
        if file.replaced()? {
            // The runtime may have written to the old file until it reopened: read it to its
            // end once more, then go on with the new one.
            if file.read_available(write)?.1 == Flow::Stop {
                return Ok(());
            }
            file.switch()?;
            continue;
        }
        file.rewind_if_truncated()?;
        if last_check.is_none_or(|t| t.elapsed() >= STATUS_PERIOD) {
            if !is_running().await? {
                // what it wrote before it stopped, also into a file it switched to
                if file.read_available(write)?.1 == Flow::Stop {
                    return Ok(());
                }
                if file.replaced()? && file.switch()? && file.read_available(write)?.1 == Flow::Stop
                {
                    return Ok(());
                }
                file.finish(write)?;
                return Ok(());
            }
            last_check = Some(Instant::now());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// `--since`: a Go duration before now (`42m`), an RFC 3339 time, a local date-time without a
/// zone (`2013-01-02T13:23:37`, `2013-01-02`), or unix seconds (`1700000000.5`).
pub(crate) fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    use chrono::{Local, NaiveDate, NaiveDateTime, TimeZone};
    let s = s.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let secs: f64 = s.parse().map_err(|_| format!("invalid timestamp {s:?}"))?;
        let nanos = (secs * 1e9) as i64;
        return Ok(DateTime::from_timestamp_nanos(nanos));
    }
    if let Ok(d) = crate::duration::parse_duration(s) {
        let d = chrono::Duration::from_std(d).map_err(|e| format!("--since {s:?}: {e}"))?;
        return Ok(now - d);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M"))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        });
    match naive.map(|n| Local.from_local_datetime(&n).earliest()) {
        Some(Some(t)) => Ok(t.with_timezone(&Utc)),
        _ => Err(format!(
            "invalid --since {s:?}: expected a duration (42m), RFC 3339 time or unix timestamp"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Collects what would have gone to stdout and stderr.
    #[derive(Default)]
    struct Captured {
        out: Vec<u8>,
        err: Vec<u8>,
    }

    impl Sink for Captured {
        fn write(&mut self, stream: Stream, buf: &[u8]) -> io::Result<()> {
            match stream {
                Stream::Stdout => self.out.extend_from_slice(buf),
                Stream::Stderr => self.err.extend_from_slice(buf),
            }
            Ok(())
        }
    }

    impl Captured {
        fn out(&self) -> String {
            String::from_utf8_lossy(&self.out).into_owned()
        }
        fn err(&self) -> String {
            String::from_utf8_lossy(&self.err).into_owned()
        }
    }

    const T1: &str = "2024-05-01T10:00:01.000000001Z";
    const T2: &str = "2024-05-01T10:00:02.5Z";
    const T3: &str = "2024-05-01T10:00:03.123456789Z";

    fn sample() -> String {
        [
            format!("{T1} stdout F first line"),
            format!("{T1} stderr P warn"),
            format!("{T2} stdout P joined "),
            format!("{T2} stderr F ing"),
            format!("{T2} stdout P from "),
            "garbage that is not a log line".to_string(),
            format!("{T3} stdout F three pieces"),
            format!("{T3} stdout F "),
            format!("{T3} stderr F last"),
            String::new(),
        ]
        .join("\n")
    }

    fn write_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn read(text: &str, opts: &LogOptions) -> Captured {
        let (_dir, path) = write_file(text);
        let mut sink = Captured::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(read_logs(&path, opts, false, &mut sink, || async {
            Ok(false)
        }))
        .unwrap();
        sink
    }

    #[test]
    fn entries_parse() {
        let e = parse_entry(b"2016-10-06T00:17:09.669794202Z stdout P log content 1").unwrap();
        assert_eq!(e.stream, Stream::Stdout);
        assert!(e.partial);
        assert_eq!(e.content, b"log content 1");
        assert_eq!(e.time.timestamp_subsec_nanos(), 669794202);
        let e = parse_entry(b"2016-10-06T02:17:09.1+02:00 stderr F:x:y  spaced ").unwrap();
        assert_eq!((e.stream, e.partial), (Stream::Stderr, false));
        assert_eq!(e.content, b" spaced ");
        assert_eq!(e.time.timestamp(), 1475713029);
        // an empty line, with or without the separator
        assert_eq!(
            parse_entry(b"2016-10-06T00:17:09Z stdout F ")
                .unwrap()
                .content,
            b""
        );
        assert_eq!(
            parse_entry(b"2016-10-06T00:17:09Z stdout F")
                .unwrap()
                .content,
            b""
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "",
            "hello world",
            "2016-10-06 stdout F x",
            "2016-10-06T00:17:09Z stdin F x",
            "2016-10-06T00:17:09Z stdout",
            "not-a-time stdout F x",
            r#"{"log":"x\n","stream":"stdout","time":"2016-10-06T00:17:09Z"}"#,
        ] {
            assert_eq!(parse_entry(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn pieces_are_joined_and_streams_routed() {
        let c = read(&sample(), &LogOptions::default());
        assert_eq!(c.out(), "first line\njoined from three pieces\n\n");
        assert_eq!(c.err(), "warning\nlast\n");
    }

    #[test]
    fn timestamps_are_those_of_the_first_piece() {
        let opts = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        let c = read(&sample(), &opts);
        assert_eq!(
            c.out(),
            format!(
                "{T1} first line\n2024-05-01T10:00:02.500000000Z joined from three pieces\n{T3} \n"
            )
        );
        assert_eq!(c.err(), format!("{T1} warning\n{T3} last\n"));
        // a zone other than UTC is kept, like Go's RFC3339NanoFixed
        let c = read("2024-05-01T12:00:00+02:00 stdout F x\n", &opts);
        assert_eq!(c.out(), "2024-05-01T12:00:00.000000000+02:00 x\n");
    }

    #[test]
    fn tail_counts_whole_lines() {
        let tail = |n| LogOptions {
            tail: Some(n),
            ..Default::default()
        };
        // the last 2 lines: stdout "" and stderr "last"; 3 reaches back to the joined line,
        // which is one line though written as three pieces
        let c = read(&sample(), &tail(2));
        assert_eq!((c.out(), c.err()), ("\n".to_string(), "last\n".to_string()));
        let c = read(&sample(), &tail(3));
        assert_eq!(c.out(), "joined from three pieces\n\n");
        assert_eq!(c.err(), "last\n");
        let c = read(&sample(), &tail(100));
        assert_eq!(c.out(), "first line\njoined from three pieces\n\n");
        let c = read(&sample(), &tail(0));
        assert_eq!((c.out(), c.err()), (String::new(), String::new()));
    }

    #[test]
    fn since_filters_by_line_time() {
        let since = |t: &str| LogOptions {
            since: Some(DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)),
            ..Default::default()
        };
        let c = read(&sample(), &since(T2));
        // "joined..." began at T2; "warning" began at T1 although it ended at T2
        assert_eq!(c.out(), "joined from three pieces\n\n");
        assert_eq!(c.err(), "last\n");
        let c = read(&sample(), &since("2030-01-01T00:00:00Z"));
        assert_eq!((c.out(), c.err()), (String::new(), String::new()));
        // with --tail: the last N of the lines since
        let opts = LogOptions {
            tail: Some(1),
            stream: None,
            ..since(T1)
        };
        assert_eq!(read(&sample(), &opts).err(), "last\n");
    }

    #[test]
    fn one_stream_and_byte_limits() {
        let c = read(
            &sample(),
            &LogOptions {
                stream: Some(Stream::Stderr),
                ..Default::default()
            },
        );
        assert_eq!(
            (c.out(), c.err()),
            (String::new(), "warning\nlast\n".to_string())
        );
        let c = read(
            &sample(),
            &LogOptions {
                limit_bytes: Some(14),
                ..Default::default()
            },
        );
        // lines go out in the order they ended: stderr's "warning" before stdout's joined one
        assert_eq!(c.out(), "first line\n");
        assert_eq!(c.err(), "war");
    }

    #[test]
    fn unfinished_lines_are_shown_at_the_end() {
        // a P without its F, and a last line without its newline
        let text = format!("{T1} stdout F a\n{T2} stderr P half\n{T3} stdout F no newline");
        let c = read(&text, &LogOptions::default());
        assert_eq!(c.out(), "a\nno newline\n");
        assert_eq!(c.err(), "half");
    }

    #[test]
    fn since_accepts_durations_times_and_unix_seconds() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| parse_since(s, now).map(|t| t.to_rfc3339());
        assert_eq!(at("42m"), Ok("2024-05-01T09:18:00+00:00".to_string()));
        assert_eq!(at("1h30m"), Ok("2024-05-01T08:30:00+00:00".to_string()));
        assert_eq!(
            at("2024-04-30T23:00:00+02:00"),
            Ok("2024-04-30T21:00:00+00:00".to_string())
        );
        assert_eq!(
            at("1714557600"),
            Ok("2024-05-01T10:00:00+00:00".to_string())
        );
        assert_eq!(
            at("1714557600.5"),
            Ok("2024-05-01T10:00:00.500+00:00".to_string())
        );
        // without a zone: local time, as docker's timetypes reads it
        let local = parse_since("2024-05-01T10:00:00", now).unwrap();
        let want = chrono::TimeZone::from_local_datetime(
            &chrono::Local,
            &chrono::NaiveDate::from_ymd_opt(2024, 5, 1)
                .unwrap()
                .and_hms_opt(10, 0, 0)
                .unwrap(),
        )
        .earliest()
        .unwrap();
        assert_eq!(local, want.with_timezone(&Utc));
        assert!(parse_since("2024-05-01", now).is_ok());
        for bad in ["", "yesterday", "42x", "2024-13-01"] {
            assert!(parse_since(bad, now).is_err(), "{bad:?}");
        }
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Follows `path` in the background; returns what it printed once `running` goes false.
    fn spawn_follow(
        path: PathBuf,
        opts: LogOptions,
        running: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<Captured> {
        tokio::spawn(async move {
            let mut sink = Captured::default();
            read_logs(&path, &opts, true, &mut sink, || {
                let r = running.load(Ordering::SeqCst);
                async move { Ok(r) }
            })
            .await
            .unwrap();
            sink
        })
    }

    async fn finish(task: tokio::task::JoinHandle<Captured>) -> Captured {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
    }

    async fn settle() {
        tokio::time::sleep(FOLLOW_POLL * 3).await;
    }

    #[tokio::test]
    async fn follow_reads_appends_until_the_container_stops() {
        let (_dir, path) = write_file(&format!("{T1} stdout F one\n"));
        let running = Arc::new(AtomicBool::new(true));
        let task = spawn_follow(path.clone(), LogOptions::default(), running.clone());
        settle().await;
        append(&path, &format!("{T2} stdout P tw"));
        settle().await;
        // the rest of a torn line, and its F
        append(&path, &format!("o\n{T2} stdout F !\n{T3} stderr F err\n"));
        settle().await;
        append(&path, &format!("{T3} stdout F written just before exit\n"));
        running.store(false, Ordering::SeqCst);
        let c = finish(task).await;
        assert_eq!(c.out(), "one\ntwo!\nwritten just before exit\n");
        assert_eq!(c.err(), "err\n");
    }

    #[tokio::test]
    async fn follow_survives_rotation_without_losing_lines() {
        let (dir, path) = write_file(&format!("{T1} stdout F before rotation\n"));
        let running = Arc::new(AtomicBool::new(true));
        let task = spawn_follow(path.clone(), LogOptions::default(), running.clone());
        settle().await;
        // kubelet renames the file; the runtime still writes to it until it reopens
        let rotated = dir.path().join("0.log.20240501-100002");
        std::fs::rename(&path, &rotated).unwrap();
        append(
            &rotated,
            &format!("{T2} stdout F late write to the old file\n"),
        );
        settle().await;
        // ReopenContainerLog: a new file at the path
        std::fs::write(&path, format!("{T2} stdout F first in the new file\n")).unwrap();
        settle().await;
        append(&path, &format!("{T3} stderr F appended to the new file\n"));
        settle().await;
        // the runtime had opened the new file but not yet stopped writing to the old one
        append(
            &rotated,
            &format!("{T2} stdout F later write to the old file\n"),
        );
        settle().await;
        // and a second rotation, this time racing with the exit
        std::fs::rename(&path, dir.path().join("0.log.20240501-100003")).unwrap();
        std::fs::write(&path, format!("{T3} stdout F after the second rotation\n")).unwrap();
        running.store(false, Ordering::SeqCst);
        let c = finish(task).await;
        assert_eq!(
            c.out(),
            "before rotation\nlate write to the old file\nfirst in the new file\n\
             later write to the old file\nafter the second rotation\n"
        );
        assert_eq!(c.err(), "appended to the new file\n");
    }

    #[tokio::test]
    async fn follow_with_tail_prints_the_last_lines_then_new_ones() {
        let (_dir, path) = write_file(&sample());
        let running = Arc::new(AtomicBool::new(true));
        let opts = LogOptions {
            tail: Some(1),
            ..Default::default()
        };
        let task = spawn_follow(path.clone(), opts, running.clone());
        settle().await;
        append(&path, &format!("{T3} stdout F new\n"));
        settle().await;
        running.store(false, Ordering::SeqCst);
        let c = finish(task).await;
        assert_eq!(
            (c.out(), c.err()),
            ("new\n".to_string(), "last\n".to_string())
        );
    }

    #[tokio::test]
    async fn follow_of_a_stopped_container_ends_at_the_end_of_the_file() {
        let (_dir, path) = write_file(&sample());
        let mut sink = Captured::default();
        tokio::time::timeout(
            Duration::from_secs(5),
            read_logs(&path, &LogOptions::default(), true, &mut sink, || async {
                Ok(false)
            }),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(sink.out(), "first line\njoined from three pieces\n\n");
    }

    #[tokio::test]
    async fn follow_starts_over_after_copytruncate() {
        let (_dir, path) = write_file(&format!("{T1} stdout F old old old old\n"));
        let running = Arc::new(AtomicBool::new(true));
        let task = spawn_follow(path.clone(), LogOptions::default(), running.clone());
        settle().await;
        std::fs::write(&path, format!("{T2} stdout F new\n")).unwrap();
        tokio::time::sleep(STATUS_PERIOD + FOLLOW_POLL * 3).await;
        running.store(false, Ordering::SeqCst);
        let c = finish(task).await;
        assert_eq!(c.out(), "old old old old\nnew\n");
    }

    #[tokio::test]
    async fn missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = Captured::default();
        let e = read_logs(
            &dir.path().join("nope.log"),
            &LogOptions::default(),
            false,
            &mut sink,
            || async { Ok(false) },
        )
        .await
        .unwrap_err();
        assert!(format!("{e:#}").contains("nope.log"), "{e:#}");
    }
}
