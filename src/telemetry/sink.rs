//! Where every log line goes: a bounded queue drained by one background thread that writes in
//! batches, so a request never waits on stdout or stderr unless that queue is full.
//!
//! The queue is bounded twice: [`QUEUE_CAPACITY`] entries and [`QUEUE_BYTES`] bytes of text
//! (an entry may be a batch of many access-log lines). Policy when either is reached: the
//! producer waits for room. No line is ever dropped; the waits are counted and reported in a
//! log line once the output drains, so a blocked log pipe shows up as slower serving, never
//! as missing lines.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// How many entries may wait for the writer.
pub const QUEUE_CAPACITY: usize = 16 * 1024;
/// How many bytes of log text may wait for the writer.
pub const QUEUE_BYTES: usize = 1024 * 1024;
/// What a record that formats itself on the writer counts for against [`QUEUE_BYTES`].
const RECORD_WEIGHT: usize = 256;
/// How many entries the writer formats before it writes.
const BATCH: usize = 512;

/// A log line's destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Stderr,
    Stdout,
    /// The file named by `--access-logfile`.
    AccessFile,
}

/// Something to write, formatted by the writer thread where possible.
pub enum Entry {
    Text { target: Target, text: String },
    /// Lines already rendered, a batch of them.
    Bytes { target: Target, bytes: Vec<u8> },
    Record(Box<dyn Render + Send>),
    /// Acknowledged once everything queued before it is written.
    Flush(mpsc::SyncSender<()>),
}

/// A record that formats itself on the writer thread.
pub trait Render {
    fn target(&self) -> Target;
    fn render(&self, out: &mut Vec<u8>);
}

struct Sink {
    sender: Sender<Entry>,
    waits: AtomicU64,
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    room: Mutex<()>,
    freed: Condvar,
}

impl Entry {
    fn weight(&self) -> usize {
        match self {
            Entry::Text { text, .. } => text.len(),
            Entry::Bytes { bytes, .. } => bytes.len(),
            Entry::Record(_) => RECORD_WEIGHT,
            Entry::Flush(_) => 0,
        }
    }
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts the writer thread. Before this (and if it cannot start) lines are written directly.
pub fn start(access_file: Option<File>) {
    SINK.get_or_init(|| {
        let (sender, receiver) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        // The writer lives as long as the process: it ends when the queue's sender does.
        let _ = std::thread::Builder::new()
            .name("coldbrew-log".into())
            .spawn(move || write_loop(receiver, access_file));
        Sink { sender, waits: AtomicU64::new(0), queued: AtomicUsize::new(0), room: Mutex::new(()), freed: Condvar::new() }
    });
}

/// Queues an entry, waiting if the queue is full.
pub fn submit(entry: Entry) {
    let Some(sink) = SINK.get() else {
        return write_now(entry);
    };
    let weight = entry.weight();
    let mut waited = false;
    loop {
        let queued = sink.queued.load(Ordering::Acquire);
        // An entry larger than the whole budget still goes, alone.
        if queued == 0 || queued + weight <= QUEUE_BYTES {
            if sink.queued.compare_exchange(queued, queued + weight, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                break;
            }
            continue;
        }
        if !waited {
            sink.waits.fetch_add(1, Ordering::Relaxed);
            waited = true;
        }
        let guard = sink.room.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Timed, so a wake-up that slips between the check and the wait costs little.
        let _ = sink.freed.wait_timeout(guard, Duration::from_millis(10));
    }
    match sink.sender.try_send(entry) {
        Ok(()) => {}
        Err(TrySendError::Full(entry)) => {
            if !waited {
                sink.waits.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(err) = sink.sender.send(entry) {
                sink.queued.fetch_sub(weight, Ordering::AcqRel);
                write_now(err.into_inner());
            }
        }
        Err(TrySendError::Disconnected(entry)) => {
            sink.queued.fetch_sub(weight, Ordering::AcqRel);
            write_now(entry);
        }
    }
}

/// Times a producer had to wait for room in the queue.
pub fn waits() -> u64 {
    SINK.get().map_or(0, |s| s.waits.load(Ordering::Relaxed))
}

/// Waits until everything queued so far is written, for at most `timeout`.
pub fn flush(timeout: Duration) -> bool {
    let Some(sink) = SINK.get() else { return true };
    let (ack, done) = mpsc::sync_channel(1);
    if sink.sender.send_timeout(Entry::Flush(ack), timeout).is_err() {
        return false;
    }
    done.recv_timeout(timeout).is_ok()
}

fn write_now(entry: Entry) {
    let mut out = Vec::new();
    match entry {
        Entry::Text { target, text } => {
            out.extend_from_slice(text.as_bytes());
            write_target(target, &out, None);
        }
        Entry::Bytes { target, bytes } => write_target(target, &bytes, None),
        Entry::Record(record) => {
            record.render(&mut out);
            write_target(record.target(), &out, None);
        }
        Entry::Flush(ack) => {
            let _ = ack.send(());
        }
    }
}

fn write_target(target: Target, bytes: &[u8], access_file: Option<&mut File>) {
    if bytes.is_empty() {
        return;
    }
    let _ = match target {
        Target::Stderr => std::io::stderr().lock().write_all(bytes),
        Target::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|_| out.flush())
        }
        Target::AccessFile => match access_file {
            Some(file) => file.write_all(bytes),
            None => std::io::stdout().lock().write_all(bytes),
        },
    };
}

fn write_loop(receiver: Receiver<Entry>, mut access_file: Option<File>) {
    let mut stderr = Vec::with_capacity(64 * 1024);
    let mut stdout = Vec::with_capacity(64 * 1024);
    let mut access = Vec::with_capacity(64 * 1024);
    let mut acks = Vec::new();
    let mut reported_waits = 0;
    while let Ok(first) = receiver.recv() {
        let mut weight = 0;
        for entry in std::iter::once(first).chain(receiver.try_iter().take(BATCH - 1)) {
            weight += entry.weight();
            let target = match &entry {
                Entry::Text { target, .. } | Entry::Bytes { target, .. } => *target,
                Entry::Record(record) => record.target(),
                Entry::Flush(_) => Target::Stderr,
            };
            let buf = match target {
                Target::Stderr => &mut stderr,
                Target::Stdout => &mut stdout,
                Target::AccessFile if access_file.is_some() => &mut access,
                Target::AccessFile => &mut stdout,
            };
            match entry {
                Entry::Text { text, .. } => buf.extend_from_slice(text.as_bytes()),
                // A batch of access-log lines usually arrives alone: written as it is, not copied.
                Entry::Bytes { bytes, .. } if buf.is_empty() => *buf = bytes,
                Entry::Bytes { bytes, .. } => buf.extend_from_slice(&bytes),
                Entry::Record(record) => record.render(buf),
                Entry::Flush(ack) => acks.push(ack),
            }
        }
        write_target(Target::Stderr, &stderr, None);
        write_target(Target::Stdout, &stdout, None);
        write_target(Target::AccessFile, &access, access_file.as_mut());
        stderr.clear();
        stdout.clear();
        access.clear();
        if let Some(sink) = SINK.get() {
            sink.queued.fetch_sub(weight, Ordering::AcqRel);
            sink.freed.notify_all();
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        let waits = waits();
        if waits > reported_waits && receiver.is_empty() {
            let message = format!(
                "the log output was blocked; producers waited {} time(s) for room in the log queue (no line was lost)",
                waits - reported_waits
            );
            let mut line = Vec::new();
            super::log::render_line(super::log::Level::Warning, message, &mut line);
            write_target(Target::Stderr, &line, None);
            reported_waits = waits;
        }
    }
}
