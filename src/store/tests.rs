//! Store tests: replay rebuilds exactly what was committed, a power cut loses nothing
//! that was committed durably, schema and lock refusals, backups.

use super::*;
use crate::core::{CheckoutItem, PoolId};
use crate::key::{demo_key, Entry};
use std::sync::{Arc, Mutex};

/// A disk whose writes stay volatile until `sync_data`; `cut` keeps only what was synced,
/// as a power loss does.
#[derive(Debug, Clone, Default)]
struct PowerCutDisk {
    inner: Arc<Mutex<Disk>>,
}

#[derive(Debug, Default)]
struct Disk {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    syncs: u64,
}

impl PowerCutDisk {
    fn cut(&self) -> PowerCutDisk {
        let d = self.inner.lock().unwrap();
        PowerCutDisk {
            inner: Arc::new(Mutex::new(Disk {
                durable: d.durable.clone(),
                volatile: d.durable.clone(),
                syncs: 0,
            })),
        }
    }
    fn syncs(&self) -> u64 {
        self.inner.lock().unwrap().syncs
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
        d.durable = d.volatile.clone();
        d.syncs += 1;
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

/// The database and the journal, each on a disk that loses unsynced writes.
#[derive(Debug, Clone, Default)]
struct Power {
    db: PowerCutDisk,
    journal: PowerCutDisk,
}

impl Power {
    fn open(&self) -> (Store, Loaded) {
        Store::open_backend(self.db.clone(), self.journal.clone()).unwrap()
    }
    fn cut(&self) -> Power {
        Power {
            db: self.db.cut(),
            journal: self.journal.cut(),
        }
    }
    fn syncs(&self) -> u64 {
        self.db.syncs() + self.journal.syncs()
    }
}

const T0: Timestamp = Timestamp(1_800_000_000_000);

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
    for c in &commands {
        core.apply(now, c.clone());
    }
    let audit = core.drain_events().iter().map(audit::entry_for).collect();
    store
        .commit(&BatchRecord { now, commands }, audit, durable)
        .unwrap();
}

fn enrol(server: &str, code: &str) -> Vec<Command> {
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

fn checkout(server: &str, cams: &[&str]) -> Command {
    Command::Checkout {
        server: server.into(),
        key: None,
        items: cams.iter().map(|c| CheckoutItem::camera(c)).collect(),
        after_wait: false,
    }
}

/// A store with the demo key, servers A and B, and some leases, all committed durably.
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
    run_batch(
        &mut store,
        &mut core,
        T0.plus(9),
        vec![checkout("A", &["c9"])],
        true,
    );
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
    run_batch(
        &mut store,
        &mut core,
        T0.plus(1),
        enrol("A", "11111111"),
        true,
    );
    for i in 0..20u64 {
        let cam = format!("c{}", i % 7);
        let cmd = if i % 3 == 2 {
            Command::Release {
                server: "A".into(),
                cameras: vec![cam],
            }
        } else {
            checkout("A", &[&cam])
        };
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
    run_batch(
        &mut store,
        &mut core,
        T0.plus(1),
        enrol("A", "11111111"),
        true,
    );
    let cams: Vec<String> = (0..18).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = cams.iter().map(String::as_str).collect();
    run_batch(
        &mut store,
        &mut core,
        T0.plus(2),
        vec![checkout("A", &refs)],
        true,
    );
    run_batch(
        &mut store,
        &mut core,
        T0.plus(60),
        vec![Command::Advance],
        false,
    );
    run_batch(
        &mut store,
        &mut core,
        T0.plus(61),
        vec![checkout("A", &["x"])],
        true,
    );
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
    run_batch(
        &mut store,
        &mut core,
        T0.plus(6),
        vec![Command::SessionOpened { server: "A".into() }],
        true,
    );
    drop(store);
    let (mut store, loaded) = Store::open(dir.path()).unwrap();
    let mut core = loaded.core;
    run_batch(
        &mut store,
        &mut core,
        T0.plus(7),
        vec![Command::Restarted],
        true,
    );
    run_batch(
        &mut store,
        &mut core,
        T0.plus(8),
        vec![checkout("B", &["c2"])],
        true,
    );
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
