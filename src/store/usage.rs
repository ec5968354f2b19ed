//! Usage history: what each key's features had in use at fixed instants, for the web
//! console's usage-over-time chart. Samples are a convenience, not state: they are
//! written without waiting for the disk, a crash may lose the last few, and anything
//! older than `RETENTION_MS` is dropped as new ones arrive.

use super::{fail, Store, StoreError};
use crate::core::time::DAY;
use crate::core::Timestamp;
use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

pub(super) const USAGE: TableDefinition<u64, &[u8]> = TableDefinition::new("usage");
/// How long samples are kept: the chart's longest span (30 days) and a day more.
pub const RETENTION_MS: u64 = 31 * DAY;

/// Seats of one feature of one key in use at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub key_id: String,
    pub feature: String,
    pub in_use: u64,
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSample {
    pub at: Timestamp,
    pub rows: Vec<UsageRow>,
}

impl Store {
    /// Records one sample and drops those past the retention.
    pub fn record_usage(&mut self, sample: &UsageSample) -> Result<(), StoreError> {
        let bytes = postcard::to_allocvec(&sample.rows).map_err(fail)?;
        // Durable on its own (one sync every few minutes): redb is otherwise written
        // durably only at checkpoints, which a quiet site reaches rarely.
        let tx = super::begin_recorded_write(self.writer()?)?;
        {
            let mut table = tx.open_table(USAGE).map_err(fail)?;
            table
                .insert(sample.at.millis(), bytes.as_slice())
                .map_err(fail)?;
            let cutoff = sample.at.millis().saturating_sub(RETENTION_MS);
            table.retain_in(..cutoff, |_, _| false).map_err(fail)?;
        }
        tx.commit().map_err(fail)
    }

    /// Samples at or after `since`, oldest first.
    pub fn usage_since(&self, since: Timestamp) -> Result<Vec<UsageSample>, StoreError> {
        let rx = self.db()?.begin_read().map_err(fail)?;
        let table = rx.open_table(USAGE).map_err(fail)?;
        let mut out = Vec::new();
        for entry in table.range(since.millis()..).map_err(fail)? {
            let (k, v) = entry.map_err(fail)?;
            let rows: Vec<UsageRow> = postcard::from_bytes(v.value())
                .map_err(|e| StoreError::Corrupt(format!("usage sample {}: {e}", k.value())))?;
            out.push(UsageSample {
                at: Timestamp(k.value()),
                rows,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, in_use: u64) -> UsageSample {
        UsageSample {
            at: Timestamp(at),
            rows: vec![UsageRow {
                key_id: "K".into(),
                feature: "camera".into(),
                in_use,
                total: 16,
            }],
        }
    }

    #[test]
    fn samples_come_back_in_order_and_old_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let t0 = 1_800_000_000_000;
        store.record_usage(&sample(t0, 1)).unwrap();
        store.record_usage(&sample(t0 + DAY, 2)).unwrap();
        let all = store.usage_since(Timestamp(0)).unwrap();
        assert_eq!(all, vec![sample(t0, 1), sample(t0 + DAY, 2)]);
        assert_eq!(store.usage_since(Timestamp(t0 + 1)).unwrap().len(), 1);
        // A sample past the retention drops the first one.
        store
            .record_usage(&sample(t0 + RETENTION_MS + 1, 3))
            .unwrap();
        let left: Vec<u64> = store
            .usage_since(Timestamp(0))
            .unwrap()
            .iter()
            .map(|s| s.rows[0].in_use)
            .collect();
        assert_eq!(left, [2, 3]);
        // They survive a reopen.
        drop(store);
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(store.usage_since(Timestamp(0)).unwrap().len(), 2);
    }
}
