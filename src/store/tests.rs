//! Store tests: replay rebuilds exactly what was committed, a power cut loses nothing
//! that was committed durably, schema and lock refusals, backups.

// Some tests commit without recording redb's allocator state, as older builds did.
#![allow(clippy::disallowed_methods)]

use super::*;
use crate::core::{CheckoutItem, PoolId};
use crate::key::{demo_key, Entry};
use std::sync::{Arc, Mutex};

/// A disk whose writes stay volatile until `sync_data`; `cut` keeps only what was synced,
/// as a power loss does.
#[derive(Debug, Clone, Default)]
pub(crate) struct PowerCutDisk {
    inner: Arc<Mutex<Disk>>,
}

#[derive(Debug, Default)]
struct Disk {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    syncs: u64,
    /// While set, `sync_data` fails: the disk is gone.
    fail_syncs: bool,
    /// While set, `sync_data` writes everything and then reports a failure anyway (an
    /// fsync whose error says nothing of what reached the disk).
    fail_syncs_after_writing: bool,
    /// Called after each sync, with the disk unlocked: a power cut there keeps what every
    /// sync so far wrote, and nothing written after.
    after_sync: Option<AfterSync>,
}

#[derive(Clone)]
struct AfterSync(Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for AfterSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterSync")
    }
}

impl PowerCutDisk {
    pub(super) fn cut(&self) -> PowerCutDisk {
        Self::survivor(&self.inner.lock().unwrap())
    }
    /// What a disk in state `d` holds after the power comes back.
    fn survivor(d: &Disk) -> PowerCutDisk {
        PowerCutDisk {
            inner: Arc::new(Mutex::new(Disk {
                durable: d.durable.clone(),
                volatile: d.durable.clone(),
                ..Disk::default()
            })),
        }
    }
    fn syncs(&self) -> u64 {
        self.inner.lock().unwrap().syncs
    }
    pub(crate) fn fail_syncs(&self, on: bool) {
        self.inner.lock().unwrap().fail_syncs = on;
    }
    fn fail_syncs_after_writing(&self, on: bool) {
        self.inner.lock().unwrap().fail_syncs_after_writing = on;
    }
}

impl redb::StorageBackend for PowerCutDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.inner.lock().unwrap().volatile.len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let d = self.inner.lock().unwrap();
        let start = offset as usize;
        let end = start + out.len();
        if end > d.volatile.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past end",
            ));
        }
        out.copy_from_slice(&d.volatile[start..end]);
        Ok(())
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.lock().unwrap().volatile.resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut d = self.inner.lock().unwrap();
        if d.fail_syncs {
            return Err(std::io::Error::other("the disk is gone"));
        }
        d.durable = d.volatile.clone();
        d.syncs += 1;
        if d.fail_syncs_after_writing {
            return Err(std::io::Error::other("the disk reports an error"));
        }
        let after = d.after_sync.clone();
        drop(d);
        if let Some(AfterSync(f)) = after {
            f();
        }
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut d = self.inner.lock().unwrap();
        let end = offset as usize + data.len();
        if d.volatile.len() < end {
            d.volatile.resize(end, 0);
        }
        d.volatile[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

impl JournalFile for PowerCutDisk {
    fn size(&self) -> std::io::Result<u64> {
        redb::StorageBackend::len(self)
    }
    fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        redb::StorageBackend::read(self, offset, out)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        redb::StorageBackend::write(self, offset, data)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        redb::StorageBackend::sync_data(self)
    }
}

/// The database and the journal's two files, each on a disk that loses unsynced writes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Power {
    pub(crate) db: PowerCutDisk,
    /// The journal's first file: the one written until a checkpoint on another thread
    /// switches to the second.
    pub(crate) journal: PowerCutDisk,
    pub(crate) journal_b: PowerCutDisk,
}

impl Power {
    pub(crate) fn open(&self) -> (Store, Loaded) {
        Store::open_backend(
            self.db.clone(),
            [
                Box::new(self.journal.clone()),
                Box::new(self.journal_b.clone()),
            ],
        )
        .unwrap()
    }
    /// The three disks as a power cut leaves them, all at one instant: each disk is
    /// locked before any is copied, so a sync on another thread cannot land on one disk
    /// between the copies of two others (which no real power cut does).
    pub(crate) fn cut(&self) -> Power {
        let db = self.db.inner.lock().unwrap();
        let journal = self.journal.inner.lock().unwrap();
        let journal_b = self.journal_b.inner.lock().unwrap();
        Power {
            db: PowerCutDisk::survivor(&db),
            journal: PowerCutDisk::survivor(&journal),
            journal_b: PowerCutDisk::survivor(&journal_b),
        }
    }
    fn syncs(&self) -> u64 {
        self.db.syncs() + self.journal.syncs() + self.journal_b.syncs()
    }
    /// Syncs of both journal files fail (or work again).
    pub(crate) fn fail_journal_syncs(&self, on: bool) {
        self.journal.fail_syncs(on);
        self.journal_b.fail_syncs(on);
    }
}

pub(crate) const T0: Timestamp = Timestamp(1_800_000_000_000);

fn bytes(core: &Core) -> Vec<u8> {
    postcard::to_allocvec(core).unwrap()
}

/// Applies commands as the daemon does: to the core, then one commit per batch.
fn run_batch(
    store: &mut Store,
    core: &mut Core,
    now: Timestamp,
    commands: Vec<Command>,
    durable: bool,
) {
    let (record, audit) = batch(core, now, commands);
    store.commit(&record, audit, durable).unwrap();
}

/// Applies commands to the core: the batch's log record and its audit entries.
fn batch(
    core: &mut Core,
    now: Timestamp,
    commands: Vec<Command>,
) -> (BatchRecord, Vec<AuditEntry>) {
    // By reference, as the daemon applies what it logs.
    for c in &commands {
        core.apply_ref(now, c);
    }
    let audit = core.drain_events().iter().map(audit::entry_for).collect();
    (BatchRecord { now, commands }, audit)
}

/// `run_batch` of a durable batch at `T0` plus `ms`.
fn durable(store: &mut Store, core: &mut Core, ms: u64, commands: Vec<Command>) {
    run_batch(store, core, T0.plus(ms), commands, true);
}

pub(crate) fn enrol(server: &str, code: &str) -> Vec<Command> {
    vec![
        Command::CreateCode {
            pool: PoolId::default_of("DEMO"),
            code: code.into(),
        },
        Command::Enrol {
            request: crate::core::EnrolRequest {
                code: code.into(),
                name: server.into(),
                version: "1".into(),
                server_id: server.into(),
                credential: vec![7],
                existing: None,
            },
        },
    ]
}

pub(crate) fn checkout(server: &str, cams: &[&str]) -> Command {
    Command::Checkout {
        server: server.into(),
        key: None,
        items: cams.iter().map(|c| CheckoutItem::camera(c)).collect(),
        after_wait: false,
    }
}

/// Step `i` of a run: every third a release of `camera`, the rest checkouts of it.
fn checkout_or_release(server: &str, camera: &str, i: u64) -> Command {
    if i % 3 == 2 {
        Command::Release {
            server: server.into(),
            cameras: vec![camera.into()],
        }
    } else {
        checkout(server, &[camera])
    }
}

/// A store with the demo key, servers A and B, and some leases, all committed durably.
/// A store on disks that a power cut can hit, with `populated` committed.
fn started() -> (Power, Store, Core) {
    let power = Power::default();
    let (mut store, _) = power.open();
    let core = populated(&mut store);
    (power, store, core)
}

fn populated(store: &mut Store) -> Core {
    let mut core = Core::new();
    run_batch(
        store,
        &mut core,
        T0,
        vec![Command::InstallKey {
            document: demo_key(T0),
            demo: true,
        }],
        true,
    );
    run_batch(store, &mut core, T0.plus(1), enrol("A", "11111111"), true);
    run_batch(store, &mut core, T0.plus(2), enrol("B", "22222222"), true);
    run_batch(
        store,
        &mut core,
        T0.plus(3),
        vec![checkout("A", &["c1", "c2", "c3"])],
        true,
    );
    run_batch(
        store,
        &mut core,
        T0.plus(4),
        vec![checkout("B", &["c3", "c4"])],
        true,
    );
    run_batch(
        store,
        &mut core,
        T0.plus(5),
        vec![Command::Release {
            server: "A".into(),
            cameras: vec!["c1".into()],
        }],
        true,
    );
    core
}

#[test]
fn replay_rebuilds_exactly_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let mut core = populated(&mut store);
        core.reset_sessions();
        bytes(&core)
    };
    let (store, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(bytes(&loaded.core), expected);
    assert_eq!(loaded.replayed, 6);
    assert!(loaded.hwm >= T0.plus(5));
    assert!(
        audit::verify(&store.audit_records(None).unwrap(), None)
            .unwrap()
            .count
            > 5
    );
    loaded.core.check_invariants(T0.plus(5)).unwrap();
}

#[test]
fn snapshot_plus_log_equals_log_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let mut core = populated(&mut store);
    store.snapshot(&core).unwrap();
    durable(&mut store, &mut core, 9, vec![checkout("A", &["c9"])]);
    core.reset_sessions();
    let expected = bytes(&core);
    drop(store);
    let (_, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(
        loaded.replayed, 1,
        "only the record after the snapshot is replayed"
    );
    assert_eq!(bytes(&loaded.core), expected);
}

#[test]
fn power_cut_keeps_every_durable_commit_and_loses_the_rest() {
    let disk = Power::default();
    let (mut store, _) = disk.open();
    let mut core = populated(&mut store);
    let mut acknowledged = core.clone();
    acknowledged.reset_sessions();
    let before = disk.syncs();
    // Non-durable changes after the last durable one: a session opened (not acknowledged
    // to anyone). A power cut may drop it.
    run_batch(
        &mut store,
        &mut core,
        T0.plus(6),
        vec![Command::SessionOpened { server: "A".into() }],
        false,
    );
    assert_eq!(disk.syncs(), before, "a non-durable commit does not sync");
    // The power goes before the process can close the database cleanly.
    let after_cut = disk.cut();
    drop(store);
    let (_, loaded) = after_cut.open();
    assert_eq!(
        bytes(&loaded.core),
        bytes(&acknowledged),
        "every acknowledged change survives the cut"
    );
    assert!(loaded.core.holds("B", "c3", 2));
    assert!(
        !loaded.core.holds("A", "c1", 1),
        "the release was acknowledged, so it stays released"
    );
}

#[test]
fn a_database_cut_off_mid_run_opens_without_a_full_repair() {
    // Every commit records redb's allocator state, so an open after a crash loads it
    // instead of checking every page and rebuilding it (half a second at a million leases).
    let disk = Power::default();
    let (mut store, _) = disk.open();
    let mut core = populated(&mut store);
    store.checkpoint().unwrap();
    store.snapshot(&core).unwrap();
    durable(&mut store, &mut core, 9, vec![checkout("A", &["c9"])]);
    store.checkpoint().unwrap();
    durable(&mut store, &mut core, 10, vec![checkout("A", &["c10"])]);
    core.reset_sessions();
    let after_cut = disk.cut();
    drop(store);
    let (reopened, loaded) = after_cut.open();
    assert!(!loaded.repaired, "the allocator state was recorded");
    assert_eq!(bytes(&loaded.core), bytes(&core));
    // The log was replayed with events muted; the core handed back makes them again.
    let mut live = loaded.core;
    live.apply(T0.plus(11), checkout("A", &["c11"]));
    assert!(live.pending_events() > 0, "the loaded core makes events");

    // A commit that did not record it (as an older build made them) needs the full repair,
    // which still finds everything.
    let tx = reopened.db().unwrap().begin_write().unwrap();
    tx.open_table(META)
        .unwrap()
        .insert("unrecorded", [1u8].as_slice())
        .unwrap();
    tx.commit().unwrap();
    let again = after_cut.cut();
    drop(reopened);
    let (_, loaded) = again.open();
    assert!(loaded.repaired, "the last commit left no allocator state");
    assert_eq!(bytes(&loaded.core), bytes(&core));
}

#[test]
fn power_cut_between_the_syncs_of_any_redb_commit_opens_without_a_full_repair() {
    // A commit that records the allocator state is written in two phases, each synced:
    // a cut after any sync of the database (between the two phases of a commit, or after
    // both) must open to the acknowledged state without checking every page.
    let disk = Power::default();
    let (mut store, _) = disk.open();
    let mut core = populated(&mut store);
    let expected = Arc::new(Mutex::new(acknowledged(&core)));
    let cuts = Arc::new(Mutex::new(Vec::<(Power, Vec<u8>)>::new()));
    {
        let (power, expected, cuts) = (disk.clone(), expected.clone(), cuts.clone());
        disk.db.inner.lock().unwrap().after_sync = Some(AfterSync(Arc::new(move || {
            let state = expected.lock().unwrap().clone();
            cuts.lock().unwrap().push((power.cut(), state));
        })));
    }
    for i in 0..12u64 {
        let cmd = checkout_or_release("B", &format!("c{}", 10 + i % 5), i);
        durable(&mut store, &mut core, 10 + i, vec![cmd]);
        *expected.lock().unwrap() = acknowledged(&core);
        match i % 4 {
            1 => store.checkpoint().unwrap(),
            3 => store.snapshot(&core).unwrap(),
            _ => {}
        }
    }
    disk.db.inner.lock().unwrap().after_sync = None;
    let cuts = std::mem::take(&mut *cuts.lock().unwrap());
    assert!(
        cuts.len() >= 18,
        "two syncs per commit: {} cuts",
        cuts.len()
    );
    for (n, (power, state)) in cuts.into_iter().enumerate() {
        let (_, loaded) = power.open();
        assert!(!loaded.repaired, "cut {n} needed a full repair");
        assert_eq!(acknowledged(&loaded.core), state, "cut {n}");
    }
}

#[test]
fn power_cut_at_every_point_of_a_run_keeps_acknowledged_state() {
    // Cut after each durable commit of a longer run: the reopened state is always the
    // one acknowledged at that point.
    let disk = Power::default();
    let (mut store, _) = disk.open();
    let mut core = Core::new();
    run_batch(
        &mut store,
        &mut core,
        T0,
        vec![Command::InstallKey {
            document: demo_key(T0),
            demo: true,
        }],
        true,
    );
    durable(&mut store, &mut core, 1, enrol("A", "11111111"));
    for i in 0..20u64 {
        let cmd = checkout_or_release("A", &format!("c{}", i % 7), i);
        run_batch(&mut store, &mut core, T0.plus(10 + i), vec![cmd], true);
        // Some steps move the journal into redb, so cuts fall both before and after a
        // checkpoint, and the journal is written over its old frames from then on.
        if i % 4 == 3 {
            store.checkpoint().unwrap();
        }
        let mut expect = core.clone();
        expect.reset_sessions();
        let (reopened, loaded) = disk.cut().open();
        assert_eq!(bytes(&loaded.core), bytes(&expect), "after step {i}");
        assert_eq!(
            reopened.head(),
            store.head(),
            "the audit chain, after step {i}"
        );
        assert_eq!(
            reopened.audit_records(None).unwrap(),
            store.audit_records(None).unwrap(),
            "after step {i}"
        );
        assert_eq!(reopened.hwm(), store.hwm(), "after step {i}");
    }
}

#[test]
fn a_newer_schema_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        let tx = store.db().unwrap().begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("schema", 99u32.to_le_bytes().as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 99 }),
        "{err}"
    );
    assert!(err.to_string().contains("newer netkeyd"), "{err}");
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_first, _) = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    assert!(err.to_string().contains("another netkeyd"), "{err}");
}

#[test]
fn a_store_closed_while_a_forked_child_holds_a_copy_of_its_lock_lets_the_next_one_open() {
    // A child forked elsewhere in the process shares the lock's open file until its exec:
    // a copy of the descriptor stands in for it.
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = Store::open(dir.path()).unwrap();
    let child_copy = first._lock.as_ref().unwrap().0.try_clone().unwrap();
    drop(first);
    let (_again, _) = Store::open(dir.path()).unwrap();
    drop(child_copy);
}

#[test]
fn backup_restores_state_audit_and_the_newer_high_water_mark() {
    let a = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(a.path()).unwrap();
    let core = populated(&mut store);
    let backup = Backup::take(&store, &core, T0.plus(100))
        .unwrap()
        .to_bytes()
        .unwrap();
    drop(store);

    // A target whose own high-water mark is later than the backup's keeps its own.
    let b = tempfile::tempdir().unwrap();
    {
        let (mut s, _) = Store::open(b.path()).unwrap();
        s.commit(
            &BatchRecord {
                now: T0.plus(999_999),
                commands: vec![],
            },
            vec![AuditEntry::default()],
            true,
        )
        .unwrap();
    }
    let restored = Backup::from_bytes(&backup).unwrap();
    assert_eq!(restored.restore_into(b.path()).unwrap(), T0.plus(999_999));
    let (store, loaded) = Store::open(b.path()).unwrap();
    assert!(loaded.core.holds("B", "c4", 1));
    assert_eq!(loaded.hwm, T0.plus(999_999));
    assert_eq!(
        store.audit_records(None).unwrap().len(),
        restored.audit.len()
    );

    // An older target takes the backup's mark.
    let c = tempfile::tempdir().unwrap();
    assert_eq!(
        Backup::from_bytes(&backup)
            .unwrap()
            .restore_into(c.path())
            .unwrap(),
        T0.plus(100)
    );
    assert!(Backup::from_bytes(b"not a backup").is_err());
}

#[test]
fn entries_that_expire_are_replayed_the_same() {
    // Time passing is replayed from the recorded instants.
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let mut core = Core::new();
    let mut key = demo_key(T0);
    key.entries.push(Entry {
        feature: "camera".into(),
        count: 2,
        not_after: T0.plus(50),
        order: "short".into(),
    });
    run_batch(
        &mut store,
        &mut core,
        T0,
        vec![Command::InstallKey {
            document: key,
            demo: true,
        }],
        true,
    );
    durable(&mut store, &mut core, 1, enrol("A", "11111111"));
    let cams: Vec<String> = (0..18).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = cams.iter().map(String::as_str).collect();
    durable(&mut store, &mut core, 2, vec![checkout("A", &refs)]);
    run_batch(
        &mut store,
        &mut core,
        T0.plus(60),
        vec![Command::Advance],
        false,
    );
    durable(&mut store, &mut core, 61, vec![checkout("A", &["x"])]);
    core.reset_sessions();
    let expected = bytes(&core);
    drop(store);
    let (_, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(bytes(&loaded.core), expected);
}

#[test]
fn replay_across_restarts_sees_each_restart() {
    // Incarnation 1 leaves A with an open session (its close was never logged: a crash).
    // Incarnation 2 logs Restarted, so B's move treats A as silent, in memory and in replay.
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let mut core = populated(&mut store);
    durable(
        &mut store,
        &mut core,
        6,
        vec![Command::SessionOpened { server: "A".into() }],
    );
    drop(store);
    let (mut store, loaded) = Store::open(dir.path()).unwrap();
    let mut core = loaded.core;
    durable(&mut store, &mut core, 7, vec![Command::Restarted]);
    durable(&mut store, &mut core, 8, vec![checkout("B", &["c2"])]);
    assert!(
        core.holds("B", "c2", 2),
        "A is silent after the restart: B takes c2 with a spare seat"
    );
    core.reset_sessions();
    let expected = bytes(&core);
    drop(store);
    let (_, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(bytes(&loaded.core), expected);
}

/// The state a restart must rebuild from `core`: everything but live sessions.
pub(crate) fn acknowledged(core: &Core) -> Vec<u8> {
    let mut c = core.clone();
    c.reset_sessions();
    bytes(&c)
}

fn release(server: &str, cams: &[&str]) -> Command {
    Command::Release {
        server: server.into(),
        cameras: cams.iter().map(|c| c.to_string()).collect(),
    }
}

/// Reopens after a power cut and checks the state, the audit chain and its head; returns
/// the reopened store and the disks it runs on.
fn assert_reopens_as(power: &Power, core: &Core, head: AuditHead, what: &str) -> (Store, Power) {
    let power = power.cut();
    let (reopened, loaded) = power.open();
    assert_eq!(bytes(&loaded.core), acknowledged(core), "{what}: the state");
    assert_eq!(reopened.head(), head, "{what}: the audit head");
    let records = reopened.audit_records(None).unwrap();
    assert_eq!(
        audit::verify(&records, Some(head)).unwrap(),
        head,
        "{what}: the audit chain"
    );
    (reopened, power)
}

#[test]
fn a_failed_checkpoint_keeps_every_later_commit_across_a_power_cut() {
    let (power, mut store, mut core) = started();
    power.db.fail_syncs(true);
    assert!(store.checkpoint().is_err());
    // The journal still works: these are acknowledged.
    durable(&mut store, &mut core, 6, vec![checkout("B", &["c5"])]);
    durable(&mut store, &mut core, 7, vec![release("A", &["c2"])]);
    assert!(store.checkpoint().is_err(), "the database is still gone");
    let (reopened, _) = assert_reopens_as(&power, &core, store.head(), "after failed checkpoints");
    assert_eq!(reopened.hwm(), T0.plus(7));
}

#[test]
fn a_checkpoint_reported_failed_after_reaching_the_disk_loses_no_later_commit() {
    // An fsync error says nothing of what reached the disk: redb's commit may be durable
    // (journal_next moved on) though `checkpoint` failed and the journal was not restarted.
    let (power, mut store, mut core) = started();
    power.db.fail_syncs_after_writing(true);
    assert!(store.checkpoint().is_err());
    power.db.fail_syncs_after_writing(false);
    durable(&mut store, &mut core, 6, vec![checkout("B", &["c5"])]);
    durable(&mut store, &mut core, 7, vec![release("A", &["c2"])]);
    let head = store.head();
    // In this process the chain still lists whole. (redb on this test disk does not show
    // the failed commit's rows in-process, so this does not reach `audit_records`' skip
    // of records redb holds twice; a file-backed store reopened by `reload` would.)
    let listed = store.audit_records(None).unwrap();
    assert_eq!(audit::verify(&listed, Some(head)).unwrap(), head);
    let (mut reopened, power) =
        assert_reopens_as(&power, &core, head, "after an ambiguous checkpoint");
    assert_eq!(reopened.hwm(), T0.plus(7));
    // The next incarnation writes on and restarts again.
    let mut core2 = core.clone();
    core2.reset_sessions();
    run_batch(
        &mut reopened,
        &mut core2,
        T0.plus(8),
        vec![checkout("A", &["c6"])],
        true,
    );
    let head = reopened.head();
    drop(reopened);
    assert_reopens_as(&power, &core2, head, "one restart later");
}

#[test]
fn a_failed_journal_sync_then_reload_refuses_that_batch_and_keeps_the_rest() {
    let (power, mut store, mut core) = started();
    // Not synced yet: only the page cache and `pending` hold it.
    run_batch(
        &mut store,
        &mut core,
        T0.plus(6),
        vec![checkout("A", &["c6"])],
        false,
    );
    let head_before = store.head();
    let before = core.clone();

    power.journal.fail_syncs(true);
    let mut refused = core.clone();
    let (record, audit) = batch(&mut refused, T0.plus(7), vec![checkout("B", &["c5"])]);
    assert!(store.commit(&record, audit, true).is_err());
    assert_eq!(
        store.head(),
        head_before,
        "the refused batch chains nothing"
    );
    power.journal.fail_syncs(false);

    let reloaded = store.reload().unwrap();
    assert_eq!(
        bytes(&reloaded),
        acknowledged(&before),
        "the refused batch is gone"
    );
    assert_eq!(store.head(), head_before);
    core = reloaded;
    durable(&mut store, &mut core, 8, vec![checkout("B", &["c7"])]);
    let (reopened, _) = assert_reopens_as(&power, &core, store.head(), "after reload and a commit");
    assert_eq!(
        reopened.audit_records(None).unwrap(),
        store.audit_records(None).unwrap()
    );
}

#[test]
fn a_batch_whose_sync_reported_failure_does_not_come_back_after_a_power_cut() {
    // The sync wrote the frame but said it failed: the batch was answered as failed, so a
    // restart before any reload must not find it.
    let (power, mut store, core) = started();
    let head = store.head();
    power.journal.fail_syncs_after_writing(true);
    let record = BatchRecord {
        now: T0.plus(7),
        commands: vec![checkout("B", &["c5"])],
    };
    assert!(store
        .commit(&record, vec![AuditEntry::default()], true)
        .is_err());
    power.journal.fail_syncs_after_writing(false);
    assert_reopens_as(&power, &core, head, "after a failed sync");
}

#[test]
fn power_cuts_between_durable_and_non_durable_frames_keep_what_was_synced() {
    // Non-durable frames ride along with the next sync (or checkpoint); those after the
    // last one may be lost, those before never.
    let (power, mut store, mut core) = started();
    let mut synced = core.clone();
    let mut synced_head = store.head();
    for i in 0..24u64 {
        let cam = format!("n{i}");
        let cmd = if i % 3 == 2 {
            release("A", &["c2", "c3"])
        } else {
            checkout("A", &[&cam])
        };
        let durable = i % 4 == 1 || i % 7 == 0;
        run_batch(&mut store, &mut core, T0.plus(10 + i), vec![cmd], durable);
        if i % 5 == 4 {
            store.checkpoint().unwrap();
        }
        if durable || i % 5 == 4 {
            synced = core.clone();
            synced_head = store.head();
        }
        assert_reopens_as(&power, &synced, synced_head, &format!("after step {i}"));
    }
}

#[test]
fn a_restore_is_not_undone_by_journal_frames_from_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let core = populated(&mut store);
    let backup = Backup::take(&store, &core, T0.plus(5)).unwrap();
    let backup_head = store.head();
    let mut later = core.clone();
    // Batches after the backup, left in the journal (no checkpoint: a crash).
    run_batch(
        &mut store,
        &mut later,
        T0.plus(6),
        vec![checkout("B", &["c5"])],
        true,
    );
    run_batch(
        &mut store,
        &mut later,
        T0.plus(7),
        vec![release("A", &["c2"])],
        true,
    );
    drop(store);

    let backup = Backup::from_bytes(&backup.to_bytes().unwrap()).unwrap();
    backup.restore_into(dir.path()).unwrap();
    for round in 0..2 {
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(bytes(&loaded.core), acknowledged(&core), "round {round}");
        assert_eq!(store.head(), backup_head, "round {round}");
        assert_eq!(store.audit_records(None).unwrap(), backup.audit);
        assert_eq!(loaded.hwm, T0.plus(7), "the newer mark stays");
    }
    // Writing on after the restore, then restarting, replays only the new batch.
    let (mut store, loaded) = Store::open(dir.path()).unwrap();
    let mut core = loaded.core;
    durable(&mut store, &mut core, 8, vec![checkout("A", &["c9"])]);
    let head = store.head();
    drop(store);
    let (store, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(bytes(&loaded.core), acknowledged(&core));
    assert_eq!(loaded.replayed, 1);
    assert_eq!(store.head(), head);
    audit::verify(&store.audit_records(None).unwrap(), Some(head)).unwrap();
}

/// Marks the store's database as an older build left it: its schema number, and before
/// schema 2 no journal_next.
fn as_written_by_schema(store: &Store, schema: u32) {
    let tx = store.db().unwrap().begin_write().unwrap();
    {
        let mut meta = tx.open_table(META).unwrap();
        meta.insert("schema", schema.to_le_bytes().as_slice())
            .unwrap();
        if schema < 2 {
            meta.remove("journal_next").unwrap();
        }
    }
    tx.commit().unwrap();
}

/// A state directory as an older build left it: `populated`, then what `since` does, the
/// schema marked, and the journal file `absent` that build did not have removed. Opened
/// by this build, it holds the state and audit head it had.
fn reopened_after_schema(
    schema: u32,
    since: impl FnOnce(&mut Store),
    absent: &str,
) -> (tempfile::TempDir, Store, Core) {
    let dir = tempfile::tempdir().unwrap();
    let (expected, head) = {
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let core = populated(&mut store);
        since(&mut store);
        as_written_by_schema(&store, schema);
        (acknowledged(&core), store.head())
    };
    std::fs::remove_file(dir.path().join(absent)).unwrap();
    let (store, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(bytes(&loaded.core), expected);
    assert_eq!(store.head(), head);
    (dir, store, loaded.core)
}

#[test]
fn a_schema_1_directory_opens_with_its_state_and_becomes_the_current_schema() {
    // What schema 1 left: everything in redb, no journal and no journal_next.
    let (dir, mut store, mut core) =
        reopened_after_schema(1, |store| store.checkpoint().unwrap(), "journal");
    let rx = store.db().unwrap().begin_read().unwrap();
    let schema = rx
        .open_table(META)
        .unwrap()
        .get("schema")
        .unwrap()
        .unwrap()
        .value()
        .to_vec();
    drop(rx);
    assert_eq!(read_u32(&schema), SCHEMA);
    // And it writes on through the journal from frame 0.
    durable(&mut store, &mut core, 6, vec![checkout("B", &["c5"])]);
    drop(store);
    let (_, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(bytes(&loaded.core), acknowledged(&core));
}

#[test]
fn a_lowered_high_water_mark_survives_a_restart_with_or_without_a_checkpoint() {
    for checkpoint in [false, true] {
        let power = Power::default();
        let (mut store, _) = power.open();
        let mut core = populated(&mut store);
        run_batch(&mut store, &mut core, T0.plus(1_000_000), vec![], false);
        store
            .commit(
                &BatchRecord {
                    now: T0.plus(1_000_000),
                    commands: vec![],
                },
                vec![AuditEntry::default()],
                true,
            )
            .unwrap();
        store.checkpoint().unwrap();
        assert_eq!(power.cut().open().1.hwm, T0.plus(1_000_000));
        // A reset token set time back to the wall clock.
        store.lower_hwm(T0.plus(10));
        durable(&mut store, &mut core, 10, vec![Command::TimeRebased]);
        if checkpoint {
            store.checkpoint().unwrap();
        }
        let (reopened, loaded) = power.cut().open();
        assert_eq!(loaded.hwm, T0.plus(10), "checkpoint: {checkpoint}");
        assert_eq!(reopened.hwm(), T0.plus(10));
    }
}

#[test]
fn audit_records_and_backups_include_batches_still_in_the_journal() {
    let (_power, mut store, core) = started();
    let in_db = store.audit_records(None).unwrap();
    store.checkpoint().unwrap();
    let mut core2 = core.clone();
    run_batch(
        &mut store,
        &mut core2,
        T0.plus(50),
        vec![checkout("B", &["c5"])],
        true,
    );
    run_batch(
        &mut store,
        &mut core2,
        T0.plus(60),
        vec![release("B", &["c5"])],
        true,
    );
    let all = store.audit_records(None).unwrap();
    assert!(all.len() > in_db.len());
    assert_eq!(
        audit::verify(&all, Some(store.head())).unwrap(),
        store.head()
    );
    let since = store.audit_records(Some(T0.plus(60))).unwrap();
    assert!(!since.is_empty() && since.iter().all(|r| r.at >= T0.plus(60)));
    assert_eq!(since.last(), all.last());
    let backup = Backup::take(&store, &core2, T0.plus(70)).unwrap();
    assert_eq!(backup.audit, all);
    Backup::from_bytes(&backup.to_bytes().unwrap()).unwrap();
    // The same list once they are moved into redb.
    store.checkpoint().unwrap();
    assert_eq!(store.audit_records(None).unwrap(), all);
}

#[test]
fn a_usage_sample_is_durable_once_a_checkpoint_follows_it() {
    let (power, mut store, mut core) = started();
    let sample = UsageSample {
        at: T0.plus(10),
        rows: vec![UsageRow {
            key_id: "K".into(),
            feature: "camera".into(),
            in_use: 3,
            total: 16,
        }],
    };
    store.record_usage(&sample).unwrap();
    durable(&mut store, &mut core, 11, vec![checkout("B", &["c5"])]);
    store.checkpoint().unwrap();
    let (reopened, loaded) = power.cut().open();
    assert_eq!(reopened.usage_since(T0).unwrap(), vec![sample]);
    assert_eq!(bytes(&loaded.core), acknowledged(&core));
}

#[test]
fn a_reload_writes_nothing_so_it_works_while_the_disk_refuses_writes() {
    // On a full disk the journal cannot take the next batch and redb cannot take a
    // checkpoint, yet the daemon must rebuild the acknowledged state to go on renewing
    // leases in memory (tests/durability.rs runs that on a real full file system). So a
    // reload reads redb and applies the journal's batches on top, writing nothing.
    let (power, mut store, mut core) = started();
    durable(&mut store, &mut core, 6, vec![checkout("A", &["c6"])]);
    store.checkpoint().unwrap();
    durable(
        &mut store,
        &mut core,
        7,
        vec![release("A", &["c6"]), checkout("B", &["c5"])],
    );
    let head = store.head();
    power.journal.fail_syncs(true);
    let record = BatchRecord {
        now: T0.plus(8),
        commands: vec![checkout("B", &["c7"])],
    };
    assert!(store.commit(&record, Vec::new(), true).is_err());
    let db_syncs = power.db.syncs();
    let reloaded = store.reload().unwrap();
    assert_eq!(power.db.syncs(), db_syncs, "the reload wrote nothing");
    assert_eq!(
        bytes(&reloaded),
        acknowledged(&core),
        "redb plus the journal's batches, without the refused one"
    );
    assert_eq!(store.head(), head);
    assert_eq!(store.hwm(), T0.plus(7));
    // The disk comes back: the batches move into redb and nothing is lost.
    power.journal.fail_syncs(false);
    store.checkpoint().unwrap();
    assert_reopens_as(&power, &core, head, "after the disk came back");
}

/// A commit in two halves (`begin_commit`, `end_commit`), synced on another thread between.
fn commit_synced_elsewhere(
    store: &mut Store,
    record: &BatchRecord,
    audit: Vec<AuditEntry>,
) -> Result<AuditHead, StoreError> {
    let commit = store.begin_commit(record, audit, true)?;
    assert!(commit.needs_sync());
    let file = store.journal_file();
    let synced = std::thread::spawn(move || file.sync_data()).join().unwrap();
    store.end_commit(commit, synced)
}

#[test]
fn a_batch_synced_on_another_thread_survives_a_power_cut_and_one_refused_there_does_not() {
    let (power, mut store, mut core) = started();

    let (record, audit) = batch(&mut core, T0.plus(7), vec![checkout("B", &["c5"])]);
    let head = commit_synced_elsewhere(&mut store, &record, audit).unwrap();
    assert_eq!(store.head(), head);
    let (_, power) = assert_reopens_as(&power, &core, head, "after a sync on another thread");

    let (mut store, _) = power.open();
    power.journal.fail_syncs_after_writing(true);
    let mut refused = core.clone();
    let (record, audit) = batch(&mut refused, T0.plus(8), vec![checkout("B", &["c6"])]);
    assert!(commit_synced_elsewhere(&mut store, &record, audit).is_err());
    assert_eq!(store.head(), head, "the refused batch chains nothing");
    power.journal.fail_syncs_after_writing(false);
    // The store goes on from where it was: the next batch is the one that counts.
    durable(&mut store, &mut core, 9, vec![checkout("B", &["c7"])]);
    let (reopened, _) = assert_reopens_as(&power, &core, store.head(), "after a refused sync");
    assert_eq!(
        reopened.audit_records(None).unwrap().len() as u64,
        store.head().count
    );
}

/// Applies a batch to `core` and begins its commit, as the daemon does while earlier
/// batches wait for their sync.
fn begin(
    store: &mut Store,
    core: &mut Core,
    ms: u64,
    commands: Vec<Command>,
    durable: bool,
) -> Result<Commit, StoreError> {
    let (record, audit) = batch(core, T0.plus(ms), commands);
    store.begin_commit(&record, audit, durable)
}

#[test]
fn batches_begun_behind_one_waiting_for_its_sync_go_on_from_it_and_one_sync_covers_all() {
    let (power, mut store, mut core) = started();
    let head = store.head();
    let a = begin(&mut store, &mut core, 7, vec![checkout("B", &["c5"])], true).unwrap();
    let b = begin(&mut store, &mut core, 8, vec![release("A", &["a1"])], true).unwrap();
    let c = begin(
        &mut store,
        &mut core,
        9,
        vec![checkout("B", &["c6"])],
        false,
    )
    .unwrap();
    assert_eq!(store.head(), head, "nothing has ended yet");
    assert!(
        store.checkpoint().is_err(),
        "a checkpoint would move batches not yet durable"
    );
    let file = store.journal_file();
    let synced = std::thread::spawn(move || file.sync_data()).join().unwrap();
    assert!(synced.is_ok());
    store.end_commit(a, Ok(())).unwrap();
    store.end_commit(b, Ok(())).unwrap();
    let last = store.end_commit(c, Ok(())).unwrap();
    assert_eq!(store.head(), last);
    assert!(
        last.count > head.count,
        "the batches chained their audit records"
    );
    // All three were written before the one sync began.
    let (mut reopened, power) = assert_reopens_as(&power, &core, last, "after one sync");
    // And the store goes on from them, checkpoint included.
    durable(&mut reopened, &mut core, 10, vec![checkout("B", &["c7"])]);
    reopened.checkpoint().unwrap();
    assert_reopens_as(&power, &core, reopened.head(), "after a checkpoint");
}

#[test]
fn a_failed_sync_fails_every_batch_begun_after_it_and_a_power_cut_brings_none_back() {
    let (power, mut store, mut core) = started();
    let head = store.head();
    let before = core.clone();
    let a = begin(&mut store, &mut core, 7, vec![checkout("B", &["c5"])], true).unwrap();
    let b = begin(&mut store, &mut core, 8, vec![checkout("B", &["c6"])], true).unwrap();
    // The sync wrote both frames and then reported a failure.
    power.journal.fail_syncs_after_writing(true);
    let synced = store.journal_file().sync_data();
    assert!(store.end_commit(a, synced).is_err());
    power.journal.fail_syncs_after_writing(false);
    assert!(
        store.end_commit(b, Ok(())).is_err(),
        "a batch begun after a failed one fails with it"
    );
    assert_eq!(store.head(), head, "the refused batches chain nothing");
    let mut core = store.reload().unwrap();
    assert_eq!(
        bytes(&core),
        acknowledged(&before),
        "the refused batches are gone"
    );
    durable(&mut store, &mut core, 9, vec![checkout("B", &["c7"])]);
    assert_reopens_as(
        &power,
        &core,
        store.head(),
        "after the refusal and a commit",
    );
}

#[test]
fn batches_end_in_the_order_they_began() {
    let (_power, mut store, mut core) = started();
    let head = store.head();
    let a = begin(&mut store, &mut core, 7, vec![checkout("B", &["c5"])], true).unwrap();
    let b = begin(&mut store, &mut core, 8, vec![checkout("B", &["c6"])], true).unwrap();
    assert!(store.end_commit(b, Ok(())).is_err(), "out of order");
    assert!(store.end_commit(a, Ok(())).is_err(), "failed with it");
    assert_eq!(store.head(), head);
}

#[test]
fn a_refused_batch_is_zeroed_before_a_checkpoint_so_a_restart_does_not_take_it() {
    let (power, mut store, mut core) = started();
    let before = core.clone();
    let head = store.head();
    let a = begin(&mut store, &mut core, 7, vec![checkout("B", &["c5"])], true).unwrap();
    // The sync writes the frame and reports a failure; then the disk refuses the sync
    // that would make its zeroing durable.
    power.journal.fail_syncs_after_writing(true);
    let synced = store.journal_file().sync_data();
    power.journal.fail_syncs_after_writing(false);
    power.journal.fail_syncs(true);
    assert!(store.end_commit(a, synced).is_err());
    // The disk comes back, and the daemon stops before it writes again: its last
    // snapshot checkpoints the journal.
    power.journal.fail_syncs(false);
    let core = store.reload().unwrap();
    assert_eq!(bytes(&core), acknowledged(&before));
    store.snapshot(&core).unwrap();
    assert_reopens_as(&power, &before, head, "after a checkpoint behind a refusal");
}

#[test]
fn a_backup_taken_while_batches_wait_for_their_sync_carries_their_audit_records() {
    // The backup's answer waits behind those batches, so it goes out only once they are
    // durable; its core already holds their changes, and so must its audit log.
    let (_power, mut store, mut core) = started();
    let a = begin(&mut store, &mut core, 7, vec![checkout("B", &["c5"])], true).unwrap();
    let b = begin(&mut store, &mut core, 8, vec![release("B", &["c5"])], true).unwrap();
    let backup = Backup::take(&store, &core, T0.plus(9)).unwrap();
    store.end_commit(a, Ok(())).unwrap();
    let head = store.end_commit(b, Ok(())).unwrap();
    assert_eq!(audit::verify(&backup.audit, Some(head)).unwrap(), head);
    assert_eq!(backup.audit, store.audit_records(None).unwrap());
    // A backup taken after a failure carries none of the failed batches.
    let c = begin(
        &mut store,
        &mut core,
        10,
        vec![checkout("B", &["c6"])],
        true,
    )
    .unwrap();
    assert!(store
        .end_commit(c, Err(std::io::Error::other("the disk is gone")))
        .is_err());
    let core = store.reload().unwrap();
    let backup = Backup::take(&store, &core, T0.plus(11)).unwrap();
    assert_eq!(audit::verify(&backup.audit, Some(head)).unwrap(), head);
}

#[test]
fn a_batch_ended_late_after_a_failure_does_not_fork_the_batches_begun_since() {
    let power = Power::default();
    let (mut store, _) = power.open();
    populated(&mut store);
    let mut doomed = store.reload().unwrap();
    let a = begin(
        &mut store,
        &mut doomed,
        7,
        vec![checkout("B", &["c5"])],
        true,
    )
    .unwrap();
    let b = begin(
        &mut store,
        &mut doomed,
        8,
        vec![checkout("B", &["c6"])],
        true,
    )
    .unwrap();
    assert!(store
        .end_commit(a, Err(std::io::Error::other("the disk is gone")))
        .is_err());
    let mut core = store.reload().unwrap();
    let c = begin(&mut store, &mut core, 9, vec![checkout("B", &["c7"])], true).unwrap();
    // `b` failed with `a`; ending it only now must not make the store forget `c`.
    assert!(store.end_commit(b, Ok(())).is_err());
    let d = begin(
        &mut store,
        &mut core,
        10,
        vec![checkout("A", &["c8"])],
        true,
    )
    .unwrap();
    let synced = store.journal_file().sync_data();
    store.end_commit(c, synced).unwrap();
    let head = store.end_commit(d, Ok(())).unwrap();
    assert_reopens_as(&power, &core, head, "after a late end");
}

/// How the sync that ends some batches turns out (`interleavings_of_begin_end_failure_...`).
#[derive(Clone, Copy, Debug)]
enum SyncOutcome {
    /// Batches that need no sync end without one (a durable one among them gets a sync).
    None,
    Ok,
    /// The disk writes everything and reports a failure; it works again at once.
    FailsAfterWriting,
    /// The disk writes nothing and reports a failure; it works again at once.
    Fails,
    /// The sync writes and fails, and so does the zeroing's: the disk comes back only
    /// for the checkpoint that follows (a daemon that stops).
    FailsThenCheckpoint,
}

#[derive(Clone, Debug)]
enum Step {
    Begin {
        server: bool,
        camera: u8,
        release: bool,
        durable: bool,
    },
    End(usize, SyncOutcome),
    Checkpoint,
    /// A checkpoint (or a snapshot with one) begun for another thread.
    BeginWrite {
        snapshot: bool,
    },
    /// That thread's write, on a database disk that works, fails, or writes and then
    /// reports a failure.
    Write(SyncOutcome),
    EndWrite,
    Reload,
    PowerCut,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let outcome = prop_oneof![
        Just(SyncOutcome::None),
        Just(SyncOutcome::Ok),
        Just(SyncOutcome::FailsAfterWriting),
        Just(SyncOutcome::Fails),
        Just(SyncOutcome::FailsThenCheckpoint),
    ];
    prop_oneof![
        4 => (any::<bool>(), 0u8..6, any::<bool>(), any::<bool>()).prop_map(
            |(server, camera, release, durable)| Step::Begin { server, camera, release, durable }
        ),
        3 => (1usize..4, outcome).prop_map(|(n, o)| Step::End(n, o)),
        1 => Just(Step::Checkpoint),
        1 => any::<bool>().prop_map(|snapshot| Step::BeginWrite { snapshot }),
        1 => prop_oneof![
            6 => Just(SyncOutcome::Ok),
            1 => Just(SyncOutcome::Fails),
            1 => Just(SyncOutcome::FailsAfterWriting),
            // The write did not run (its blocking task failed): redb goes on working.
            2 => Just(SyncOutcome::None),
        ]
        .prop_map(Step::Write),
        1 => Just(Step::EndWrite),
        1 => Just(Step::Reload),
        1 => Just(Step::PowerCut),
    ]
}

/// A write to redb through the test's steps: begun, then written (with its outcome).
enum Background {
    Begun(RedbWrite, usize),
    Written(Result<(), StoreError>, usize),
}

/// The core after the batches of `log`, over `base`.
fn replayed_core(base: &Core, log: &[(u64, Vec<Command>, bool)]) -> Core {
    let mut core = base.clone();
    for (ms, commands, _) in log {
        for c in commands {
            core.apply(T0.plus(*ms), c.clone());
        }
    }
    core.drain_events();
    core
}

/// The state after the batches of `log`, over `base`.
fn replayed(base: &Core, log: &[(u64, Vec<Command>, bool)]) -> Vec<u8> {
    acknowledged(&replayed_core(base, log))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Batches are begun, ended in order with the outcome of a sync (or none), fail, are
    /// checkpointed, reloaded and cut off by power cuts, in any order: a restart keeps
    /// every batch ended after a sync (and all before it), never one that failed, and
    /// otherwise only some prefix of those written; a reload is exactly the batches ended.
    #[test]
    fn interleavings_of_begin_end_failure_and_power_cuts_keep_ended_batches_and_no_failed_one(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        let mut power = Power::default();
        let (mut store, _) = power.open();
        let base = populated(&mut store);
        let mut core = base.clone();
        // Every batch not failed, in the order written: (instant, commands, durable).
        let mut log: Vec<(u64, Vec<Command>, bool)> = Vec::new();
        // How many of `log` are ended; how many of them a sync made durable.
        let mut ended = 0usize;
        let mut synced_to = 0usize;
        let mut begun: std::collections::VecDeque<Commit> = Default::default();
        // Batches failed with an earlier one, ended late (between later batches).
        let mut failed: Vec<Commit> = Vec::new();
        // The write to redb under way, and how many batches had ended when it began.
        let mut background: Option<Background> = None;
        // A write to redb failed: redb refuses all work until a restart reopens it (a
        // file-backed store reopens it at once; these test disks cannot).
        let mut db_failed = false;
        let mut ms = 10u64;
        for step in steps {
            match step {
                Step::Begin { server, camera, release: rel, durable } => {
                    ms += 1;
                    let server = if server { "A" } else { "B" };
                    let cam = format!("c{camera}");
                    let command = if rel { release(server, &[&cam]) } else { checkout(server, &[&cam]) };
                    let commit = begin(&mut store, &mut core, ms, vec![command.clone()], durable)
                        .expect("a write to a working disk");
                    log.push((ms, vec![command], durable));
                    begun.push_back(commit);
                    if let Some(late) = failed.pop() {
                        assert!(store.end_commit(late, Ok(())).is_err(), "a batch behind a failed one");
                    }
                }
                Step::End(n, outcome) => {
                    let n = n.min(begun.len());
                    if n == 0 {
                        continue;
                    }
                    let any_durable = log[ended..ended + n].iter().any(|b| b.2);
                    let disks = [&power.journal, &power.journal_b];
                    let synced = match outcome {
                        SyncOutcome::None if !any_durable => None,
                        SyncOutcome::None | SyncOutcome::Ok => Some(store.journal_file().sync_data()),
                        SyncOutcome::FailsAfterWriting | SyncOutcome::FailsThenCheckpoint => {
                            disks.iter().for_each(|d| d.fail_syncs_after_writing(true));
                            let r = store.journal_file().sync_data();
                            disks.iter().for_each(|d| d.fail_syncs_after_writing(false));
                            Some(r)
                        }
                        SyncOutcome::Fails => {
                            power.fail_journal_syncs(true);
                            let r = store.journal_file().sync_data();
                            power.fail_journal_syncs(false);
                            Some(r)
                        }
                    };
                    match synced {
                        Some(Err(e)) => {
                            // The zeroing of the failed frames is refused, and a checkpoint
                            // must finish it. (Not while a write to redb is under way: then
                            // nothing would before a power cut, which is the window the
                            // journal's `fail_unsettled` describes.)
                            let then_checkpoint = matches!(outcome, SyncOutcome::FailsThenCheckpoint)
                                && background.is_none()
                                && !db_failed;
                            if then_checkpoint {
                                power.fail_journal_syncs(true);
                            }
                            let first = begun.pop_front().expect("n > 0");
                            assert!(store.end_commit(first, Err(e)).is_err());
                            power.fail_journal_syncs(false);
                            // Ended later, each after the next batch begins.
                            failed.extend(begun.drain(..));
                            log.truncate(ended);
                            match store.reload() {
                                Ok(reloaded) => {
                                    core = reloaded;
                                    assert_eq!(bytes(&core), replayed(&base, &log), "reloaded after a failure");
                                }
                                Err(_) if db_failed => core = replayed_core(&base, &log),
                                Err(e) => panic!("a reload: {e}"),
                            }
                            if then_checkpoint {
                                store.checkpoint().expect("a checkpoint with nothing begun");
                            }
                        }
                        synced => {
                            let sync_ran = synced.is_some();
                            for _ in 0..n {
                                let commit = begun.pop_front().expect("n <= begun");
                                store.end_commit(commit, Ok(())).expect("an end after a good sync");
                                ended += 1;
                            }
                            if sync_ran {
                                synced_to = ended;
                            }
                        }
                    }
                }
                Step::Checkpoint if background.is_some() || db_failed => {
                    // Refused while batches wait for the write under way; harmless.
                    let _ = store.checkpoint();
                }
                Step::Checkpoint => {
                    assert_eq!(store.checkpoint().is_ok(), begun.is_empty(), "a checkpoint waits for every batch to end");
                    if begun.is_empty() {
                        // redb holds them now.
                        synced_to = ended;
                    }
                }
                Step::BeginWrite { snapshot } => {
                    if background.is_some() || !begun.is_empty() || db_failed {
                        continue;
                    }
                    let write = if snapshot {
                        Some(store.begin_snapshot(&core).expect("a snapshot with nothing begun"))
                    } else {
                        store.begin_checkpoint().expect("a checkpoint with nothing begun")
                    };
                    background = write.map(|w| Background::Begun(w, ended));
                }
                Step::Write(outcome) => {
                    background = match background.take() {
                        Some(Background::Begun(write, at)) if matches!(outcome, SyncOutcome::None) => {
                            drop(write);
                            Some(Background::Written(Err(StoreError::Db("did not run".into())), at))
                        }
                        Some(Background::Begun(write, at)) => {
                            power.db.fail_syncs(matches!(outcome, SyncOutcome::Fails));
                            power.db.fail_syncs_after_writing(matches!(outcome, SyncOutcome::FailsAfterWriting));
                            let written = write.write();
                            power.db.fail_syncs(false);
                            power.db.fail_syncs_after_writing(false);
                            db_failed |= written.is_err();
                            Some(Background::Written(written, at))
                        }
                        other => other,
                    };
                }
                Step::EndWrite => {
                    background = match background.take() {
                        Some(Background::Written(written, at)) => {
                            let ok = written.is_ok();
                            assert_eq!(store.end_write(written).is_ok(), ok);
                            if ok {
                                // redb holds every batch ended when it began.
                                synced_to = synced_to.max(at);
                            }
                            None
                        }
                        other => other,
                    };
                }
                Step::Reload => {
                    if begun.is_empty() && !db_failed {
                        core = store.reload().expect("a reload");
                        assert_eq!(bytes(&core), replayed(&base, &log), "reloaded");
                    }
                }
                Step::PowerCut => {
                    power = power.cut();
                    begun.clear();
                    failed.clear();
                    background = None;
                    db_failed = false;
                    let (reopened, loaded) = power.open();
                    let found = bytes(&loaded.core);
                    let kept = (synced_to..=log.len())
                        .find(|&k| replayed(&base, &log[..k]) == found);
                    let Some(kept) = kept else {
                        panic!("after a power cut: not the batches synced ({synced_to}) plus some of the {} written after", log.len() - synced_to);
                    };
                    let records = reopened.audit_records(None).expect("audit records");
                    assert_eq!(audit::verify(&records, Some(reopened.head())).expect("an audit chain"), reopened.head());
                    log.truncate(kept);
                    ended = kept;
                    synced_to = kept;
                    store = reopened;
                    core = loaded.core;
                }
            }
        }
    }
}

#[test]
fn a_mark_lowered_while_a_batch_waits_for_its_sync_is_not_raised_again_by_it() {
    for checkpoint in [false, true] {
        let power = Power::default();
        let (mut store, _) = power.open();
        let mut core = populated(&mut store);
        // Begun at the old reckoning of time, before a reset token set it back.
        let a = begin(
            &mut store,
            &mut core,
            1_000_000,
            vec![checkout("B", &["c5"])],
            true,
        )
        .unwrap();
        store.lower_hwm(T0.plus(10));
        let b = begin(&mut store, &mut core, 10, vec![Command::TimeRebased], true).unwrap();
        let synced = store.journal_file().sync_data();
        store.end_commit(a, synced).unwrap();
        assert_eq!(store.hwm(), T0.plus(10), "the batch begun before it");
        store.end_commit(b, Ok(())).unwrap();
        assert_eq!(store.hwm(), T0.plus(10));
        if checkpoint {
            store.checkpoint().unwrap();
        }
        let (reopened, loaded) = power.cut().open();
        assert_eq!(loaded.hwm, T0.plus(10), "checkpoint: {checkpoint}");
        assert_eq!(reopened.hwm(), T0.plus(10));
        assert_eq!(bytes(&loaded.core), acknowledged(&core));
    }
}

#[test]
fn while_a_snapshot_is_written_nothing_else_writes_to_redb_and_checkpoints_wait() {
    // redb takes one write at a time: another on the event loop would wait for the
    // snapshot, stalling every connection.
    let (_power, mut store, mut core) = started();
    let snapshot = store.begin_snapshot(&core).unwrap();
    durable(&mut store, &mut core, 6, vec![checkout("B", &["c5"])]);
    assert!(!store.wants_checkpoint());
    assert!(store.checkpoint().is_err(), "the journal keeps the batch");
    let sample = UsageSample {
        at: T0.plus(6),
        rows: Vec::new(),
    };
    assert!(store.record_usage(&sample).is_err());
    assert!(store.snapshot(&core).is_err());
    assert!(store.begin_snapshot(&core).is_err());
    // Reads go on: a backup taken now holds the batch's audit records.
    let backup = Backup::take(&store, &core, T0.plus(6)).unwrap();
    assert_eq!(backup.audit, store.audit_records(None).unwrap());

    store.end_write(snapshot.write()).unwrap();
    store.checkpoint().unwrap();
    store.record_usage(&sample).unwrap();
}

#[test]
fn a_snapshot_is_refused_while_a_batch_waits_for_its_sync() {
    // The core serialized would hold a batch that may yet fail.
    let (_power, mut store, mut core) = started();
    let a = begin(&mut store, &mut core, 7, vec![checkout("B", &["c5"])], true).unwrap();
    assert!(store.begin_snapshot(&core).is_err());
    assert!(!store.write_under_way());
    store.end_commit(a, Ok(())).unwrap();
    let snapshot = store.begin_snapshot(&core).unwrap();
    store.end_write(snapshot.write()).unwrap();
}

#[test]
fn a_failed_snapshot_leaves_the_log_whole_and_waits_for_as_many_records_again() {
    let (power, mut store, mut core) = started();
    store.set_snapshot_every(2);
    durable(&mut store, &mut core, 6, vec![checkout("B", &["c5"])]);
    assert!(store.wants_snapshot());
    let snapshot = store.begin_snapshot(&core).unwrap();
    durable(&mut store, &mut core, 7, vec![release("A", &["c2"])]);
    power.db.fail_syncs(true);
    assert!(store.end_write(snapshot.write()).is_err());
    assert!(!store.write_under_way());
    assert_reopens_as(&power, &core, store.head(), "after a failed snapshot");
    // Not again at once: a failing disk is not asked at every turn of the loop.
    assert!(!store.wants_snapshot());
    durable(&mut store, &mut core, 8, vec![checkout("A", &["c6"])]);
    assert!(!store.wants_snapshot());
    durable(&mut store, &mut core, 9, vec![checkout("A", &["c7"])]);
    assert!(store.wants_snapshot());
    assert_reopens_as(&power, &core, store.head(), "after more batches");
}

#[test]
fn a_failed_journal_sync_while_a_snapshot_is_written_reloads_without_the_refused_batch() {
    let (power, mut store, mut core) = started();
    let snapshot = store.begin_snapshot(&core).unwrap();
    durable(&mut store, &mut core, 6, vec![checkout("B", &["c5"])]);
    let head = store.head();
    power.fail_journal_syncs(true);
    let mut refused = core.clone();
    let (record, audit) = batch(&mut refused, T0.plus(7), vec![checkout("B", &["c6"])]);
    assert!(store.commit(&record, audit, true).is_err());
    let reloaded = store.reload().unwrap();
    assert_eq!(bytes(&reloaded), acknowledged(&core));
    power.fail_journal_syncs(false);
    store.end_write(snapshot.write()).unwrap();
    durable(&mut store, &mut core, 8, vec![checkout("A", &["c6"])]);
    assert_eq!(store.head().count, head.count + 1);
    assert_reopens_as(
        &power,
        &core,
        store.head(),
        "after the reload and the snapshot",
    );
}

#[test]
fn a_failed_checkpoint_on_another_thread_keeps_its_batches_in_the_journal() {
    let (power, mut store, mut core) = started();
    let write = store.begin_checkpoint().unwrap().expect("batches to move");
    durable(&mut store, &mut core, 6, vec![checkout("B", &["c5"])]);
    power.db.fail_syncs(true);
    let written = write.write();
    assert!(written.is_err());
    assert!(store.end_write(written).is_err());
    assert!(!store.write_under_way());
    assert!(
        !store.wants_checkpoint(),
        "the next try waits for another CHECKPOINT_BYTES"
    );
    // The journal keeps every batch: those the write would have moved, and those since.
    durable(&mut store, &mut core, 7, vec![release("A", &["c2"])]);
    assert_reopens_as(&power, &core, store.head(), "after a failed checkpoint");
}

#[test]
fn a_checkpoint_or_snapshot_written_on_another_thread_while_batches_go_on_loses_none() {
    for snapshot in [false, true] {
        let what = if snapshot { "snapshot" } else { "checkpoint" };
        let (power, mut store, mut core) = started();
        let write = if snapshot {
            store.begin_snapshot(&core).unwrap()
        } else {
            store.begin_checkpoint().unwrap().expect("batches to move")
        };
        assert_eq!(write.is_snapshot(), snapshot);
        assert!(store.write_under_way());
        assert!(
            !store.wants_checkpoint() && !store.wants_snapshot(),
            "one at a time"
        );
        // Batches go on into the journal's other file; a power cut now finds redb as it
        // was and both files.
        durable(&mut store, &mut core, 6, vec![checkout("B", &["c5"])]);
        durable(&mut store, &mut core, 7, vec![release("A", &["c2"])]);
        let before = format!("{what}: before it is written");
        assert_reopens_as(&power, &core, store.head(), &before);
        // Reads see the batches being moved: the audit chain and a reload are whole.
        let head = store.head();
        let records = store.audit_records(None).unwrap();
        assert_eq!(audit::verify(&records, Some(head)).unwrap(), head, "{what}");
        assert_eq!(
            bytes(&store.reload().unwrap()),
            acknowledged(&core),
            "{what}"
        );

        let written = std::thread::spawn(move || write.write()).join().unwrap();
        let unended = format!("{what}: written, not ended");
        assert_reopens_as(&power, &core, store.head(), &unended);
        store.end_write(written).unwrap();
        assert!(!store.write_under_way());
        // The next goes back to the first file, written over from its start.
        let write = store.begin_checkpoint().unwrap().expect("batches to move");
        durable(&mut store, &mut core, 8, vec![checkout("A", &["c6"])]);
        store.end_write(write.write()).unwrap();
        durable(&mut store, &mut core, 9, vec![checkout("A", &["c7"])]);
        let after = format!("{what}: after a checkpoint more");
        let (reopened, power) = assert_reopens_as(&power, &core, store.head(), &after);
        drop(reopened);
        let (_, loaded) = power.open();
        // A snapshot holds the batches before it: only the four since are replayed.
        assert_eq!(loaded.replayed, if snapshot { 4 } else { 10 }, "{what}");
    }
}

#[test]
fn a_checkpoint_asked_for_while_one_is_written_does_not_free_the_file_it_moves() {
    // With nothing new to move, a checkpoint asked for while another is written must not
    // take the batches that one moves for being in redb: if that write then fails, the
    // next checkpoint would switch back and write over them.
    for ask in ["checkpoint", "begin_checkpoint", "snapshot"] {
        let (power, mut store, mut core) = started();
        let write = store.begin_checkpoint().unwrap().expect("batches to move");
        let asked = match ask {
            "checkpoint" => store.checkpoint(),
            "begin_checkpoint" => store.begin_checkpoint().map(|w| assert!(w.is_none())),
            _ => store.snapshot(&core),
        };
        assert!(asked.is_err(), "{ask}: refused while a write is under way");
        // The write did not run (the daemon's blocking task failed): nothing reached redb.
        drop(write);
        assert!(store
            .end_write(Err(StoreError::Db("the write did not run".into())))
            .is_err());
        durable(&mut store, &mut core, 6, vec![checkout("B", &["c5"])]);
        let again = store.begin_checkpoint().unwrap().expect("batches to move");
        durable(&mut store, &mut core, 7, vec![release("A", &["c2"])]);
        let what = format!("{ask}: a checkpoint later, not yet written");
        assert_reopens_as(&power, &core, store.head(), &what);
        store.end_write(again.write()).unwrap();
        let what = format!("{ask}: once it is written");
        assert_reopens_as(&power, &core, store.head(), &what);
    }
}

#[test]
fn a_schema_2_directory_with_batches_in_its_one_journal_file_opens_with_them() {
    // Batches only in `journal`, as schema 2 left them: no checkpoint since.
    let (dir, mut store, mut core) = reopened_after_schema(2, |_| {}, "journal.1");
    assert!(dir.path().join("journal.1").exists());
    // The second file is grown on first use, after a switch to it.
    let write = store.begin_checkpoint().unwrap();
    assert!(write.is_none(), "the open moved the batches into redb");
    durable(&mut store, &mut core, 6, vec![checkout("B", &["c5"])]);
    let write = store.begin_checkpoint().unwrap().expect("a batch to move");
    durable(&mut store, &mut core, 7, vec![release("A", &["c2"])]);
    drop(write);
    drop(store);
    let (_, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(bytes(&loaded.core), acknowledged(&core));
}

#[test]
fn a_snapshot_is_due_after_enough_log_however_few_the_records() {
    // A batch carries up to a thousand commands: counting records alone would let a crash
    // restart replay twenty thousand of them.
    let (power, mut store, mut core) = started();
    store.set_snapshot_every(1_000);
    store.set_snapshot_log_bytes(400);
    assert!(!store.wants_snapshot());
    let cams: Vec<String> = (0..8)
        .map(|i| format!("camera-with-a-long-id-{i}"))
        .collect();
    let cams: Vec<&str> = cams.iter().map(String::as_str).collect();
    durable(&mut store, &mut core, 6, vec![checkout("B", &cams)]);
    assert!(store.wants_snapshot(), "one big batch");
    // A failure waits for as much log again.
    power.db.fail_syncs(true);
    let write = store.begin_snapshot(&core).unwrap();
    assert!(store.end_write(write.write()).is_err());
    power.db.fail_syncs(false);
    assert!(!store.wants_snapshot());
    durable(&mut store, &mut core, 7, vec![release("B", &cams)]);
    durable(&mut store, &mut core, 8, vec![checkout("B", &cams)]);
    assert!(store.wants_snapshot());
    assert_reopens_as(&power, &core, store.head(), "after the failed snapshot");
}

/// A backup taken with `netkeyctl backup` by the schema-3 build, from a demo daemon:
/// recorder-A (srv-20f18094c28c) holding cam-1 and cam-3 and revoking cam-2 at epoch 1,
/// recorder-B (srv-a223e1c7ee55) holding cam-2 at epoch 2, cam-4 and cam-5. Schema 3
/// wrote every lease's terms in full.
const SCHEMA_3_BACKUP: &[u8] = include_bytes!("../../tests/fixtures/schema3.backup");
const A: &str = "srv-20f18094c28c";
const B: &str = "srv-a223e1c7ee55";

fn holds_the_schema_3_leases(core: &Core) {
    for (server, camera, epoch) in [
        (A, "cam-1", 1),
        (A, "cam-3", 1),
        (B, "cam-2", 2),
        (B, "cam-4", 1),
        (B, "cam-5", 1),
    ] {
        assert!(core.holds(server, camera, epoch), "{server} {camera}");
    }
    assert!(!core.holds(A, "cam-2", 1));
}

#[test]
fn a_schema_3_backup_with_the_terms_in_every_lease_restores_them() {
    let backup = Backup::from_bytes(SCHEMA_3_BACKUP).unwrap();
    holds_the_schema_3_leases(&backup.core);
    // Written out again, it is a backup of this schema that reads back the same.
    let written = backup.to_bytes().unwrap();
    let (schema, _) = postcard::take_from_bytes::<u32>(&written[16..]).unwrap();
    assert_eq!(schema, SCHEMA);
    let again = Backup::from_bytes(&written).unwrap();
    assert_eq!(bytes(&again.core), bytes(&backup.core));

    let dir = tempfile::tempdir().unwrap();
    backup.restore_into(dir.path()).unwrap();
    let (_store, loaded) = Store::open(dir.path()).unwrap();
    holds_the_schema_3_leases(&loaded.core);
    assert_eq!(bytes(&loaded.core), bytes(&backup.core));
}

#[test]
fn a_schema_3_snapshot_loads_and_the_next_snapshot_is_written_with_a_table_of_terms() {
    // The core's bytes as schema 3 wrote them: they follow the schema and the two instants
    // in the backup.
    let body = &SCHEMA_3_BACKUP[16..];
    let core_bytes = compact::read_as(TermsFormat::Inline, || {
        let (_, rest) = postcard::take_from_bytes::<(u32, Timestamp, Timestamp)>(body).unwrap();
        let (_, after) = postcard::take_from_bytes::<Core>(rest).unwrap();
        rest[..rest.len() - after.len()].to_vec()
    });
    let expected = bytes(&Backup::from_bytes(SCHEMA_3_BACKUP).unwrap().core);

    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        let tx = store.db().unwrap().begin_write().unwrap();
        {
            let mut snap = tx.open_table(SNAPSHOT).unwrap();
            snap.insert(0, core_bytes.as_slice()).unwrap();
            tx.open_table(META)
                .unwrap()
                .remove(SNAPSHOT_SCHEMA)
                .unwrap();
        }
        tx.commit().unwrap();
        as_written_by_schema(&store, 3);
    }
    let snapshot_schema = |store: &Store| {
        let rx = store.db().unwrap().begin_read().unwrap();
        let meta = rx.open_table(META).unwrap();
        let v = meta.get(SNAPSHOT_SCHEMA).unwrap();
        v.map(|v| read_u32(v.value()))
    };
    let (store, loaded) = Store::open(dir.path()).unwrap();
    holds_the_schema_3_leases(&loaded.core);
    assert_eq!(bytes(&loaded.core), expected);
    // Migrated, the directory is schema 4 but its snapshot is still the one schema 3 wrote,
    // and it reads so again (a restart before the next snapshot).
    assert_eq!(snapshot_schema(&store), None);
    drop(store);
    let (mut store, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(bytes(&loaded.core), expected);
    // The next snapshot, written as the daemon writes it (on another thread), is schema 4.
    let write = store.begin_snapshot(&loaded.core).unwrap();
    let written = std::thread::spawn(move || write.write()).join().unwrap();
    store.end_write(written).unwrap();
    assert_eq!(snapshot_schema(&store), Some(SCHEMA));
    drop(store);
    let (store, again) = Store::open(dir.path()).unwrap();
    assert_eq!(bytes(&again.core), expected);
    assert_eq!(snapshot_schema(&store), Some(SCHEMA));
}
