//! Durable state under the state directory: in redb, a log of command batches over the
//! last snapshot of the core, and the hash-chained audit log; in front of it, the journal
//! (see `journal`). A batch is committed before any of its answers go out (group commit):
//! appended to the journal and, when it must be durable, synced before `commit` returns,
//! or in two halves (`begin_commit`, `end_commit`) with the sync elsewhere in between.
//! Batches move from the journal into redb in bulk (`checkpoint`), and on open whatever
//! the journal holds beyond the last checkpoint is moved in first; replaying the log over
//! the snapshot then rebuilds exactly the acknowledged state (invariant 4). Non-durable
//! commits are only for session changes and time passing, which a crash may lose
//! harmlessly. Checkpoints and snapshots are written to redb on another thread
//! (`begin_checkpoint`, `begin_snapshot`, then `RedbWrite::write` and `end_write`) while
//! batches go on into the journal: at a million leases a snapshot takes most of a second
//! to write, and a checkpoint of 2 MiB of batches about 20 ms.

pub mod audit;
mod backup;
mod journal;
mod usage;

pub use audit::{AuditEntry, AuditError, AuditHead, AuditRecord};
pub use backup::Backup;
pub use journal::JournalFile;
pub use usage::{UsageRow, UsageSample, RETENTION_MS as USAGE_RETENTION_MS};

use crate::core::compact::{self, TermsFormat};
use crate::core::{Command, Core, Timestamp};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The on-disk schema this build writes. Older ones migrate; newer ones are refused.
/// Schema 2 added the journal: a build that did not know it would miss its batches.
/// Schema 3 added the journal's second file (`journal.1`), for the same reason.
/// Schema 4 writes snapshots and backups with the lease terms in a table
/// (`compact::TermsFormat`); the snapshot a directory holds says which way it was written
/// (`SNAPSHOT_SCHEMA`), since a migrated directory keeps its older one until the next.
pub const SCHEMA: u32 = 4;
/// The meta entry that says the schema the stored snapshot was written in: none for
/// snapshots written before schema 4.
const SNAPSHOT_SCHEMA: &str = "snapshot_schema";

/// How a snapshot or backup written in `schema` holds its lease terms.
pub(crate) fn terms_format(schema: u32) -> TermsFormat {
    if schema >= 4 {
        TermsFormat::Table
    } else {
        TermsFormat::Inline
    }
}
/// Batches are moved from the journal into redb once the journal holds this much.
const CHECKPOINT_BYTES: u64 = 2 << 20;
/// Snapshot after this many log records, so restarts replay little...
const SNAPSHOT_EVERY: u64 = 20_000;
/// ...or after this much log, whichever comes first: batches hold from one command to a
/// thousand, and a restart after a crash replays what the log holds since the last
/// snapshot. Camera moves cost the most to replay per byte: after netkey-bench's full
/// fleet, the log of its 100,000 moves (15 MB: 195,000 checkouts and 97,000
/// acknowledgements) held `Store::open` for 2.2-2.8 s where the same state without its log
/// opens in 0.35-0.46 s, while 9 MB of single-camera checkouts replayed in 0.3 s. Servers
/// looked up by inline ids (`IdMap`) and `settle` skipping the overdraft of keys that have
/// none brought that replay from 4.9 to 3.9 billion instructions (callgrind) and the open
/// to 1.6-1.9 s (on a noisy machine). A storm can run the log to half as much again
/// before its snapshot (`snapshot_overdue`): 12 MiB, less than that 15 MB, so the worst
/// crash in a move storm should open its store in under 2 s (not measured at 12 MiB
/// itself since). Each snapshot
/// in a storm costs it a seventh of a second of the event loop and a second of a blocking
/// thread (at 6 MiB, one fell inside netkey-bench's 200,000 durable checkouts, which ran
/// at 27,324/s against 31,206/s in the run before), so the bound is not set lower.
const SNAPSHOT_LOG_BYTES: u64 = 8 << 20;
/// redb's page cache. The store writes and reads back only at start, so its default
/// (1 GiB) would only keep a copy of the snapshot and the log resident beside the core.
const CACHE_BYTES: usize = 16 << 20;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshot");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("another netkeyd already uses the state directory {0} (its lock file is held)")]
    Locked(PathBuf),
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state store: {0}")]
    Db(String),
    #[error("the state directory was written by a newer netkeyd (schema {found}; this one reads up to {SCHEMA}); upgrade netkeyd or restore a backup")]
    NewerSchema { found: u32 },
    #[error("the state store is damaged: {0}")]
    Corrupt(String),
}

fn fail<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// One committed batch: the instant and the commands applied at it, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub now: Timestamp,
    pub commands: Vec<Command>,
}

#[derive(Debug)]
pub struct Store {
    /// `None` after an I/O error closed it: redb refuses all work after one, so the next
    /// `reload` reopens the file. Shared only with a `RedbWrite` under way.
    db: Option<Arc<Database>>,
    /// The database file, when the store is file-backed (it can be reopened).
    file: Option<PathBuf>,
    _lock: Option<StateLock>,
    dir: PathBuf,
    journal: journal::Journal,
    /// Frames appended since the last checkpoint, to move into redb at the next.
    pending: Vec<journal::Frame>,
    /// The write to redb under way on another thread, if any.
    writing: Option<Writing>,
    /// Journal bytes at which a failed checkpoint is tried again.
    retry_checkpoint_at: u64,
    /// How much journal makes a checkpoint due: `CHECKPOINT_BYTES` but in tests.
    checkpoint_bytes: u64,
    /// Checkpoints (snapshots among them) and snapshots written on another thread and
    /// ended well since the store opened.
    checkpoints_taken: u64,
    snapshots_taken: u64,
    next_seq: u64,
    since_snapshot: LogSince,
    /// Log records, and bytes of log, after which a snapshot is due.
    snapshot_every: u64,
    snapshot_log_bytes: u64,
    /// `since_snapshot` at which one is tried again after a failure (either part).
    retry_snapshot_at: LogSince,
    /// The size of the last snapshot written, to size the next one's buffer.
    snapshot_len: Option<usize>,
    head: AuditHead,
    /// The latest instant ever committed: the wall-clock high-water mark.
    hwm: Timestamp,
    /// The same three after the batches begun and not yet ended (`begin_commit`), which
    /// the next batch goes on from.
    ahead: Ahead,
    /// Counts `lower_hwm` calls: a batch begun before one does not raise the mark again.
    lowered: u64,
}

/// How much the log holds since the last snapshot.
#[derive(Clone, Copy, Debug, Default)]
struct LogSince {
    records: u64,
    bytes: u64,
}

impl LogSince {
    fn add(&mut self, other: LogSince) {
        self.records += other.records;
        self.bytes += other.bytes;
    }

    fn add_record(&mut self, bytes: usize) {
        self.add(LogSince {
            records: 1,
            bytes: bytes as u64,
        });
    }
}

/// The state directory's lock, released when the store goes. The lock belongs to the
/// open file, and a child forked anywhere in the process (a test harness starting
/// binaries, say) holds a copy of that until its exec closes it: closing ours alone
/// would leave the lock held for that moment, and a store opened again at once refused.
#[derive(Debug)]
struct StateLock(File);

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

#[derive(Clone, Copy, Debug)]
struct Ahead {
    next_seq: u64,
    head: AuditHead,
    hwm: Timestamp,
}

/// What the store remembers of the write to redb under way.
#[derive(Debug)]
struct Writing {
    /// The batches it moves into redb: until it ends, they are read from here.
    frames: Arc<Vec<journal::Frame>>,
    /// The number of the first journal frame it leaves out.
    next: u64,
    /// For a snapshot, `since_snapshot` when it began: if it fails, the log it would have
    /// covered still counts towards the next.
    snapshot: Option<LogSince>,
}

/// A checkpoint, or a snapshot with one, to write to redb away from the event loop
/// (`Store::begin_checkpoint`, `Store::begin_snapshot`): the journal's batches, and the
/// core serialized with the last log record it reflects. Hand the outcome of `write` to
/// `Store::end_write`.
#[must_use]
pub struct RedbWrite {
    db: Arc<Database>,
    frames: Arc<Vec<journal::Frame>>,
    next: u64,
    snapshot: Option<(Vec<u8>, u64)>,
}

impl std::fmt::Debug for RedbWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbWrite")
            .field("frames", &self.frames.len())
            .field("next", &self.next)
            .field(
                "snapshot",
                &self.snapshot.as_ref().map(|(b, c)| (b.len(), c)),
            )
            .finish_non_exhaustive()
    }
}

impl RedbWrite {
    pub fn is_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Moves the batches into redb and writes the snapshot (dropping the log it covers),
    /// in one durable transaction.
    pub fn write(self) -> Result<(), StoreError> {
        let tx = begin_recorded_write(&self.db)?;
        let covered = self.snapshot.as_ref().map(|(_, covered)| *covered);
        put_frames(&tx, &self.frames, self.next, covered)?;
        if let Some((core, covered)) = self.snapshot {
            put_snapshot(&tx, covered, core.len(), |room| {
                room.copy_from_slice(&core);
                Ok(())
            })?;
            // redb holds its copy now: this one need not last through the commit's syncs.
            drop(core);
        }
        tx.commit().map_err(fail)
    }
}

/// The batches a checkpoint or snapshot moved into redb, handed back by
/// `Store::end_write` to be freed where it costs nothing: tens of thousands of small
/// allocations, freed on the event loop they were 2 % of its time during durable
/// checkouts.
#[derive(Debug)]
pub struct MovedBatches {
    _frames: Option<Arc<Vec<journal::Frame>>>,
}

/// A batch written to the journal by `Store::begin_commit`, waiting for its sync.
#[derive(Debug)]
#[must_use]
pub struct Commit {
    written: journal::Written,
    /// The size of its log record, if it carries commands (and so takes the next log
    /// sequence).
    log_bytes: Option<usize>,
    head: AuditHead,
    hwm: Timestamp,
    lowered: u64,
    durable: bool,
}

impl Commit {
    /// The batch must be on disk before any of its answers go out.
    pub fn needs_sync(&self) -> bool {
        self.durable
    }
}

/// What `open` found.
#[derive(Debug)]
pub struct Loaded {
    pub core: Core,
    pub replayed: u64,
    /// redb had to check and repair its file: it was not closed cleanly, and its last
    /// commit recorded no allocator state (made by an older build, or after a write
    /// transaction was abandoned by a panic).
    pub repaired: bool,
    pub hwm: Timestamp,
}

impl Store {
    /// Opens (or creates) the store in `dir`, holding `dir/lock` so no second daemon
    /// uses the same state, and rebuilds the core from snapshot and log.
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(dir.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let file = dir.join("netkey.redb");
        let (db, repaired) = open_db(|b| b.create(&file))?;
        let journal_file = |name: &str| -> Result<Box<dyn JournalFile>, StoreError> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(dir.join(name))
                .map_err(io)?;
            Ok(Box::new(file))
        };
        let journal = [journal_file("journal")?, journal_file("journal.1")?];
        // A journal file made just now must still be there after a power cut, as must the
        // frames synced into it.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        let (mut store, loaded) = Self::finish_open(db, repaired, journal, Some(lock), dir)?;
        store.file = Some(file);
        Ok((store, loaded))
    }

    /// Opens a store on any redb backend and journal files (the power-loss tests use ones
    /// that forget unsynced writes).
    pub fn open_backend(
        backend: impl redb::StorageBackend,
        journal: [Box<dyn JournalFile>; 2],
    ) -> Result<(Store, Loaded), StoreError> {
        let (db, repaired) = open_db(|b| b.create_with_backend(backend))?;
        Self::finish_open(db, repaired, journal, None, Path::new(""))
    }

    fn finish_open(
        db: Database,
        repaired: bool,
        journal: [Box<dyn JournalFile>; 2],
        lock: Option<File>,
        dir: &Path,
    ) -> Result<(Store, Loaded), StoreError> {
        let tx = begin_recorded_write(&db)?;
        {
            let mut meta = tx.open_table(META).map_err(fail)?;
            let schema = meta
                .get("schema")
                .map_err(fail)?
                .map(|v| read_u32(v.value()));
            match schema {
                None => {
                    meta.insert("schema", SCHEMA.to_le_bytes().as_slice())
                        .map_err(fail)?;
                }
                Some(found) if found > SCHEMA => return Err(StoreError::NewerSchema { found }),
                // Schema 1 had no journal: there is nothing to move.
                Some(found) if found < SCHEMA => {
                    meta.insert("schema", SCHEMA.to_le_bytes().as_slice())
                        .map_err(fail)?;
                }
                Some(_) => {}
            }
            // The key of the journal's frame checks: made once per state directory.
            if meta.get("journal_key").map_err(fail)?.is_none() {
                let mut key = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                    .map_err(|_| fail("the system random number generator failed"))?;
                meta.insert("journal_key", key.as_slice()).map_err(fail)?;
            }
            tx.open_table(SNAPSHOT).map_err(fail)?;
            tx.open_table(LOG).map_err(fail)?;
            tx.open_table(AUDIT).map_err(fail)?;
            tx.open_table(usage::USAGE).map_err(fail)?;
        }
        tx.commit().map_err(fail)?;

        let (first, key) = journal_meta(&db)?;
        let (journal, frames) = journal::Journal::open(journal, first, &key)?;
        // Before anything is written to the journal again (from its start).
        move_into_db(&db, &frames, journal.next_number())?;
        let (core, last_seq, replayed, head, hwm) = load(&db, &[])?;
        let store = Store {
            db: Some(Arc::new(db)),
            file: None,
            _lock: lock.map(StateLock),
            dir: dir.to_path_buf(),
            journal,
            pending: Vec::new(),
            retry_checkpoint_at: 0,
            checkpoint_bytes: CHECKPOINT_BYTES,
            checkpoints_taken: 0,
            snapshots_taken: 0,
            next_seq: last_seq + 1,
            since_snapshot: replayed,
            snapshot_every: SNAPSHOT_EVERY,
            snapshot_log_bytes: SNAPSHOT_LOG_BYTES,
            retry_snapshot_at: LogSince::default(),
            snapshot_len: None,
            writing: None,
            head,
            hwm,
            ahead: Ahead {
                next_seq: last_seq + 1,
                head,
                hwm,
            },
            lowered: 0,
        };
        Ok((
            store,
            Loaded {
                core,
                replayed: replayed.records,
                repaired,
                hwm,
            },
        ))
    }

    /// Rebuilds the core from what is durable: after a failed commit the daemon drops
    /// what it applied in memory and carries on from here. Nothing is written: on a full
    /// disk this must still work.
    pub fn reload(&mut self) -> Result<Core, StoreError> {
        // A write under way still holds the database: it is reopened when that ends, if it
        // fails (a database redb refuses fails the load, and the daemon tries again).
        if self.writing.is_none() {
            self.reopen_db()?;
        }
        // redb, then what is still only in the journal.
        let unmoved: Vec<&journal::Frame> = self.unmoved().collect();
        let (core, last_seq, _, head, hwm) = load(self.db()?, &unmoved)?;
        self.next_seq = last_seq + 1;
        self.head = head;
        self.hwm = hwm;
        self.forget_begun();
        Ok(core)
    }

    fn settled(&self) -> Ahead {
        Ahead {
            next_seq: self.next_seq,
            head: self.head,
            hwm: self.hwm,
        }
    }

    /// After an error: if the journal dropped every batch not yet ended, the next batch
    /// goes on from the last one ended. An error that failed nothing (a batch a failure
    /// already failed, ended late) leaves the batches begun since then as they are.
    fn forget_begun(&mut self) {
        if self.journal.unsettled() == 0 {
            self.ahead = self.settled();
        }
    }

    /// redb refuses all work after an I/O error: a file-backed store opens it again.
    fn reopen_db(&mut self) -> Result<(), StoreError> {
        if let Some(file) = &self.file {
            // Close first: redb will not open a file it still holds.
            self.db = None;
            self.db = Some(Arc::new(open_db(|b| b.create(file))?.0));
        }
        Ok(())
    }

    fn db(&self) -> Result<&Arc<Database>, StoreError> {
        self.db
            .as_ref()
            .ok_or_else(|| StoreError::Db("the database is closed after an I/O error".into()))
    }

    /// The database, to write to: redb takes one write at a time, and one here while a
    /// snapshot is being written would stall the event loop until that ends.
    fn writer(&self) -> Result<&Arc<Database>, StoreError> {
        self.no_write_under_way()?;
        self.db()
    }

    fn no_write_under_way(&self) -> Result<(), StoreError> {
        if self.writing.is_some() {
            return Err(StoreError::Db(
                "a checkpoint or snapshot is being written; try again when it ends".into(),
            ));
        }
        Ok(())
    }

    /// The batches not yet in redb (as far as this store knows), oldest first: those a
    /// write under way moves, then those since.
    fn unmoved(&self) -> impl Iterator<Item = &journal::Frame> {
        self.writing
            .iter()
            .flat_map(|w| w.frames.iter())
            .chain(&self.pending)
    }

    pub(crate) fn db_for_restore(&self) -> Result<&Database, StoreError> {
        Ok(self.writer()?.as_ref())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn head(&self) -> AuditHead {
        self.head
    }
    pub fn hwm(&self) -> Timestamp {
        self.hwm
    }

    /// Lowers the high-water mark (a vendor's reset token set time back to the wall
    /// clock); the next commit writes it.
    pub fn lower_hwm(&mut self, to: Timestamp) {
        self.hwm = to;
        self.ahead.hwm = to;
        self.lowered += 1;
    }

    /// Commits one batch and its audit entries atomically: one frame of the journal. With
    /// `durable`, the batch is on disk when this returns.
    pub fn commit(
        &mut self,
        record: &BatchRecord,
        audit: Vec<AuditEntry>,
        durable: bool,
    ) -> Result<AuditHead, StoreError> {
        let commit = self.begin_commit(record, audit, durable)?;
        let synced = if commit.durable {
            self.journal.file().sync_data()
        } else {
            Ok(())
        };
        self.end_commit(commit, synced)
    }

    /// `commit` in two halves, so the sync can run on another thread while this one
    /// serves connections: this writes the batch to the journal; if `needs_sync`, the
    /// caller syncs `journal_file()` and hands the outcome to `end_commit`. More batches
    /// may begin meanwhile (each goes on from the one before), and they end in the order
    /// they began; one sync begun after a batch was written covers it and all before it.
    /// Until a batch ends, the store reads as if it had not begun. netkeyd's core syncs on
    /// its own thread, through `commit`; the halves, tested with the sync on another
    /// thread and under power cuts, are for a caller that overlaps batches with syncs.
    pub fn begin_commit(
        &mut self,
        record: &BatchRecord,
        audit: Vec<AuditEntry>,
        durable: bool,
    ) -> Result<Commit, StoreError> {
        let ahead = self.ahead;
        let seq = (!record.commands.is_empty()).then_some(ahead.next_seq);
        let bytes = match seq {
            Some(_) => postcard::to_extend(record, Vec::with_capacity(256)).map_err(fail)?,
            None => Vec::new(),
        };
        let mut head = ahead.head;
        let chained = audit
            .into_iter()
            .map(|entry| {
                let r = audit::chain(head, record.now, entry);
                head = AuditHead {
                    count: r.index,
                    hash: r.hash,
                };
                r
            })
            .collect();
        let hwm = ahead.hwm.max(record.now);
        let log_bytes = seq.map(|_| bytes.len());
        let frame = journal::Frame {
            number: 0,
            seq,
            record: bytes,
            audit: chained,
            hwm,
        };
        let written = match self.journal.write(frame) {
            Ok(w) => w,
            Err(e) => {
                // The journal dropped every batch not yet ended: so does the store.
                self.forget_begun();
                return Err(e);
            }
        };
        self.ahead = Ahead {
            next_seq: ahead.next_seq + u64::from(seq.is_some()),
            head,
            hwm,
        };
        Ok(Commit {
            written,
            log_bytes,
            head,
            hwm,
            lowered: self.lowered,
            durable,
        })
    }

    /// The journal's file, for syncing a `begin_commit` away from this thread.
    pub fn journal_file(&self) -> std::sync::Arc<dyn JournalFile> {
        self.journal.file()
    }

    /// Ends the oldest batch begun, with the outcome of a sync begun after it was
    /// written (`Ok` if none was needed). On an error it is not committed and never will
    /// be, nor is any batch begun after it: those end with errors too.
    pub fn end_commit(
        &mut self,
        commit: Commit,
        synced: std::io::Result<()>,
    ) -> Result<AuditHead, StoreError> {
        let frame = match self.journal.settle(commit.written, synced) {
            Ok(f) => f,
            Err(e) => {
                self.forget_begun();
                return Err(e);
            }
        };
        self.pending.push(frame);
        if let Some(bytes) = commit.log_bytes {
            self.next_seq += 1;
            self.since_snapshot.add_record(bytes);
        }
        self.head = commit.head;
        if commit.lowered == self.lowered {
            self.hwm = commit.hwm;
        }
        Ok(commit.head)
    }

    /// Whether the journal holds enough to move into redb (see `checkpoint`).
    pub fn wants_checkpoint(&self) -> bool {
        let bytes = self.journal.pending_bytes();
        self.writing.is_none()
            && bytes >= self.checkpoint_bytes
            && bytes >= self.retry_checkpoint_at
    }

    /// Moves the batches the journal holds into redb in one durable transaction, on this
    /// thread, so the journal is written from its start again. If it fails, the journal
    /// keeps them (and grows) and the next try waits for another `CHECKPOINT_BYTES`.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        if !self.batches_to_move()? {
            return Ok(());
        }
        let next = self.journal.next_number();
        let moved = self
            .writer()
            .and_then(|db| move_into_db(db, &self.pending, next));
        match moved {
            Ok(()) => {
                self.pending.clear();
                self.journal.in_redb(next);
                self.retry_checkpoint_at = 0;
                Ok(())
            }
            Err(e) => {
                self.checkpoint_failed();
                Err(e)
            }
        }
    }

    /// Whether a checkpoint has batches to move into redb. Refused while a batch waits
    /// for its sync, and while a write is under way even with nothing new to move: the
    /// batches that write moves are not in redb yet, and their file must not be taken for
    /// free. With nothing to move, the journal is written from its start again.
    fn batches_to_move(&mut self) -> Result<bool, StoreError> {
        self.journal.settled()?;
        self.no_write_under_way()?;
        if self.pending.is_empty() {
            self.journal.in_redb(self.journal.next_number());
            return Ok(false);
        }
        Ok(true)
    }

    /// Begins a checkpoint to be written on another thread (`RedbWrite::write`), while
    /// batches go on into the journal's other file. `None` if there is nothing to move.
    /// Until `end_write`, every other write to redb waits.
    pub fn begin_checkpoint(&mut self) -> Result<Option<RedbWrite>, StoreError> {
        if !self.batches_to_move()? {
            return Ok(None);
        }
        let db = self.writer()?.clone();
        if let Err(e) = self.journal.switch() {
            self.checkpoint_failed();
            return Err(e);
        }
        Ok(Some(self.begin_write(db, None)))
    }

    /// Hands the batches not yet in redb to a write, and, for a snapshot, its core.
    fn begin_write(&mut self, db: Arc<Database>, snapshot: Option<(Vec<u8>, u64)>) -> RedbWrite {
        let frames = Arc::new(std::mem::take(&mut self.pending));
        let next = self.journal.next_number();
        let since_before = snapshot.as_ref().map(|_| self.since_snapshot);
        if snapshot.is_some() {
            self.since_snapshot = LogSince::default();
        }
        self.writing = Some(Writing {
            frames: frames.clone(),
            next,
            snapshot: since_before,
        });
        RedbWrite {
            db,
            frames,
            next,
            snapshot,
        }
    }

    /// Ends the write begun, with the outcome of its `RedbWrite::write`. If it failed,
    /// its batches wait in the journal for the next checkpoint, and a snapshot's log
    /// records count towards the next one.
    pub fn end_write(
        &mut self,
        written: Result<(), StoreError>,
    ) -> Result<MovedBatches, StoreError> {
        let Some(writing) = self.writing.take() else {
            return written.map(|()| MovedBatches { _frames: None });
        };
        match written {
            Ok(()) => {
                self.journal.in_redb(writing.next);
                self.retry_checkpoint_at = 0;
                self.checkpoints_taken += 1;
                if writing.snapshot.is_some() {
                    self.retry_snapshot_at = LogSince::default();
                    self.snapshots_taken += 1;
                }
                Ok(MovedBatches {
                    _frames: Some(writing.frames),
                })
            }
            Err(e) => {
                let frames = Arc::try_unwrap(writing.frames).unwrap_or_else(|f| (*f).clone());
                self.pending.splice(0..0, frames);
                if let Some(since_before) = writing.snapshot {
                    self.since_snapshot.add(since_before);
                    self.snapshot_failed();
                }
                self.checkpoint_failed();
                Err(e)
            }
        }
    }

    /// The journal keeps its batches (and grows) until a try succeeds; the next waits for
    /// another `CHECKPOINT_BYTES`, and finds a database that accepts work (if the disk
    /// does: redb refuses all work after an I/O error).
    fn checkpoint_failed(&mut self) {
        self.retry_checkpoint_at = self.journal.pending_bytes() + self.checkpoint_bytes;
        if self.writing.is_none() {
            let _ = self.reopen_db();
        }
    }

    pub fn wants_snapshot(&self) -> bool {
        let since = self.since_snapshot;
        let retry = self.retry_snapshot_at;
        self.writing.is_none()
            && (since.records >= self.snapshot_every || since.bytes >= self.snapshot_log_bytes)
            && (since.records >= retry.records || since.bytes >= retry.bytes)
    }

    /// A due snapshot has waited long enough for a pause in durable work (the daemon's
    /// `snapshot_wanted`): the log since the last one is half as much again as makes it
    /// due (see `SNAPSHOT_LOG_BYTES` for what that costs a restart after a crash).
    pub fn snapshot_overdue(&self) -> bool {
        let since = self.since_snapshot;
        since.records >= self.snapshot_every.saturating_mul(3) / 2
            || since.bytes >= self.snapshot_log_bytes.saturating_mul(3) / 2
    }

    /// Sets how many log records make a snapshot due: for tests that want snapshots
    /// without committing `SNAPSHOT_EVERY` batches.
    #[doc(hidden)]
    pub fn set_snapshot_every(&mut self, records: u64) {
        self.snapshot_every = records.max(1);
    }

    /// Sets how much journal makes a checkpoint due: for tests that want checkpoints
    /// without writing `CHECKPOINT_BYTES`.
    #[doc(hidden)]
    pub fn set_checkpoint_bytes(&mut self, bytes: u64) {
        self.checkpoint_bytes = bytes.max(1);
    }

    /// Sets how much log makes a snapshot due: for tests.
    #[doc(hidden)]
    pub fn set_snapshot_log_bytes(&mut self, bytes: u64) {
        self.snapshot_log_bytes = bytes.max(1);
    }

    /// Checkpoints begun on another thread that ended well since the store opened
    /// (snapshots move the journal into redb too, so they count).
    pub fn checkpoints_taken(&self) -> u64 {
        self.checkpoints_taken
    }

    /// Snapshots begun on another thread that ended well since the store opened.
    pub fn snapshots_taken(&self) -> u64 {
        self.snapshots_taken
    }

    /// Whether a checkpoint or snapshot begun on another thread has not ended yet.
    pub fn write_under_way(&self) -> bool {
        self.writing.is_some()
    }

    /// Writes the core as the new snapshot and drops the log it covers, in one durable
    /// transaction, on this thread.
    pub fn snapshot(&mut self, core: &Core) -> Result<(), StoreError> {
        // The log the snapshot covers must be in redb before it is dropped there.
        self.checkpoint()?;
        let covered = self.next_seq - 1;
        // Serialized straight into the room redb reserves for it: nothing else holds a
        // copy of a state that may be a hundred megabytes.
        let len = postcard::experimental::serialized_size(core).map_err(fail)?;
        self.snapshot_len = Some(len);
        let tx = begin_recorded_write(self.writer()?)?;
        put_snapshot(&tx, covered, len, |room| {
            let written = postcard::to_slice(core, room).map_err(fail)?.len();
            if written != len {
                return Err(StoreError::Db(format!(
                    "the snapshot took {written} bytes, not the {len} measured"
                )));
            }
            Ok(())
        })?;
        tx.commit().map_err(fail)?;
        self.since_snapshot = LogSince::default();
        self.retry_snapshot_at = LogSince::default();
        Ok(())
    }

    /// Begins a snapshot of `core`, as every batch ended so far left it, with a
    /// checkpoint of the journal's batches, to be written on another thread
    /// (`RedbWrite::write`) while batches go on into the journal's other file. Refused
    /// while a batch is begun and not ended: the core would hold changes that may yet
    /// fail. Until `end_write`, every other write to redb waits.
    ///
    /// The core is serialized here, into one buffer. A copy of the core would take half
    /// the time, but its many small allocations stay resident once freed: at a million
    /// leases, resident memory grew by about 100 bytes per lease and stayed there (measured
    /// with glibc's malloc). One large buffer is an extent of its own, which the allocator
    /// returns to the system once freed.
    pub fn begin_snapshot(&mut self, core: &Core) -> Result<RedbWrite, StoreError> {
        let begun = self
            .journal
            .settled()
            .and_then(|()| Ok(self.writer()?.clone()))
            .and_then(|db| {
                let bytes = self.serialize(core).map_err(fail)?;
                self.journal.switch()?;
                Ok((db, bytes))
            });
        match begun {
            Ok((db, bytes)) => {
                let covered = self.next_seq - 1;
                Ok(self.begin_write(db, Some((bytes, covered))))
            }
            Err(e) => {
                self.snapshot_failed();
                Err(e)
            }
        }
    }

    /// The core in one buffer sized ahead, from the last snapshot's size (measured the
    /// first time): grown by doubling instead, a buffer of a hundred megabytes leaves its
    /// smaller predecessors behind, freed but resident until the allocator returns them.
    fn serialize(&mut self, core: &Core) -> Result<Vec<u8>, postcard::Error> {
        let expected = match self.snapshot_len {
            Some(last) => last + last / 8 + (64 << 10),
            None => postcard::experimental::serialized_size(core)?,
        };
        let bytes = postcard::to_extend(core, Vec::with_capacity(expected))?;
        self.snapshot_len = Some(bytes.len());
        Ok(bytes)
    }

    /// A failing disk is not asked for a snapshot (the core serialized, a second of
    /// writing) at every turn of the loop: the next try waits for as many records again.
    fn snapshot_failed(&mut self) {
        self.retry_snapshot_at = LogSince {
            records: self.since_snapshot.records + self.snapshot_every,
            bytes: self.since_snapshot.bytes + self.snapshot_log_bytes,
        };
    }

    /// The audit records of the batches begun and not yet ended, oldest first: a backup
    /// taken behind them holds their changes, and goes out only if they end well.
    pub fn begun_audit_records(&self) -> impl Iterator<Item = &AuditRecord> {
        self.journal.unsettled_audit()
    }

    /// Audit records from `since` (inclusive), oldest first.
    pub fn audit_records(&self, since: Option<Timestamp>) -> Result<Vec<AuditRecord>, StoreError> {
        let rx = self.db()?.begin_read().map_err(fail)?;
        let table = rx.open_table(AUDIT).map_err(fail)?;
        let mut out = Vec::new();
        let mut last = 0;
        for entry in table.iter().map_err(fail)? {
            let (k, v) = entry.map_err(fail)?;
            let r: AuditRecord = postcard::from_bytes(v.value())
                .map_err(|e| StoreError::Corrupt(format!("audit record {}: {e}", k.value())))?;
            last = r.index;
            if since.is_none_or(|s| r.at >= s) {
                out.push(r);
            }
        }
        // And those still only in the journal (a checkpoint that failed may have written
        // some of them into redb all the same).
        for r in self
            .unmoved()
            .flat_map(|f| &f.audit)
            .filter(|r| r.index > last)
        {
            if since.is_none_or(|s| r.at >= s) {
                out.push(r.clone());
            }
        }
        Ok(out)
    }

    /// Overwrites one audit record's bytes: only for tamper tests, which stand in for a
    /// root user editing the database file.
    #[doc(hidden)]
    pub fn tamper_audit_record(
        &mut self,
        index: u64,
        record: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.checkpoint()?;
        let tx = begin_recorded_write(self.writer()?)?;
        {
            let mut table = tx.open_table(AUDIT).map_err(fail)?;
            let rb = postcard::to_allocvec(record).map_err(fail)?;
            table.insert(index, rb.as_slice()).map_err(fail)?;
        }
        tx.commit().map_err(fail)
    }

    /// Removes the audit records after `count`: for truncation tests.
    #[doc(hidden)]
    pub fn truncate_audit(&mut self, count: u64) -> Result<(), StoreError> {
        self.checkpoint()?;
        let tx = begin_recorded_write(self.writer()?)?;
        {
            let mut table = tx.open_table(AUDIT).map_err(fail)?;
            table.retain(|k, _| k <= count).map_err(fail)?;
        }
        tx.commit().map_err(fail)
    }
}

/// Replaces the snapshot with the `len` bytes `fill` writes, a core that reflects the log
/// up to `covered`, and drops that log.
fn put_snapshot(
    tx: &redb::WriteTransaction,
    covered: u64,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut snap = tx.open_table(SNAPSHOT).map_err(fail)?;
    snap.retain(|_, _| false).map_err(fail)?;
    let mut room = snap.insert_reserve(covered, len).map_err(fail)?;
    fill(room.as_mut())?;
    drop(room);
    mark_snapshot_schema(tx)?;
    let mut log = tx.open_table(LOG).map_err(fail)?;
    log.retain(|k, _| k > covered).map_err(fail)
}

/// Records that the snapshot written in `tx` is in this build's schema.
pub(crate) fn mark_snapshot_schema(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(META)
        .map_err(fail)?
        .insert(SNAPSHOT_SCHEMA, SCHEMA.to_le_bytes().as_slice())
        .map_err(fail)?;
    Ok(())
}

/// The number of the first journal frame not yet in redb, and the journal's key.
fn journal_meta(db: &Database) -> Result<(u64, [u8; 32]), StoreError> {
    let rx = db.begin_read().map_err(fail)?;
    let meta = rx.open_table(META).map_err(fail)?;
    let next = meta
        .get("journal_next")
        .map_err(fail)?
        .map(|v| read_u64(v.value()))
        .unwrap_or(0);
    let key = meta
        .get("journal_key")
        .map_err(fail)?
        .and_then(|v| <[u8; 32]>::try_from(v.value()).ok())
        .ok_or_else(|| StoreError::Corrupt("the journal's key is missing".into()))?;
    Ok((next, key))
}

/// Writes journal frames into redb in one durable transaction (see `put_frames`).
fn move_into_db(db: &Database, frames: &[journal::Frame], next: u64) -> Result<(), StoreError> {
    let tx = begin_recorded_write(db)?;
    put_frames(&tx, frames, next, None)?;
    tx.commit().map_err(fail)
}

/// Writes journal frames into the log, the audit table and the high-water mark (the last
/// frame's: a reset token may have lowered it), with the number of the next frame.
/// Writing a frame twice writes the same rows again. Log records a snapshot in the same
/// transaction covers (up to `covered`) are left out: it drops them.
fn put_frames(
    tx: &redb::WriteTransaction,
    frames: &[journal::Frame],
    next: u64,
    covered: Option<u64>,
) -> Result<(), StoreError> {
    let Some(last) = frames.last() else {
        return Ok(());
    };
    {
        let mut log = tx.open_table(LOG).map_err(fail)?;
        let mut table = tx.open_table(AUDIT).map_err(fail)?;
        for f in frames {
            if let Some(seq) = f.seq.filter(|s| covered.is_none_or(|c| *s > c)) {
                log.insert(seq, f.record.as_slice()).map_err(fail)?;
            }
            for r in &f.audit {
                let rb = postcard::to_allocvec(r).map_err(fail)?;
                table.insert(r.index, rb.as_slice()).map_err(fail)?;
            }
        }
        let mut meta = tx.open_table(META).map_err(fail)?;
        meta.insert("hwm", last.hwm.0.to_le_bytes().as_slice())
            .map_err(fail)?;
        meta.insert("journal_next", next.to_le_bytes().as_slice())
            .map_err(fail)?;
    }
    Ok(())
}

/// Reads snapshot and log into a core; returns it with the last log sequence, how many
/// records (and bytes of them) were replayed, the audit head and the high-water mark.
fn load(
    db: &Database,
    pending: &[&journal::Frame],
) -> Result<(Core, u64, LogSince, AuditHead, Timestamp), StoreError> {
    let rx = db.begin_read().map_err(fail)?;
    let meta = rx.open_table(META).map_err(fail)?;
    let mut hwm = meta
        .get("hwm")
        .map_err(fail)?
        .map(|v| Timestamp(read_u64(v.value())))
        .unwrap_or_default();
    let snap = rx.open_table(SNAPSHOT).map_err(fail)?;
    let (mut core, snap_seq) = match snap.last().map_err(fail)? {
        Some((k, v)) => {
            // Unmarked: written before schema 4.
            let format = meta
                .get(SNAPSHOT_SCHEMA)
                .map_err(fail)?
                .map_or(TermsFormat::Inline, |v| terms_format(read_u32(v.value())));
            let core: Core = compact::read_as(format, || postcard::from_bytes(v.value()))
                .map_err(|e| StoreError::Corrupt(format!("snapshot {}: {e}", k.value())))?;
            (core, k.value())
        }
        None => (Core::new(), 0),
    };
    let log = rx.open_table(LOG).map_err(fail)?;
    let (last_seq, replayed) = core.with_events_muted(|core| {
        let mut replayed = LogSince::default();
        let mut last_seq = snap_seq;
        for entry in log.range(snap_seq + 1..).map_err(fail)? {
            let (k, v) = entry.map_err(fail)?;
            replay(core, v.value())
                .map_err(|e| StoreError::Corrupt(format!("log record {}: {e}", k.value())))?;
            last_seq = k.value();
            replayed.add_record(v.value().len());
        }
        // Batches still only in the journal. A checkpoint that reported failure may have
        // reached redb all the same: what redb holds is not applied twice.
        let in_db = last_seq;
        for f in pending.iter().filter(|f| f.seq.is_some_and(|s| s > in_db)) {
            replay(core, &f.record)
                .map_err(|e| StoreError::Corrupt(format!("journal frame {}: {e}", f.number)))?;
            last_seq = f.seq.unwrap_or(last_seq);
            replayed.add_record(f.record.len());
        }
        Ok::<_, StoreError>((last_seq, replayed))
    })?;
    core.reset_sessions();
    core.drain_events();
    let audit = rx.open_table(AUDIT).map_err(fail)?;
    let mut head = match audit.last().map_err(fail)? {
        Some((_, v)) => {
            let r: AuditRecord = postcard::from_bytes(v.value())
                .map_err(|e| StoreError::Corrupt(format!("audit record: {e}")))?;
            AuditHead {
                count: r.index,
                hash: r.hash,
            }
        }
        None => AuditHead::EMPTY,
    };
    for r in pending.iter().flat_map(|f| &f.audit) {
        if r.index > head.count {
            head = AuditHead {
                count: r.index,
                hash: r.hash,
            };
        }
    }
    if let Some(last) = pending.last() {
        hwm = last.hwm;
    }
    Ok((core, last_seq, replayed, head, hwm))
}

/// Applies one serialized log record to the core.
fn replay(core: &mut Core, bytes: &[u8]) -> Result<(), postcard::Error> {
    let record: BatchRecord = postcard::from_bytes(bytes)?;
    for command in record.commands {
        core.apply(record.now, command);
    }
    Ok(())
}

/// Begins a write transaction whose commit records redb's allocator state and commits in
/// two phases (quick repair). A database not closed cleanly is repaired when opened: without
/// that record, redb checks every page's checksum and rebuilds the allocator state from the
/// trees, which at a million leases took 0.5-0.65 s of a 1.8 s restart after SIGKILL.
/// Every commit must record it, since a crash after one that did not makes the next open
/// rebuild it all the same. The cost is a second sync per commit: on checkpoints and
/// snapshots, off the event loop, and on the loop for a usage sample every few minutes, at
/// open and at shutdown. `clippy.toml` disallows `Database::begin_write` elsewhere.
#[allow(clippy::disallowed_methods)]
fn begin_recorded_write(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut tx = db.begin_write().map_err(fail)?;
    tx.set_quick_repair(true);
    Ok(tx)
}

/// Opens redb through `open`, and says whether the file had to be repaired: it was not
/// closed cleanly, and its last commit did not record the allocator state.
fn open_db(
    open: impl FnOnce(&redb::Builder) -> Result<Database, redb::DatabaseError>,
) -> Result<(Database, bool), StoreError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let repaired = Arc::new(AtomicBool::new(false));
    let seen = repaired.clone();
    let mut builder = redb::Builder::new();
    builder
        .set_cache_size(CACHE_BYTES)
        .set_repair_callback(move |_| seen.store(true, Ordering::Relaxed));
    let db = open(&builder).map_err(fail)?;
    Ok((db, repaired.load(Ordering::Relaxed)))
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    let n = 4.min(b.len());
    a[..n].copy_from_slice(&b[..n]);
    u32::from_le_bytes(a)
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = 8.min(b.len());
    a[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
pub(crate) mod tests;
