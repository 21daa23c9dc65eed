//! Group commit: many writes share one flush. Storage threads report each
//! write (`written`) without waiting for the disk; one flusher thread
//! flushes whatever is pending, then publishes how far the disk has caught
//! up. Whoever must not expose a write before it is durable (the hub,
//! before it pushes, relays or answers) awaits `synced()`, which costs a
//! future, not a thread. With one flush per write, two storage threads
//! spent their time in fsync; now one fsync covers every write before it.
//! Under load (the last flush covered `BUSY_BATCH` writes or more) the
//! flusher waits `GATHER_UNDER_LOAD` before the next one so that more writes
//! share it; a lone write is flushed at once.
//!
//! The flusher holds the database while it runs; dropping the last handle
//! stops it and waits for it (after a last flush), so once a `Storage` is
//! dropped the directory's lock is free and it can be reopened at once.
//! (It once held the database only weakly, upgrading it for each flush: a
//! drop during a flush left the flusher with the last handle, and a reopen
//! right after failed on sled's lock about one run in five.)
//!
//! Even then sled's own background I/O jobs hold the locked file a little
//! longer than the last `Db` (its source says so; under CI load, for tens of
//! ms), so `open_database` waits a bounded time for the lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

/// How long `open_database` waits for sled's lock: enough for sled's
/// background jobs of a dropped handle in this process; far too short to
/// hide another process using the directory.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// sled's page cache when the caller does not say (the config's default).
pub const DEFAULT_CACHE_BYTES: u64 = 16 << 20;

/// Opens the sled database at `path` with the default cache size.
pub fn open_database(path: &std::path::Path) -> sled::Result<sled::Db> {
    open_database_with_cache(path, DEFAULT_CACHE_BYTES)
}

/// Opens the sled database at `path` with a page cache of `cache_bytes`,
/// waiting (polling, up to `LOCK_WAIT`) while its lock is held, as it
/// briefly is after a drop in this process.
pub fn open_database_with_cache(
    path: &std::path::Path,
    cache_bytes: u64,
) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                return Err(sled::Error::Io(std::io::Error::other(format!(
                    "{e}; is another tooldb-node using this data dir?"
                ))));
            }
            other => return other,
        }
    }
}

struct Inner {
    /// Writes begun so far: anything a read can see was begun before it ended.
    started: AtomicU64,
    /// Writes finished so far (never more than `started`).
    requested: Mutex<u64>,
    wake: Condvar,
    /// The highest count known to be on disk.
    flushed: watch::Sender<u64>,
    /// Set when the last handle goes: flush once more and end.
    closing: AtomicBool,
}

/// Owned by the handles together: its drop stops the flusher and joins it.
struct Flusher {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        // Under the lock, so the flusher cannot miss the wake-up.
        drop(
            self.inner
                .requested
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        self.inner.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A handle to the node's flusher; cheap to clone.
#[derive(Clone)]
pub struct Durability {
    inner: Option<Arc<Inner>>,
    _flusher: Option<Arc<Flusher>>,
}

impl Durability {
    /// Starts the flusher thread for `db`; it ends when every handle is gone.
    pub fn start(db: sled::Db) -> Durability {
        let (flushed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            started: AtomicU64::new(0),
            requested: Mutex::new(0),
            wake: Condvar::new(),
            flushed,
            closing: AtomicBool::new(false),
        });
        let state = inner.clone();
        let thread = std::thread::Builder::new()
            .name("tooldb-flusher".into())
            .spawn(move || flusher(state, db))
            .expect("the flusher thread starts");
        Durability {
            _flusher: Some(Arc::new(Flusher {
                inner: inner.clone(),
                thread: Some(thread),
            })),
            inner: Some(inner),
        }
    }

    /// No durability wait at all (`sync_writes = false`).
    pub fn off() -> Durability {
        Durability {
            inner: None,
            _flusher: None,
        }
    }

    /// Call before applying a write; the guard reports it finished when
    /// dropped (on every path, so the counts stay balanced).
    pub fn write(&self) -> WriteGuard<'_> {
        if let Some(i) = &self.inner {
            i.started.fetch_add(1, Ordering::SeqCst);
        }
        WriteGuard(self)
    }

    fn finished(&self) {
        if let Some(i) = &self.inner {
            let mut r = i.requested.lock().unwrap_or_else(|e| e.into_inner());
            *r += 1;
            i.wake.notify_one();
        }
    }

    /// Resolves once every write begun before the call is on disk: a reader
    /// calls it after reading, so whatever it read is durable before it is
    /// shown; a writer after writing.
    pub async fn synced(&self) {
        let Some(i) = &self.inner else {
            return;
        };
        let target = i.started.load(Ordering::SeqCst);
        let mut rx = i.flushed.subscribe();
        // The flusher only stops when every handle (so `self`) is gone.
        let _ = rx.wait_for(|f| *f >= target).await;
    }
}

/// Reports its write finished when dropped.
pub struct WriteGuard<'a>(&'a Durability);

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// A flush covering this many writes means the node is under load.
const BUSY_BATCH: u64 = 8;
/// How long a flush under load waits for more writes to join it.
const GATHER_UNDER_LOAD: Duration = Duration::from_micros(1000);

fn flusher(inner: Arc<Inner>, db: sled::Db) {
    let mut done = 0u64;
    let mut busy = false;
    loop {
        let closing = inner.closing.load(Ordering::SeqCst);
        let target = {
            let guard = inner.requested.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = inner
                .wake
                .wait_timeout_while(guard, Duration::from_millis(200), |r| {
                    *r <= done && !inner.closing.load(Ordering::SeqCst)
                })
                .unwrap_or_else(|e| e.into_inner());
            *guard
        };
        if target > done || closing {
            // Under load (the last flush covered many writes) wait a little
            // for more to join this one: fewer flushes, each covering more.
            // A lone write (light load) is flushed at once.
            if busy && !closing {
                std::thread::sleep(GATHER_UNDER_LOAD);
            }
            let target = if busy {
                *inner.requested.lock().unwrap_or_else(|e| e.into_inner())
            } else {
                target
            };
            busy = target - done >= BUSY_BATCH;
            match db.flush() {
                Ok(_) => {
                    done = target;
                    inner.flushed.send_replace(done);
                }
                Err(e) => {
                    // Writes stay unconfirmed (nothing is exposed) while the
                    // disk fails; retry rather than lie.
                    tracing::error!(error = %e, "flush failed; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if closing {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn synced_waits_for_a_flush_covering_every_earlier_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let d = Durability::start(db.clone());
        for i in 0..100u32 {
            let _w = d.write();
            db.insert(i.to_be_bytes(), &b"x"[..]).unwrap();
        }
        d.synced().await;
        let flushed = *d.inner.as_ref().unwrap().flushed.borrow();
        assert!(flushed >= 100, "{flushed}");
        // Nothing pending: resolves at once.
        d.synced().await;
        Durability::off().synced().await;
    }

    #[test]
    fn a_dropped_database_can_be_reopened_at_once() {
        // Many rounds, as the old race lost about one in five.
        let dir = tempfile::tempdir().unwrap();
        for i in 0..50u32 {
            let db = open_database(dir.path()).expect("the lock is free again");
            let d = Durability::start(db.clone());
            {
                let _w = d.write();
                db.insert(i.to_be_bytes(), &b"x"[..]).unwrap();
            }
            drop((d, db));
        }
        let db = open_database(dir.path()).unwrap();
        assert_eq!(db.len(), 50);
    }

    #[test]
    fn a_database_held_open_is_a_clear_error_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let _held = sled::open(dir.path()).unwrap();
        // sled's lock is per open file description, so a second open in this
        // process conflicts as another process would.
        let err = open_database(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another tooldb-node"), "{err}");
    }
}
