//! What the core's scenario and property tests share: the start instant, key documents
//! built from entries, and enrolling a server with a fresh code.

use super::*;
use crate::key::{Entry, KeyKind, Policy};

pub(crate) const T0: Timestamp = Timestamp(1_800_000_000_000);

pub(crate) fn entry(feature: &str, count: u32, not_after: Timestamp, order: &str) -> Entry {
    Entry {
        feature: feature.into(),
        count,
        not_after,
        order: order.into(),
    }
}

/// A network key issued at `T0` to customer "test".
pub(crate) fn key_document(id: &str, entries: Vec<Entry>, policy: Policy) -> KeyDocument {
    KeyDocument {
        key_id: id.into(),
        revision: 1,
        kind: KeyKind::Network,
        customer: "test".into(),
        issued_at: T0,
        demo: false,
        entries,
        policy,
        host: None,
    }
}

/// Enrols server `id` (named `id`, version 1.0) into `pool` with a code made for it.
pub(crate) fn enrol(c: &mut Core, now: Timestamp, pool: &PoolId, id: &str) {
    let code = format!("code-{id}");
    c.create_code(now, pool, &code).unwrap();
    c.enrol(
        now,
        EnrolRequest {
            code,
            name: id.into(),
            version: "1.0".into(),
            server_id: id.into(),
            credential: vec![1],
            existing: None,
        },
    )
    .unwrap();
}
