//! The journal's syncs, on a thread of their own. The task that owns the core writes
//! batches to the journal and asks for a sync through each durable one (a ticket); this
//! thread syncs, reports the ticket, and at once begins the next sync if more was asked
//! for meanwhile. Started from the event loop instead, each sync began only when the loop
//! next polled the owner after the last one ended: during a durable checkout storm that
//! left the disk idle more than half the time (median 145 µs, mean 411 µs between a sync
//! ending and the next beginning, against a median sync of 219 µs).

use crate::store::JournalFile;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use tokio::sync::mpsc;

/// A sync that ended: the last ticket it covers, and its outcome.
pub type Synced = (u64, std::io::Result<()>);

/// What the owner asked for: the last ticket, in which file, and whether to stop; and
/// whether the thread waits to be woken.
#[derive(Default)]
struct Wanted {
    ticket: u64,
    file: Option<Arc<dyn JournalFile>>,
    stop: bool,
    waiting: bool,
}

type Shared = Arc<(Mutex<Wanted>, Condvar)>;

/// The owner's end: asks for syncs and hears of them ending, in order.
pub struct Syncer {
    wanted: Shared,
    synced: mpsc::UnboundedReceiver<Synced>,
}

impl Syncer {
    /// Starts the thread. It ends when this is dropped, after the sync under way.
    pub fn start() -> Syncer {
        let wanted: Shared = Arc::default();
        let (tx, synced) = mpsc::unbounded_channel();
        let work = {
            let (wanted, tx) = (wanted.clone(), tx.clone());
            move || sync_loop(&wanted, &tx)
        };
        if let Err(e) = std::thread::Builder::new()
            .name("netkey-sync".into())
            .spawn(work)
        {
            // The same loop on tokio's blocking pool: it holds one of its threads until the
            // `Syncer` is dropped.
            tracing::warn!("journal syncs run on the blocking pool (no thread of their own: {e})");
            let wanted = wanted.clone();
            tokio::task::spawn_blocking(move || sync_loop(&wanted, &tx));
        }
        Syncer { wanted, synced }
    }

    /// Asks for a sync of `file` that begins after this call, covering `ticket` (which
    /// is higher than any asked for before). Tickets asked for while a sync runs are
    /// covered by one sync after it, reported with the last of them; so every ticket not
    /// yet reported must be in `file`, which holds as the journal switches files only
    /// once all its frames are settled.
    pub fn request(&self, ticket: u64, file: Arc<dyn JournalFile>) {
        let (lock, wake) = &*self.wanted;
        let mut w = lock.lock().unwrap_or_else(PoisonError::into_inner);
        w.ticket = ticket;
        w.file = Some(file);
        // A thread in a sync looks again when it ends. Waking it costs a system call
        // (std's condition variable makes one whether or not anyone waits), which was
        // 3.8 % of the event loop in a durable checkout storm.
        if w.waiting {
            wake.notify_one();
        }
    }

    /// The next sync to end; `None` if the thread is gone (it never stops by itself).
    pub async fn ended(&mut self) -> Option<Synced> {
        self.synced.recv().await
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.wanted;
        lock.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        wake.notify_one();
    }
}

fn sync_loop(wanted: &Shared, tx: &mpsc::UnboundedSender<Synced>) {
    let (lock, wake) = &**wanted;
    let mut done = 0;
    loop {
        let (ticket, file) = {
            let mut w = lock.lock().unwrap_or_else(PoisonError::into_inner);
            while w.ticket == done && !w.stop {
                w.waiting = true;
                w = wake.wait(w).unwrap_or_else(PoisonError::into_inner);
                w.waiting = false;
            }
            if w.stop {
                return;
            }
            match &w.file {
                Some(f) => (w.ticket, f.clone()),
                None => return,
            }
        };
        let outcome = file.sync_data();
        done = ticket;
        if tx.send((ticket, outcome)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A file whose syncs wait for the test to let them through, and count.
    #[derive(Debug, Default)]
    struct GatedFile {
        gate: Mutex<bool>,
        open: Condvar,
        syncs: AtomicU64,
        fail: AtomicBool,
    }

    impl GatedFile {
        fn set_open(&self, open: bool) {
            *self.gate.lock().unwrap() = open;
            self.open.notify_all();
        }
    }

    impl JournalFile for GatedFile {
        fn size(&self) -> io::Result<u64> {
            Ok(0)
        }
        fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: u64, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            let mut g = self.gate.lock().unwrap();
            while !*g {
                g = self.open.wait(g).unwrap();
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(io::Error::other("the disk failed"));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn tickets_asked_for_during_a_sync_are_covered_by_one_sync_after_it() {
        let file = Arc::new(GatedFile::default());
        let mut syncer = Syncer::start();
        syncer.request(1, file.clone());
        while file.syncs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Asked for while sync 1 runs: they must not count as covered by it.
        syncer.request(2, file.clone());
        syncer.request(3, file.clone());
        file.set_open(true);
        let (ticket, outcome) = syncer.ended().await.unwrap();
        assert_eq!(ticket, 1);
        outcome.unwrap();
        let (ticket, outcome) = syncer.ended().await.unwrap();
        assert_eq!(ticket, 3, "2 and 3 share the sync that began after both");
        outcome.unwrap();
        assert_eq!(file.syncs.load(Ordering::SeqCst), 2);
        // No sync runs until asked: the next report is 4's, after one more sync.
        syncer.request(4, file.clone());
        assert_eq!(syncer.ended().await.unwrap().0, 4);
        assert_eq!(file.syncs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_sync_is_reported_with_its_ticket_and_the_next_one_still_runs() {
        let file = Arc::new(GatedFile::default());
        file.fail.store(true, Ordering::SeqCst);
        file.set_open(true);
        let mut syncer = Syncer::start();
        syncer.request(7, file.clone());
        let (ticket, outcome) = syncer.ended().await.unwrap();
        assert_eq!(ticket, 7);
        assert!(outcome.is_err());
        file.fail.store(false, Ordering::SeqCst);
        syncer.request(8, file.clone());
        let (ticket, outcome) = syncer.ended().await.unwrap();
        assert_eq!(ticket, 8);
        outcome.unwrap();
    }

    #[tokio::test]
    async fn dropping_the_owners_end_stops_the_thread_after_the_sync_under_way() {
        let file = Arc::new(GatedFile::default());
        let syncer = Syncer::start();
        syncer.request(1, file.clone());
        while file.syncs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let wanted = syncer.wanted.clone();
        drop(syncer);
        // The thread is in its sync: it holds the shared state until that ends.
        assert_eq!(Arc::strong_count(&wanted), 2);
        file.set_open(true);
        // Then it lets go of it, having begun no other sync. (The bound only turns a
        // thread that never stops into a failure instead of a hang.)
        let bound = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while Arc::strong_count(&wanted) > 1 {
            assert!(std::time::Instant::now() < bound, "the thread did not stop");
            tokio::task::yield_now().await;
        }
        assert_eq!(file.syncs.load(Ordering::SeqCst), 1);
    }
}
