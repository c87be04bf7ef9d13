//! The CRI log writer: `<RFC3339Nano> <stdout|stderr> <P|F> <text>\n`, as kubelet reads it.
//!
//! Rules (containerd's `internal/cri/io/logger.go` unless noted):
//! * A line ends at `\n`; a `\r` right before it is dropped too, so output through a pty
//!   (whose ONLCR turns `\n` into `\r\n`) logs clean lines. Any other `\r` is kept.
//! * A line longer than [`MAX_LOG_LINE`] bytes is cut into `P` records of exactly that size; the
//!   rest continues the line. A line of exactly that size is one `F` record, so a cut happens
//!   only once a byte beyond the limit is known to be part of the line (a trailing `\r` is not
//!   counted until we know whether `\n` follows it).
//! * At EOF an unterminated line is written as `F` (containerd writes `P`; berth ends the
//!   stream there, and kubelet would otherwise hold the text back waiting for its end).
//! * The timestamp is the time the chunk was read, UTC with always 9 fraction digits (as
//!   CRI-O writes it, so every record has the same width).
//! * One chunk read from the container becomes one `writev(2)` of whole records (several only
//!   when a chunk holds more records than one batch of iovecs), so a reader tailing the file
//!   never sees half a record from a healthy disk. The text is never copied except for the
//!   piece of an unterminated line carried to the next chunk.
//! * A write that fails (disk full, directory removed) loses that chunk; the pipes keep being
//!   drained so the container never blocks on its stdout.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use berth_shim_proto::MAX_LOG_LINE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Partial,
    Full,
}

/// The unterminated end of a stream's last chunk: at most [`MAX_LOG_LINE`] bytes, plus one
/// trailing `\r` not yet counted. Allocated on first use, so a container that only ever writes
/// whole lines per chunk never needs it.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    carry: Vec<u8>,
}

/// The CRI log file of one container (or none: output is read and discarded).
pub(crate) struct CriLog {
    path: Option<PathBuf>,
    file: Option<File>,
    /// Set after a failed write and reported once, so a full disk does not flood the shim log.
    failing: bool,
}

/// iovecs per writev: up to 64 records (header, carried text, text, newline). Kept on the stack,
/// 4 KiB; IOV_MAX (1024) would be 16 KiB for no gain on ordinary output.
const IOV_BATCH: usize = 256;

impl CriLog {
    pub(crate) fn open(path: Option<&Path>) -> io::Result<CriLog> {
        let file = path.map(open_log).transpose()?;
        Ok(CriLog {
            path: path.map(Path::to_path_buf),
            file,
            failing: false,
        })
    }

    /// Opens the path again (kubelet renamed the file away to rotate it). On failure the old
    /// file stays in use, so nothing is lost while the caller reports the error.
    pub(crate) fn reopen(&mut self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = open_log(path)?;
        self.file = Some(file);
        self.failing = false;
        Ok(())
    }

    /// Logs one chunk of a stream's output read at `now`.
    pub(crate) fn chunk(
        &mut self,
        stream: Stream,
        lines: &mut Lines,
        data: &[u8],
        now: SystemTime,
    ) {
        let Some(file) = &self.file else {
            return;
        };
        let full = Header::new(now, stream, Tag::Full);
        let partial = Header::new(now, stream, Tag::Partial);
        let mut batch = Batch::new(file);
        let tail = split(&lines.carry, data, |tag, a, b| {
            let header = match tag {
                Tag::Full => full.bytes(),
                Tag::Partial => partial.bytes(),
            };
            batch.record(header, a, b);
        });
        let result = batch.finish();
        if tail.carry_used > 0 {
            lines.carry.drain(..tail.carry_used);
        }
        let rest = &data[tail.rest..];
        if !rest.is_empty() {
            if lines.carry.capacity() == 0 {
                lines.carry.reserve_exact(MAX_LOG_LINE + 1);
            }
            lines.carry.extend_from_slice(rest);
        }
        self.note(result);
    }

    /// The stream ended: its unterminated last line, if any, becomes an `F` record.
    pub(crate) fn eof(&mut self, stream: Stream, lines: &mut Lines, now: SystemTime) {
        let carry = std::mem::take(&mut lines.carry);
        let Some(file) = &self.file else {
            return;
        };
        if carry.is_empty() {
            return;
        }
        let full = Header::new(now, stream, Tag::Full);
        let mut batch = Batch::new(file);
        batch.record(full.bytes(), &carry, &[]);
        let result = batch.finish();
        self.note(result);
    }

    fn note(&mut self, result: io::Result<()>) {
        match result {
            Ok(()) => {
                if self.failing {
                    diag!("writing the container log works again");
                    self.failing = false;
                }
            }
            Err(e) => {
                if !self.failing {
                    let path = self.path.as_deref().unwrap_or(Path::new("")).display();
                    diag!("writing container log {path}: {e}; output is dropped until a write succeeds");
                    self.failing = true;
                }
            }
        }
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    // std opens with O_CLOEXEC, so neither runc nor the container inherits it.
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// `<timestamp> <stream> <tag> `, formatted once per chunk and tag.
struct Header {
    buf: [u8; 64],
    len: usize,
}

impl Header {
    fn new(now: SystemTime, stream: Stream, tag: Tag) -> Header {
        let mut buf = [0u8; 64];
        let tag = match tag {
            Tag::Full => 'F',
            Tag::Partial => 'P',
        };
        let mut w = &mut buf[..];
        // 30 + 1 + 6 + 3 bytes always fit; a year past 9999 is the only thing that could not.
        let _ = write!(
            w,
            "{} {} {tag} ",
            humantime::format_rfc3339_nanos(now),
            stream.name()
        );
        let len = 64 - w.len();
        Header { buf, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Where the unterminated end of a chunk continues: `carry_used` bytes of the old carry were
/// written out, and `data[rest..]` is appended to what is left of it.
#[derive(Debug, PartialEq, Eq)]
struct Tail {
    carry_used: usize,
    rest: usize,
}

/// Cuts `carry` (the previous chunk's unterminated line) followed by `data` into records. A
/// record's text is the two slices `a` then `b`, either possibly empty.
fn split<'a>(
    carry: &'a [u8],
    data: &'a [u8],
    mut emit: impl FnMut(Tag, &'a [u8], &'a [u8]),
) -> Tail {
    let mut carry = carry;
    let carry_len = carry.len();
    let mut pos = 0;
    loop {
        let rest = &data[pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let mut text = &rest[..i];
                if let Some(t) = text.strip_suffix(b"\r") {
                    text = t;
                } else if text.is_empty() {
                    // `\r` at the end of one chunk, `\n` at the start of the next.
                    if let Some(c) = carry.strip_suffix(b"\r") {
                        carry = c;
                    }
                }
                while carry.len() + text.len() > MAX_LOG_LINE {
                    cut(&mut carry, &mut text, &mut emit);
                }
                emit(Tag::Full, carry, text);
                carry = &[];
                pos += i + 1;
            }
            None => {
                let mut text = rest;
                while counted(carry, text) > MAX_LOG_LINE {
                    cut(&mut carry, &mut text, &mut emit);
                }
                // Whatever is left of `carry` is a suffix of the old one.
                let used = carry_len - carry.len();
                return Tail {
                    carry_used: used,
                    rest: data.len() - text.len(),
                };
            }
        }
    }
}

/// Length of an unterminated line for the cut rule: a trailing `\r` may still turn out to be
/// half of a line end.
fn counted(carry: &[u8], text: &[u8]) -> usize {
    let last = text.last().or(carry.last());
    carry.len() + text.len() - usize::from(last == Some(&b'\r'))
}

/// Emits the first [`MAX_LOG_LINE`] bytes of `carry` + `text` as a `P` record.
fn cut<'a>(
    carry: &mut &'a [u8],
    text: &mut &'a [u8],
    emit: &mut impl FnMut(Tag, &'a [u8], &'a [u8]),
) {
    if carry.len() >= MAX_LOG_LINE {
        let (head, tail) = carry.split_at(MAX_LOG_LINE);
        emit(Tag::Partial, head, &[]);
        *carry = tail;
    } else {
        let (head, tail) = text.split_at(MAX_LOG_LINE - carry.len());
        emit(Tag::Partial, carry, head);
        *carry = &[];
        *text = tail;
    }
}

/// Records gathered into iovecs and written with as few writev calls as fit.
struct Batch<'a> {
    file: &'a File,
    iov: [IoSlice<'a>; IOV_BATCH],
    n: usize,
    result: io::Result<()>,
}

impl<'a> Batch<'a> {
    fn new(file: &'a File) -> Batch<'a> {
        Batch {
            file,
            iov: [IoSlice::new(&[]); IOV_BATCH],
            n: 0,
            result: Ok(()),
        }
    }

    fn record(&mut self, header: &'a [u8], a: &'a [u8], b: &'a [u8]) {
        if self.n + 4 > IOV_BATCH {
            self.flush();
        }
        for piece in [header, a, b, b"\n"] {
            if !piece.is_empty() {
                self.iov[self.n] = IoSlice::new(piece);
                self.n += 1;
            }
        }
    }

    fn flush(&mut self) {
        let n = std::mem::take(&mut self.n);
        // After a failure the rest of the chunk is dropped rather than written with a hole.
        if self.result.is_ok() {
            self.result = write_all_vectored(self.file, &mut self.iov[..n]);
        }
    }

    fn finish(mut self) -> io::Result<()> {
        self.flush();
        self.result
    }
}

fn write_all_vectored(mut file: &File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const T0: u64 = 1_700_000_000;

    fn at(nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(T0, nanos)
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        log: CriLog,
        out: Lines,
        err: Lines,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.log");
            let log = CriLog::open(Some(&path)).unwrap();
            Fixture {
                _dir: dir,
                path,
                log,
                out: Lines::default(),
                err: Lines::default(),
            }
        }

        fn stdout(&mut self, data: &[u8]) {
            self.log.chunk(Stream::Stdout, &mut self.out, data, at(5));
        }

        fn stdout_eof(&mut self) {
            self.log.eof(Stream::Stdout, &mut self.out, at(6));
        }

        fn stderr(&mut self, data: &[u8]) {
            self.log.chunk(Stream::Stderr, &mut self.err, data, at(7));
        }

        fn text(&self) -> String {
            std::fs::read_to_string(&self.path).unwrap()
        }

        /// (stream, tag, text) of every record.
        fn records(&self) -> Vec<(String, String, String)> {
            parse(&self.text())
        }
    }

    fn parse(text: &str) -> Vec<(String, String, String)> {
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "torn record in {text:?}"
        );
        text.lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let ts = f.next().unwrap();
                assert_eq!(ts.len(), 30, "timestamp {ts}");
                (
                    f.next().unwrap().to_string(),
                    f.next().unwrap().to_string(),
                    f.next().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn rec(stream: &str, tag: &str, text: &str) -> (String, String, String) {
        (stream.into(), tag.into(), text.into())
    }

    #[test]
    fn whole_lines_are_full_records_with_the_chunk_time() {
        let mut f = Fixture::new();
        f.stdout(b"hello\nworld\n");
        f.stderr(b"oops\n");
        assert_eq!(
            f.text(),
            "2023-11-14T22:13:20.000000005Z stdout F hello\n\
             2023-11-14T22:13:20.000000005Z stdout F world\n\
             2023-11-14T22:13:20.000000007Z stderr F oops\n"
        );
    }

    #[test]
    fn timestamps_are_utc_with_nine_fraction_digits() {
        let h = Header::new(at(123_456_789), Stream::Stdout, Tag::Partial);
        assert_eq!(h.bytes(), b"2023-11-14T22:13:20.123456789Z stdout P ");
        let h = Header::new(UNIX_EPOCH, Stream::Stderr, Tag::Full);
        assert_eq!(h.bytes(), b"1970-01-01T00:00:00.000000000Z stderr F ");
    }

    #[test]
    fn a_100_kib_line_becomes_six_partial_records_and_the_rest() {
        let mut f = Fixture::new();
        let line = vec![b'x'; 100 * 1024];
        // Arrives in uneven pieces, as from a pipe.
        for piece in line.chunks(7000) {
            f.stdout(piece);
        }
        f.stdout(b"\n");
        let recs = f.records();
        assert_eq!(recs.len(), 7);
        for r in &recs[..6] {
            assert_eq!((r.1.as_str(), r.2.len()), ("P", MAX_LOG_LINE));
        }
        assert_eq!(
            (recs[6].1.as_str(), recs[6].2.len()),
            ("F", 100 * 1024 - 6 * MAX_LOG_LINE)
        );
        let joined: String = recs.iter().map(|r| r.2.as_str()).collect();
        assert_eq!(joined.len(), line.len());
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_one_full_record() {
        let mut f = Fixture::new();
        let mut data = vec![b'a'; MAX_LOG_LINE];
        f.stdout(&data);
        f.stdout(b"\n");
        data.push(b'b');
        data.push(b'\n');
        f.stdout(&data);
        let recs = f.records();
        let shape: Vec<(&str, usize)> = recs.iter().map(|r| (r.1.as_str(), r.2.len())).collect();
        assert_eq!(shape, [("F", MAX_LOG_LINE), ("P", MAX_LOG_LINE), ("F", 1)]);
    }

    #[test]
    fn lines_split_across_chunks_are_joined() {
        let mut f = Fixture::new();
        f.stdout(b"hel");
        f.stdout(b"lo wo");
        f.stdout(b"rld\nnext");
        f.stdout(b"\n");
        assert_eq!(
            f.records(),
            [
                rec("stdout", "F", "hello world"),
                rec("stdout", "F", "next")
            ]
        );
    }

    #[test]
    fn crlf_ends_a_line_and_other_carriage_returns_are_kept() {
        let mut f = Fixture::new();
        f.stdout(b"dos\r\nprogress 10%\rprogress 20%\n\r\n");
        f.stdout(b"split\r");
        f.stdout(b"\nbare\r");
        f.stdout(b"cr\n");
        assert_eq!(
            f.records(),
            [
                rec("stdout", "F", "dos"),
                rec("stdout", "F", "progress 10%\rprogress 20%"),
                rec("stdout", "F", ""),
                rec("stdout", "F", "split"),
                rec("stdout", "F", "bare\rcr"),
            ]
        );
    }

    #[test]
    fn a_carriage_return_after_a_full_line_is_not_counted_until_known() {
        let mut f = Fixture::new();
        let line = vec![b'a'; MAX_LOG_LINE];
        f.stdout(&line);
        f.stdout(b"\r");
        f.stdout(b"\n");
        f.stdout(&line);
        f.stdout(b"\r");
        f.stdout(b"z\n");
        let recs = f.records();
        let shape: Vec<(&str, usize)> = recs.iter().map(|r| (r.1.as_str(), r.2.len())).collect();
        assert_eq!(shape, [("F", MAX_LOG_LINE), ("P", MAX_LOG_LINE), ("F", 2)]);
        assert_eq!(recs[2].2, "\rz");
    }

    #[test]
    fn empty_lines_are_empty_full_records() {
        let mut f = Fixture::new();
        f.stdout(b"\n\na\n\n");
        assert_eq!(
            f.text().lines().map(|l| &l[31..]).collect::<Vec<_>>(),
            ["stdout F ", "stdout F ", "stdout F a", "stdout F "]
        );
    }

    #[test]
    fn an_unterminated_line_is_written_as_full_at_eof() {
        let mut f = Fixture::new();
        f.stdout(b"one\ntwo, no newline");
        assert_eq!(f.records(), [rec("stdout", "F", "one")]);
        f.stdout_eof();
        assert_eq!(
            f.records(),
            [
                rec("stdout", "F", "one"),
                rec("stdout", "F", "two, no newline")
            ]
        );
        assert!(f.text().ends_with(".000000006Z stdout F two, no newline\n"));
        // Nothing is carried into a later EOF.
        f.stdout_eof();
        assert_eq!(f.records().len(), 2);
    }

    #[test]
    fn streams_carry_their_own_partial_lines() {
        let mut f = Fixture::new();
        f.stdout(b"out-");
        f.stderr(b"err-");
        f.stdout(b"line\n");
        f.stderr(b"line\n");
        assert_eq!(
            f.records(),
            [
                rec("stdout", "F", "out-line"),
                rec("stderr", "F", "err-line")
            ]
        );
    }

    #[test]
    fn a_chunk_of_many_lines_keeps_every_line_in_order() {
        let mut f = Fixture::new();
        let mut data = Vec::new();
        for i in 0..5000 {
            data.extend_from_slice(format!("{i}\n").as_bytes());
        }
        f.stdout(&data);
        let recs = f.records();
        assert_eq!(recs.len(), 5000);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.2, i.to_string());
        }
    }

    #[test]
    fn reopen_after_rename_splits_the_lines_between_the_files() {
        let mut f = Fixture::new();
        f.stdout(b"before 1\nbefore 2\nhalf ");
        let rotated = f.path.with_extension("log.1");
        std::fs::rename(&f.path, &rotated).unwrap();
        // Until the reopen, lines still go to the renamed file.
        f.stdout(b"a line\nbefore 3\n");
        f.log.reopen().unwrap();
        f.stdout(b"after 1\n");
        f.stdout_eof();
        assert_eq!(
            parse(&std::fs::read_to_string(&rotated).unwrap()),
            [
                rec("stdout", "F", "before 1"),
                rec("stdout", "F", "before 2"),
                rec("stdout", "F", "half a line"),
                rec("stdout", "F", "before 3"),
            ]
        );
        assert_eq!(f.records(), [rec("stdout", "F", "after 1")]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&f.path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o640 & !current_umask());
    }

    fn current_umask() -> u32 {
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        nix::sys::stat::umask(old);
        old.bits()
    }

    #[test]
    fn a_failed_reopen_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("pod");
        std::fs::create_dir(&sub).unwrap();
        let mut log = CriLog::open(Some(&sub.join("c.log"))).unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        assert!(log.reopen().is_err());
        assert!(log.file.is_some());
        let mut lines = Lines::default();
        log.chunk(Stream::Stdout, &mut lines, b"x\n", at(1));
        assert!(!log.failing);
    }

    #[test]
    fn write_errors_drop_the_chunk_but_keep_the_line_state() {
        let mut log = CriLog::open(Some(Path::new("/dev/full"))).unwrap();
        let mut lines = Lines::default();
        log.chunk(Stream::Stdout, &mut lines, b"lost\nhalf", at(1));
        assert!(log.failing);
        assert_eq!(lines.carry, b"half");
        log.chunk(Stream::Stdout, &mut lines, b" line\n", at(1));
        assert!(lines.carry.is_empty());
    }

    #[test]
    fn without_a_log_path_output_is_discarded() {
        let mut log = CriLog::open(None).unwrap();
        let mut lines = Lines::default();
        log.chunk(Stream::Stdout, &mut lines, b"partial", at(1));
        log.eof(Stream::Stdout, &mut lines, at(1));
        log.reopen().unwrap();
        assert!(lines.carry.is_empty());
    }

    #[test]
    fn split_reports_what_to_carry() {
        let mut recs = Vec::new();
        let tail = split(b"ab", b"c\nde", |t, a, b| recs.push((t, [a, b].concat())));
        assert_eq!(recs, [(Tag::Full, b"abc".to_vec())]);
        assert_eq!(
            tail,
            Tail {
                carry_used: 2,
                rest: 2
            }
        );
        let tail = split(b"ab", b"cd", |_, _, _| panic!("no record"));
        assert_eq!(
            tail,
            Tail {
                carry_used: 0,
                rest: 0
            }
        );
    }
}
