//! Backups: a consistent copy of the state (the core, the audit chain, the time
//! high-water mark) taken while the daemon runs, and restoring one into a state
//! directory. The daemon identity never travels in a backup; a restore keeps the identity
//! already in the target directory and the newer high-water mark.

use super::audit::{self, AuditRecord};
use super::{fail, Store, StoreError, AUDIT, LOG, META, SNAPSHOT};
use crate::core::{compact, Core, Timestamp};
use serde::{Deserialize, Serialize};
use std::path::Path;

const MAGIC: &[u8; 16] = b"netkey backup v1";

/// A backup file is `MAGIC`, the schema it was written in (which says how the rest reads),
/// then this.
#[derive(Debug, Serialize, Deserialize)]
pub struct Backup {
    pub taken_at: Timestamp,
    pub hwm: Timestamp,
    pub core: Core,
    pub audit: Vec<AuditRecord>,
}

impl Backup {
    /// `core` may hold batches begun in the store and not yet ended: their audit records
    /// go with it. (The daemon answers with the backup only once they are durable.)
    pub fn take(store: &Store, core: &Core, now: Timestamp) -> Result<Backup, StoreError> {
        let mut audit = store.audit_records(None)?;
        audit.extend(store.begun_audit_records().cloned());
        Ok(Backup {
            taken_at: now,
            hwm: store.hwm().max(now),
            core: core.clone(),
            audit,
        })
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = MAGIC.to_vec();
        out.extend(postcard::to_allocvec(&(super::SCHEMA, self)).map_err(fail)?);
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Backup, StoreError> {
        let corrupt = |e: postcard::Error| StoreError::Corrupt(format!("backup file: {e}"));
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| StoreError::Corrupt("not a netkey backup file".into()))?;
        let (schema, rest) = postcard::take_from_bytes::<u32>(body).map_err(corrupt)?;
        if schema > super::SCHEMA {
            return Err(StoreError::NewerSchema { found: schema });
        }
        let b: Backup =
            compact::read_as(super::terms_format(schema), || postcard::from_bytes(rest))
                .map_err(corrupt)?;
        audit::verify(&b.audit, None)
            .map_err(|e| StoreError::Corrupt(format!("backup audit log: {e}")))?;
        Ok(b)
    }

    /// Replaces the state in `dir` with this backup. The high-water mark becomes the newer
    /// of the backup's and the directory's.
    pub fn restore_into(&self, dir: &Path) -> Result<Timestamp, StoreError> {
        let (store, _) = Store::open(dir)?;
        let hwm = store.hwm().max(self.hwm);
        let bytes = postcard::to_allocvec(&self.core).map_err(fail)?;
        let tx = super::begin_recorded_write(store.db_for_restore()?)?;
        {
            let mut snap = tx.open_table(SNAPSHOT).map_err(fail)?;
            snap.retain(|_, _| false).map_err(fail)?;
            snap.insert(0, bytes.as_slice()).map_err(fail)?;
            super::mark_snapshot_schema(&tx)?;
            tx.open_table(LOG)
                .map_err(fail)?
                .retain(|_, _| false)
                .map_err(fail)?;
            let mut table = tx.open_table(AUDIT).map_err(fail)?;
            table.retain(|_, _| false).map_err(fail)?;
            for r in &self.audit {
                let rb = postcard::to_allocvec(r).map_err(fail)?;
                table.insert(r.index, rb.as_slice()).map_err(fail)?;
            }
            tx.open_table(META)
                .map_err(fail)?
                .insert("hwm", hwm.0.to_le_bytes().as_slice())
                .map_err(fail)?;
        }
        tx.commit().map_err(fail)?;
        Ok(hwm)
    }
}
