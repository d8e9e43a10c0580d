//! Where log lines go: every thread appends its lines to one buffer, and one
//! thread writes the buffer to stdout in batches.
//!
//! Hand-written rather than `tracing-appender`'s non-blocking writer: that
//! one hands each line to its thread through a channel and, whenever the
//! queue is short (which at moderate load is always), wakes the thread and
//! makes one `write(2)` per line; with one access-log line per call, that is
//! a wake-up and a system call for every call. Here a line costs a copy
//! into the buffer under a lock; the thread is woken only when the buffer
//! turns non-empty, waits [`LINGER`] for more lines, and writes them all at
//! once.
//!
//! Lossless: once [`MAX_PENDING`] bytes wait, writers wait for the thread, as
//! they would wait for stdout itself. What is still buffered is written when
//! the [`LogGuard`] is dropped (at shutdown); a process killed outright loses
//! at most the last [`LINGER`] of lines.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer thread waits for more lines after the first one.
pub(crate) const LINGER: Duration = Duration::from_millis(2);

/// Bytes that may wait for the writer thread before writers wait too.
pub(crate) const MAX_PENDING: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    closed: bool,
    /// Writers waiting for room: the writer thread wakes them only then
    /// (a condition variable's notify is a system call whether or not
    /// anyone waits).
    waiting: usize,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer thread: lines arrived, or closing.
    arrived: Condvar,
    /// Wakes writers waiting for room.
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A thread that panicked while holding the lock left whole lines
        // behind (a line is appended in one call): keep going.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `MakeWriter` for `tracing_subscriber::fmt`: each event is formatted
/// into one buffer and handed over in one `write`.
#[derive(Clone)]
pub(crate) struct LogWriter {
    shared: Arc<Shared>,
}

/// Writes out what is buffered and stops the writer thread when dropped.
pub(crate) struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread writing to `out`.
pub(crate) fn start(out: impl Write + Send + 'static) -> std::io::Result<(LogWriter, LogGuard)> {
    let shared = Arc::new(Shared::default());
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .stack_size(64 * 1024)
        .spawn({
            let shared = shared.clone();
            move || write_out(&shared, out)
        })?;
    Ok((
        LogWriter {
            shared: shared.clone(),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_out(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut pending = shared.lock();
        while pending.lines.is_empty() && !pending.closed {
            pending = shared
                .arrived
                .wait(pending)
                .unwrap_or_else(|e| e.into_inner());
        }
        if pending.lines.is_empty() {
            return; // closed, and everything written
        }
        if !pending.closed {
            drop(pending);
            std::thread::sleep(LINGER);
            pending = shared.lock();
        }
        std::mem::swap(&mut pending.lines, &mut batch);
        let waiting = pending.waiting > 0;
        drop(pending);
        if waiting {
            shared.drained.notify_all();
        }
        // Nowhere to report a failing stdout; the lines are dropped, as
        // tracing's own writers do.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > MAX_PENDING {
            batch = Vec::new();
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogWriter {
    /// Appends whole lines (one or more, each ending in a newline).
    pub(crate) fn append(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        while pending.lines.len() >= MAX_PENDING && !pending.closed {
            pending.waiting += 1;
            pending = self
                .shared
                .drained
                .wait(pending)
                .unwrap_or_else(|e| e.into_inner());
            pending.waiting -= 1;
        }
        let was_empty = pending.lines.is_empty();
        pending.lines.extend_from_slice(line);
        drop(pending);
        if was_empty {
            self.shared.arrived.notify_one();
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.arrived.notify_one();
        self.shared.drained.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose bytes and number of writes the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            s.0.extend_from_slice(b);
            s.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_once_in_order_and_in_few_writes() {
        let sink = Sink::default();
        let (writer, guard) = start(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        w.write_all(format!("{t} {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard); // writes out the rest
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 20_000);
        for t in 0..4 {
            let mine: Vec<_> = lines
                .iter()
                .filter(|l| l.starts_with(&format!("{t} ")))
                .map(|l| l.split(' ').nth(1).unwrap().parse::<u32>().unwrap())
                .collect();
            assert_eq!(mine, (0..5_000).collect::<Vec<_>>(), "writer {t}");
        }
        assert!(writes < 2_000, "{writes} writes for 20,000 lines");
    }

    /// A `Write` that holds its first write until the test lets it go.
    struct Stalled {
        go: Option<std::sync::mpsc::Receiver<()>>,
        bytes: Arc<Mutex<usize>>,
    }

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Some(go) = self.go.take() {
                go.recv().unwrap();
            }
            *self.bytes.lock().unwrap() += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_writer_past_the_limit_waits_for_stdout_and_goes_on_when_it_drains() {
        let (go, stalled) = std::sync::mpsc::channel();
        let bytes = Arc::new(Mutex::new(0));
        let sink = Stalled {
            go: Some(stalled),
            bytes: bytes.clone(),
        };
        let (writer, guard) = start(sink).unwrap();
        let line = [b'x'; 1023]
            .iter()
            .copied()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        let lines = 2 * MAX_PENDING / line.len() + 1;
        let (done_tx, done) = std::sync::mpsc::channel();
        let appender = std::thread::spawn({
            let line = line.clone();
            move || {
                for _ in 0..lines {
                    writer.append(&line);
                }
                done_tx.send(()).unwrap();
            }
        });
        // stdout is stuck on the first batch; the buffer fills and the
        // writer waits for room rather than growing it or dropping lines.
        assert!(
            done.recv_timeout(Duration::from_millis(300)).is_err(),
            "the writer went on past the limit"
        );
        assert!(guard.shared.lock().waiting > 0, "the writer waits for room");
        go.send(()).unwrap();
        done.recv_timeout(Duration::from_secs(10))
            .expect("the writer went on once stdout drained");
        appender.join().unwrap();
        drop(guard);
        assert_eq!(*bytes.lock().unwrap(), lines * line.len());
    }

    #[test]
    fn a_quiet_line_goes_out_promptly() {
        let sink = Sink::default();
        let (mut writer, _guard) = start(sink.clone()).unwrap();
        writer.write_all(b"alone\n").unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while sink.0.lock().unwrap().0 != b"alone\n" {
            assert!(std::time::Instant::now() < until, "not written");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
