//! The allocation core: keys' entitlements, pools, servers, cameras and leases, as a pure
//! state machine. Commands and the current instant go in; outcomes come back and events
//! queue up for the caller to persist, log and push. No I/O, no clock, no randomness:
//! ids and codes are made by the caller, so a log of commands replays exactly.
//!
//! It keeps PRODUCT.md's invariants 1 (never over-allocate), 2 (one holder), 3 (one key
//! per server), 5 (no stranded seats) and 6 (the client's deadline falls before the
//! reservation ends); `check_invariants` recomputes them from scratch for the tests.

mod admin;
mod checkout;
mod command;
pub mod compact;
pub mod digest;
mod event;
mod expiry;
mod keys;
mod overdraft;
mod pools;
mod refusal;
pub mod time;
mod view;

pub use admin::{FreeOutcome, KickOutcome};
pub use checkout::{
    CameraOutcome, CheckoutAnswer, CheckoutItem, ExpiryWarning, HeartbeatAnswer, ReleaseOutcomes,
    SyncAnswer,
};
pub use command::{Command, Outcome};
pub use event::{Event, ReleaseReason, RevocationReason};
pub use keys::ReturnOutcome;
pub use overdraft::OverdraftState;
pub use pools::{PoolChange, SeatRequest, SeatsMoved};
pub use refusal::Refusal;
pub use time::Timestamp;
pub use view::{
    CameraView, EntryView, KeyView, OverdraftView, PoolEntry, PoolView, SeatUsage, ServerCounts,
    ServerView,
};

use crate::key::{Feature, KeyDocument, KeyId};
use compact::{DenseMap, IdKey, IdMap, IdSet, Interner, OptionalInstant};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

pub type ServerId = String;
pub type CameraId = String;
pub type Features = BTreeMap<Feature, u32>;

pub const DEFAULT_POOL: &str = "Default";
/// Enrolment codes live 24 hours (seed 000).
pub const CODE_VALIDITY_MS: u64 = time::DAY;
const MAX_NAME: usize = 128;

/// A pool's full name, `KEY_ID/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PoolId {
    pub key: KeyId,
    pub name: String,
}

impl PoolId {
    pub fn new(key: &str, name: &str) -> Self {
        PoolId {
            key: key.to_string(),
            name: name.to_string(),
        }
    }
    pub fn default_of(key: &str) -> Self {
        PoolId::new(key, DEFAULT_POOL)
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.key, self.name)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstalledKey {
    pub document: KeyDocument,
    pub demo: bool,
    pub installed_at: Timestamp,
    /// Entries whose expiry has been applied (indices into `document.entries`).
    pub expired_entries: BTreeSet<usize>,
    /// The daemon's description of the key's host binding, for `key list`.
    pub binding: String,
    /// The fingerprint of the vendor key that signed it, so the daemon can check at
    /// every start that it still trusts that vendor.
    pub signer: Option<String>,
    /// Why the daemon does not serve the key (host binding failed, DEMO key on a
    /// production daemon); `None`: served.
    pub refused: Option<String>,
    /// `key return` began: its leases are revoked and nothing new is granted.
    pub returning: bool,
    /// The signed key file, as installed (empty until the daemon records it).
    #[serde(default)]
    pub file: String,
    /// Expiry warnings given: entry index -> the last stage warned (30, 7 or 1 days).
    pub warned: BTreeMap<usize, u32>,
    pub overdraft: OverdraftState,
    /// Peak counted seats per feature per UTC day (days since 1970-01-01), for usage
    /// reports; the last `overdraft::KEEP_DAYS` days.
    pub peaks: BTreeMap<u64, BTreeMap<Feature, u64>>,
}

impl InstalledKey {
    /// Why checkouts on this key are refused, if they are.
    pub fn inactive_reason(&self) -> Option<String> {
        if self.returning {
            return Some("it is being returned (`netkeyctl key return`)".into());
        }
        self.refused.clone()
    }
}

/// Seats of one feature in one pool that are counted against its allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Seats of leases a server holds.
    pub held: u64,
    /// Seats of leases revoked but not yet acknowledged (still counted).
    pub revoking: u64,
}

impl Usage {
    pub fn counted(&self) -> u64 {
        self.held + self.revoking
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pool {
    pub id: PoolId,
    /// Seats this pool holds of each entry of its key (index into the key's entries).
    pub seats: BTreeMap<usize, u32>,
    pub usage: BTreeMap<Feature, Usage>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub camera: CameraId,
    pub epoch: u64,
    pub reason: RevocationReason,
    pub issued_at: Timestamp,
    /// A move asked of a live holder that the daemon may still withdraw.
    pub provisional: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Server {
    pub id: ServerId,
    pub name: String,
    pub pool: PoolId,
    /// What the server proves itself with: its identity's public key (TLS client certificate).
    pub credential: Vec<u8>,
    pub version: String,
    pub enrolled_at: Timestamp,
    pub last_checkin: Timestamp,
    /// The latest renewal, in memory.
    pub renewed_at: Timestamp,
    /// The latest renewal known durable: reservations and `valid_for` count from it.
    pub persisted_renewal: Timestamp,
    /// Open authenticated connections.
    pub sessions: u32,
    pub held: digest::Holdings,
    pub revoking: BTreeSet<(CameraId, u64)>,
    pub revocations: BTreeMap<(CameraId, u64), Revocation>,
    pub kicked: bool,
}

impl Server {
    /// The server was heard from at `now`: its renewal moves on, in memory.
    fn check_in(&mut self, now: Timestamp) {
        self.last_checkin = now;
        self.renewed_at = self.renewed_at.max(now);
    }
}

/// What a lease grants and to whom: the same for every camera a server holds in the
/// same way, so the leases share one copy (`Cameras::intern`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Terms {
    pub server: ServerId,
    pub pool: PoolId,
    pub features: Features,
    pub class: String,
    pub modules: Vec<Feature>,
    pub device_version: Option<String>,
    pub legacy: bool,
}

/// `Terms` borrowed from a request, to find the shared copy without building one: a grant
/// that built its terms only to find them interned already spent six allocations and
/// their frees on every checkout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TermsRef<'a> {
    pub server: &'a str,
    pub pool: &'a PoolId,
    pub features: &'a Features,
    pub class: &'a str,
    pub modules: &'a [Feature],
    pub device_version: Option<&'a str>,
    pub legacy: bool,
}

impl TermsRef<'_> {
    pub(crate) fn to_terms(self) -> Terms {
        Terms {
            server: self.server.to_string(),
            pool: self.pool.clone(),
            features: self.features.clone(),
            class: self.class.to_string(),
            modules: self.modules.to_vec(),
            device_version: self.device_version.map(str::to_string),
            legacy: self.legacy,
        }
    }
}

/// What owned and borrowed terms have in common: the interner's table of `Arc<Terms>` is
/// searched by it (`Borrow<dyn AsTermsRef>`), and both hash through it, so a `TermsRef`
/// finds the `Terms` equal to it.
pub trait AsTermsRef {
    fn terms_ref(&self) -> TermsRef<'_>;
}

impl AsTermsRef for Terms {
    fn terms_ref(&self) -> TermsRef<'_> {
        // Every field named: one added to `Terms` and not here does not compile, so owned
        // and borrowed terms cannot come to compare differently.
        let Terms {
            server,
            pool,
            features,
            class,
            modules,
            device_version,
            legacy,
        } = self;
        TermsRef {
            server,
            pool,
            features,
            class,
            modules,
            device_version: device_version.as_deref(),
            legacy: *legacy,
        }
    }
}

/// Equal as their borrowed forms are, as the interner compares them.
impl PartialEq for Terms {
    fn eq(&self, other: &Self) -> bool {
        self.terms_ref() == other.terms_ref()
    }
}

impl Eq for Terms {}

impl AsTermsRef for TermsRef<'_> {
    fn terms_ref(&self) -> TermsRef<'_> {
        *self
    }
}

impl std::hash::Hash for Terms {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.terms_ref().hash(state);
    }
}

impl std::hash::Hash for dyn AsTermsRef + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.terms_ref().hash(state);
    }
}

impl PartialEq for dyn AsTermsRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.terms_ref() == other.terms_ref()
    }
}

impl Eq for dyn AsTermsRef + '_ {}

impl<'a> std::borrow::Borrow<dyn AsTermsRef + 'a> for Arc<Terms> {
    fn borrow(&self) -> &(dyn AsTermsRef + 'a) {
        &**self
    }
}

/// A held lease as the commands see it: its shared terms (read through `Deref`, as
/// `lease.server`), its epoch and when it was granted. Made from a `CameraRecord` on
/// demand (`CameraRecord::lease`), which stores the epoch once for both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    terms: Arc<Terms>,
    pub epoch: u64,
    pub granted_at: Timestamp,
}

impl Lease {
    pub fn terms(&self) -> &Terms {
        &self.terms
    }
}

impl std::ops::Deref for Lease {
    type Target = Terms;
    fn deref(&self) -> &Terms {
        &self.terms
    }
}

/// What a camera record keeps of its held lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Held {
    #[serde(
        serialize_with = "compact::serialize_shared",
        deserialize_with = "compact::shared_terms"
    )]
    terms: Arc<Terms>,
    granted_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokingLease {
    pub server: ServerId,
    pub pool: PoolId,
    pub features: Features,
    pub epoch: u64,
    /// The old holder's reservation end when it was revoked: the seat counts until then
    /// unless acknowledged sooner.
    pub until: Timestamp,
    pub reason: RevocationReason,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CameraRecord {
    /// Grows on every grant to a new holder; lives as long as the key.
    pub epoch: u64,
    first_granted: OptionalInstant,
    /// The held lease, at `epoch`.
    held: Option<Held>,
    /// Revoking leases and recent moves: most cameras have neither, so they take one
    /// pointer until they do.
    extra: Option<Box<CameraExtra>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct CameraExtra {
    revoking: Vec<RevokingLease>,
    /// Instants of recent moves, for `CameraContested`.
    moves: Vec<Timestamp>,
}

impl CameraRecord {
    /// The held lease, if any.
    pub fn lease(&self) -> Option<Lease> {
        self.held.as_ref().map(|h| Lease {
            terms: h.terms.clone(),
            epoch: self.epoch,
            granted_at: h.granted_at,
        })
    }

    /// The held lease's terms, borrowed.
    pub fn terms(&self) -> Option<&Terms> {
        self.held.as_ref().map(|h| &*h.terms)
    }

    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    fn take_lease(&mut self) -> Option<Lease> {
        let lease = self.lease();
        self.held = None;
        lease
    }

    /// Grants the lease at the record's (new) epoch.
    fn hold(&mut self, terms: Arc<Terms>, granted_at: Timestamp) {
        self.held = Some(Held { terms, granted_at });
    }

    /// The held lease's terms change (class, modules, pool); epoch and grant stay.
    fn set_terms(&mut self, terms: Arc<Terms>) {
        if let Some(h) = &mut self.held {
            h.terms = terms;
        }
    }

    pub fn first_granted(&self) -> Option<Timestamp> {
        self.first_granted.get()
    }

    pub fn revoking(&self) -> &[RevokingLease] {
        self.extra.as_ref().map_or(&[], |x| &x.revoking)
    }

    pub fn moves(&self) -> &[Timestamp] {
        self.extra.as_ref().map_or(&[], |x| &x.moves)
    }

    fn revoking_mut(&mut self) -> &mut Vec<RevokingLease> {
        &mut self.extra.get_or_insert_with(Default::default).revoking
    }

    fn moves_mut(&mut self) -> &mut Vec<Timestamp> {
        &mut self.extra.get_or_insert_with(Default::default).moves
    }

    /// Gives back the room of revoking leases and moves once there are none.
    fn tidy(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|x| x.revoking.is_empty() && x.moves.is_empty())
        {
            self.extra = None;
        }
    }
}

/// Every camera record, by key and camera id, with the table of lease terms their leases
/// share. Iterates in (key, camera) order, as the views list them.
#[derive(Clone, Debug, Default)]
pub struct Cameras {
    by_key: BTreeMap<KeyId, DenseMap<IdKey, CameraRecord>>,
    terms: Interner<Terms>,
}

impl Cameras {
    pub fn get(&self, key: &str, camera: &str) -> Option<&CameraRecord> {
        self.by_key.get(key)?.get_id(camera)
    }

    fn get_mut(&mut self, key: &str, camera: &str) -> Option<&mut CameraRecord> {
        self.by_key.get_mut(key)?.get_id_mut(camera)
    }

    /// The record, made (empty) if the camera has none yet.
    fn entry(&mut self, key: &str, camera: &str) -> &mut CameraRecord {
        self.by_key
            .entry(key.to_string())
            .or_default()
            .entry_or_default(IdKey::new(camera))
    }

    pub fn contains(&self, key: &str, camera: &str) -> bool {
        self.get(key, camera).is_some()
    }

    /// ((key, camera), record), in key then camera order.
    pub fn iter(&self) -> impl Iterator<Item = ((&KeyId, &str), &CameraRecord)> {
        self.by_key
            .iter()
            .flat_map(|(k, cams)| cams.iter().map(move |(c, r)| ((k, c.as_str()), r)))
    }

    /// The keys that have a record of `camera`.
    pub fn keys_of<'a>(&'a self, camera: &'a str) -> impl Iterator<Item = &'a KeyId> {
        self.by_key
            .iter()
            .filter(|(_, cams)| cams.get_id(camera).is_some())
            .map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &CameraRecord> {
        self.by_key.values().flat_map(|cams| cams.values())
    }

    /// Forgets every camera of `key`.
    fn remove_key(&mut self, key: &str) {
        self.by_key.remove(key);
    }

    /// The one shared copy of these terms.
    fn intern(&mut self, terms: Terms) -> Arc<Terms> {
        self.terms.intern(terms)
    }

    /// The one shared copy of these terms, made only if there is none yet.
    fn intern_ref(&mut self, terms: TermsRef<'_>) -> Arc<Terms> {
        self.terms
            .intern_borrowed(&terms as &dyn AsTermsRef, |t| t.terms_ref().to_terms())
    }
}

impl<'a> IntoIterator for &'a Cameras {
    type Item = ((&'a KeyId, &'a str), &'a CameraRecord);
    type IntoIter = Box<dyn Iterator<Item = Self::Item> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// When a server's reservation ends: its last persisted renewal, plus the key's offline
/// grace and one heartbeat interval. A free function over the two fields it reads, so a
/// caller holding the server mutably can ask.
fn reservation_end_of(keys: &BTreeMap<KeyId, InstalledKey>, s: &Server) -> Option<Timestamp> {
    let policy = &keys.get(&s.pool.key)?.document.policy;
    Some(
        s.persisted_renewal
            .plus(policy.offline_grace_ms())
            .plus(policy.heartbeat_interval_ms()),
    )
}

/// Written as the table of lease terms, in the order the records first refer to them (so
/// the same state always writes the same bytes), then the records, each held lease
/// referring to its terms by index (`compact::TermsFormat`).
impl Serialize for Cameras {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut terms = compact::TermsIndex::default();
        for held in self.values().filter_map(|r| r.held.as_ref()) {
            terms.add(&held.terms);
        }
        let (index, table) = terms.split();
        compact::writing_cameras(index, || (table, &self.by_key).serialize(s))
    }
}

impl<'de> Deserialize<'de> for Cameras {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        type ByKey = BTreeMap<KeyId, DenseMap<IdKey, CameraRecord>>;
        if compact::reading_format() == compact::TermsFormat::Inline {
            let (by_key, terms) = compact::reading_cameras(None, || ByKey::deserialize(d));
            return Ok(Cameras {
                by_key: by_key?,
                terms,
            });
        }
        struct TableThenRecords;
        impl<'de> serde::de::Visitor<'de> for TableThenRecords {
            type Value = Cameras;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of lease terms, then camera records")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Cameras, A::Error> {
                let table: Vec<Terms> = seq
                    .next_element()?
                    .ok_or_else(|| serde::de::Error::invalid_length(0, &self))?;
                let (by_key, terms) =
                    compact::reading_cameras(Some(table), || seq.next_element::<ByKey>());
                let by_key = by_key?.ok_or_else(|| serde::de::Error::invalid_length(1, &self))?;
                Ok(Cameras { by_key, terms })
            }
        }
        d.deserialize_tuple(2, TableThenRecords)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentCode {
    pub pool: PoolId,
    pub expires_at: Timestamp,
}

/// What `enrol` needs; the caller makes the id and the credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolRequest {
    pub code: String,
    pub name: String,
    pub version: String,
    pub server_id: ServerId,
    pub credential: Vec<u8>,
    /// An already enrolled server re-enrolling (it proved who it is to the caller).
    pub existing: Option<ServerId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    pub server_id: ServerId,
    pub pool: PoolId,
    pub key: KeyId,
    pub demo: bool,
    pub heartbeat_interval_ms: u64,
    pub offline_grace_ms: u64,
}

/// The events commands make, for the audit log, oldest first. Each is built only if it is
/// kept: replaying a log of two hundred thousand checkouts built as many events (three
/// strings copied for each) only to drop them.
#[derive(Clone, Debug, Default)]
struct Events {
    list: Vec<Event>,
    muted: bool,
}

impl Events {
    fn push_with(&mut self, event: impl FnOnce() -> Event) {
        if !self.muted {
            self.list.push(event());
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Core {
    keys: BTreeMap<KeyId, InstalledKey>,
    pools: BTreeMap<PoolId, Pool>,
    servers: IdMap<Server>,
    cameras: Cameras,
    codes: BTreeMap<String, EnrolmentCode>,
    /// No deadline (reservation end, revoking end, entry expiry) falls before this.
    next_due: Timestamp,
    #[serde(skip)]
    events: Events,
    /// Servers renewed in memory since the last `renewals_persisted`.
    unpersisted: IdSet,
    /// The wall clock is behind this high-water mark: new checkouts are refused.
    clock_rollback: Option<Timestamp>,
}

impl Core {
    pub fn new() -> Self {
        Core::default()
    }

    /// How many events wait to be drained (the caller can tell whether a command did
    /// anything by comparing before and after).
    pub fn pending_events(&self) -> usize {
        self.events.list.len()
    }

    /// Events since the last call, oldest first.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events.list)
    }

    /// Runs `f` with events muted: commands make none. The store rebuilds the state from
    /// its log this way, since it already holds the audit records of those commands. The
    /// core leaves muted by no path out of `f`.
    pub(crate) fn with_events_muted<T>(&mut self, f: impl FnOnce(&mut Core) -> T) -> T {
        self.events.muted = true;
        let out = f(self);
        self.events.muted = false;
        out
    }

    /// Installs a verified key and gives its `Default` pool every seat.
    pub fn install_key(
        &mut self,
        now: Timestamp,
        document: KeyDocument,
        demo: bool,
    ) -> Result<(), Refusal> {
        self.advance(now);
        document
            .validate()
            .map_err(|reason| Refusal::BadRequest { reason })?;
        let key = document.key_id.clone();
        if document.expires_at() <= now {
            return Err(Refusal::KeyExpired { key });
        }
        if let Some(old) = self.keys.get(&key) {
            if old.returning {
                return Err(Refusal::KeyInactive {
                    key,
                    reason: "it is being returned; a returned key cannot be replaced".into(),
                });
            }
            if old.document.revision >= document.revision {
                return Err(Refusal::BadRequest {
                    reason: format!(
                        "key {key} revision {} is installed; revision {} does not replace it",
                        old.document.revision, document.revision
                    ),
                });
            }
            if old.document.entries.len() > document.entries.len() {
                return Err(Refusal::BadRequest {
                    reason: "a new revision may add entries but not remove them".into(),
                });
            }
        }
        let pool_id = PoolId::default_of(&key);
        let previous = self
            .keys
            .get(&key)
            .map(|k| k.document.entries.clone())
            .unwrap_or_default();
        self.pools.entry(pool_id.clone()).or_insert_with(|| Pool {
            id: pool_id.clone(),
            seats: BTreeMap::new(),
            usage: BTreeMap::new(),
        });
        // A higher revision keeps pools and leases: new or grown entries go to Default; a
        // lowered count takes its seats back from Default first, then the other pools, and
        // use above what is left is revoked as for any shrink (invariant 1).
        let mut shrunk: BTreeSet<(PoolId, Feature)> = BTreeSet::new();
        for (i, e) in document.entries.iter().enumerate() {
            let before = previous.get(i).map(|p| p.count).unwrap_or(0);
            let mut excess = before.saturating_sub(e.count);
            if let Some(pool) = self.pools.get_mut(&pool_id) {
                *pool.seats.entry(i).or_insert(0) += e.count.saturating_sub(before);
            }
            let others = self.pools.keys().filter(|p| p.key == key && **p != pool_id);
            let order: Vec<PoolId> = std::iter::once(pool_id.clone())
                .chain(others.cloned())
                .collect();
            for p in order {
                let Some(n) = self.pools.get_mut(&p).and_then(|p| p.seats.get_mut(&i)) else {
                    continue;
                };
                let take = excess.min(*n);
                if take > 0 {
                    *n -= take;
                    excess -= take;
                    shrunk.insert((p, previous[i].feature.clone()));
                }
            }
        }
        // Its entries' expiry warnings and not-after instants are due from now on.
        self.next_due = self.next_due.min(now);
        self.events.push_with(|| Event::KeyInstalled {
            key: key.clone(),
            revision: document.revision,
            demo,
        });
        let old = self.keys.remove(&key);
        let mut installed = InstalledKey {
            document,
            demo,
            installed_at: now,
            expired_entries: BTreeSet::new(),
            binding: String::new(),
            signer: None,
            refused: None,
            returning: false,
            warned: BTreeMap::new(),
            overdraft: OverdraftState::default(),
            peaks: BTreeMap::new(),
            file: String::new(),
        };
        if let Some(old) = old {
            // An expired entry the new revision extends counts again, so it must be able
            // to expire (and shrink its pools) again; a warning stands only for an entry
            // whose not-after did not move.
            let entries = &installed.document.entries;
            installed.expired_entries = old.expired_entries;
            installed
                .expired_entries
                .retain(|i| entries.get(*i).is_some_and(|e| e.not_after <= now));
            installed.warned = old.warned;
            installed.warned.retain(|i, _| {
                entries.get(*i).map(|e| e.not_after)
                    == old.document.entries.get(*i).map(|e| e.not_after)
            });
            installed.binding = old.binding;
            installed.signer = old.signer;
            installed.refused = old.refused;
            installed.overdraft = old.overdraft;
            installed.peaks = old.peaks;
        }
        self.keys.insert(key, installed);
        for (pool, feature) in shrunk {
            self.shrink(now, &pool, &feature, RevocationReason::Shrunk);
        }
        self.advance(now);
        self.settle(now);
        Ok(())
    }

    /// Registers an enrolment code (made by the caller) for `pool`, valid 24 h.
    pub fn create_code(
        &mut self,
        now: Timestamp,
        pool: &PoolId,
        code: &str,
    ) -> Result<Timestamp, Refusal> {
        self.advance(now);
        if !self.pools.contains_key(pool) {
            return Err(Refusal::UnknownPool {
                pool: pool.to_string(),
            });
        }
        self.codes.retain(|_, c| c.expires_at > now);
        if self.codes.contains_key(code) {
            return Err(Refusal::BadRequest {
                reason: "code already issued".into(),
            });
        }
        self.codes.retain(|_, c| c.expires_at > now);
        let expires_at = now.plus(CODE_VALIDITY_MS);
        self.codes.insert(
            code.to_string(),
            EnrolmentCode {
                pool: pool.clone(),
                expires_at,
            },
        );
        self.events.push_with(|| Event::CodeCreated {
            pool: pool.clone(),
            expires_at,
        });
        Ok(expires_at)
    }

    /// Exchanges a one-time code for a binding to its pool.
    pub fn enrol(&mut self, now: Timestamp, req: EnrolRequest) -> Result<Enrolment, Refusal> {
        self.advance(now);
        let code = self
            .codes
            .get(&req.code)
            .cloned()
            .ok_or(Refusal::CodeInvalid)?;
        // A refusal changes nothing (the caller need not log it); expired codes are
        // swept when the next code is created.
        if code.expires_at <= now {
            return Err(Refusal::CodeExpired);
        }
        if req.name.trim().is_empty() || req.name.len() > MAX_NAME {
            return Err(Refusal::BadRequest {
                reason: "a server name is 1-128 characters".into(),
            });
        }
        let key = self.keys.get(&code.pool.key).ok_or(Refusal::UnknownKey {
            key: code.pool.key.clone(),
        })?;
        if let Some(reason) = key.inactive_reason() {
            return Err(Refusal::KeyInactive {
                key: code.pool.key.clone(),
                reason,
            });
        }
        if let Some(min) = &key.document.policy.min_server_version {
            let ok = match (
                crate::key::DeviceVersion::parse(&req.version),
                crate::key::DeviceVersion::parse(min),
            ) {
                (Ok(v), Ok(m)) => v >= m,
                _ => false,
            };
            if !ok {
                return Err(Refusal::ServerVersionRefused { min: min.clone() });
            }
        }
        let server_id = match &req.existing {
            Some(existing) => {
                self.move_server(now, existing, &code.pool)?;
                if let Some(s) = self.servers.get_mut(existing) {
                    s.name = req.name.clone();
                    s.version = req.version.clone();
                    s.kicked = false;
                }
                existing.clone()
            }
            None => {
                if self.servers.contains_key(&req.server_id) {
                    return Err(Refusal::BadRequest {
                        reason: "server id in use".into(),
                    });
                }
                self.servers.insert(
                    &req.server_id,
                    Server {
                        id: req.server_id.clone(),
                        name: req.name.clone(),
                        pool: code.pool.clone(),
                        credential: req.credential.clone(),
                        version: req.version.clone(),
                        enrolled_at: now,
                        last_checkin: now,
                        renewed_at: now,
                        persisted_renewal: now,
                        sessions: 0,
                        held: Default::default(),
                        revoking: BTreeSet::new(),
                        revocations: BTreeMap::new(),
                        kicked: false,
                    },
                );
                req.server_id.clone()
            }
        };
        self.codes.remove(&req.code);
        self.events.push_with(|| Event::Enrolled {
            server: server_id.clone(),
            name: req.name,
            pool: code.pool.clone(),
        });
        self.enrolment(&server_id)
    }

    /// The binding a server holds: pool, key and the key's timing.
    pub fn enrolment(&self, server: &str) -> Result<Enrolment, Refusal> {
        let s = self.servers.get(server).ok_or(Refusal::NotEnrolled)?;
        let key = self.key_of(&s.pool)?;
        Ok(Enrolment {
            server_id: s.id.clone(),
            pool: s.pool.clone(),
            key: s.pool.key.clone(),
            demo: key.demo,
            heartbeat_interval_ms: key.document.policy.heartbeat_interval_ms(),
            offline_grace_ms: key.document.policy.offline_grace_ms(),
        })
    }

    /// The credential a server enrolled with, for the caller to check a login against.
    pub fn credential(&self, server: &str) -> Option<&[u8]> {
        self.servers.get(server).map(|s| s.credential.as_slice())
    }

    /// A live, authenticated connection opened: moves now ask this server first.
    pub fn session_opened(&mut self, now: Timestamp, server: &str) {
        self.advance(now);
        if let Some(s) = self.servers.get_mut(server) {
            s.sessions += 1;
            s.last_checkin = now;
        }
    }

    pub fn session_closed(&mut self, now: Timestamp, server: &str) {
        self.advance(now);
        if let Some(s) = self.servers.get_mut(server) {
            s.sessions = s.sessions.saturating_sub(1);
        }
    }

    /// Every renewal made in memory up to `at` is now durable.
    pub fn renewals_persisted(&mut self, at: Timestamp) {
        for id in std::mem::take(&mut self.unpersisted).iter() {
            if let Some(s) = self.servers.get_mut(id) {
                s.persisted_renewal = s.persisted_renewal.max(s.renewed_at.min(at));
            }
        }
    }

    /// Renewals made in memory and not yet persisted, as (server, renewed at): what the
    /// daemon writes in a `RenewalsPersisted` command.
    pub fn pending_renewals(&self) -> Vec<(ServerId, Timestamp)> {
        self.unpersisted
            .iter()
            .filter_map(|id| self.servers.get(id).map(|s| (id.to_string(), s.renewed_at)))
            .collect()
    }

    /// These renewals are durable now (replayed from the log after a restart).
    pub fn apply_persisted_renewals(&mut self, renewals: &[(ServerId, Timestamp)]) {
        for (id, at) in renewals {
            if let Some(s) = self.servers.get_mut(id) {
                s.renewed_at = s.renewed_at.max(*at);
                s.persisted_renewal = s.persisted_renewal.max(*at);
                if s.renewed_at <= s.persisted_renewal {
                    self.unpersisted.remove(id);
                }
            }
        }
    }

    /// After a restart no connection is open: every server is silent, and move requests
    /// that were waiting for a live holder are withdrawn (their movers are gone).
    pub fn reset_sessions(&mut self) {
        for s in self.servers.values_mut() {
            s.sessions = 0;
            s.revocations.retain(|_, r| !r.provisional);
        }
    }

    /// Whether renewals wait to be persisted.
    pub fn has_unpersisted_renewals(&self) -> bool {
        !self.unpersisted.is_empty()
    }

    /// When the daemon stops reserving `server`'s seats if it stays silent.
    pub fn reservation_end(&self, server: &str) -> Option<Timestamp> {
        reservation_end_of(&self.keys, self.servers.get(server)?)
    }

    /// How long the server may go on without contact, counted from `now`: the last
    /// persisted renewal + grace - now. The client adds this to its *send* instant.
    pub fn valid_for(&self, now: Timestamp, server: &str) -> u64 {
        self.servers
            .get(server)
            .map_or(0, |s| self.valid_for_server(now, s))
    }

    fn valid_for_server(&self, now: Timestamp, s: &Server) -> u64 {
        let Some(key) = self.keys.get(&s.pool.key) else {
            return 0;
        };
        s.persisted_renewal
            .plus(key.document.policy.offline_grace_ms())
            .since(now)
    }

    // ---- internal helpers shared by the command modules ----

    fn key_of(&self, pool: &PoolId) -> Result<&InstalledKey, Refusal> {
        self.keys.get(&pool.key).ok_or(Refusal::UnknownKey {
            key: pool.key.clone(),
        })
    }

    /// Seats of `feature` the pool is allocated at `now` (unexpired entries only).
    pub fn allocation(&self, pool: &PoolId, feature: &str, now: Timestamp) -> u64 {
        let (Some(p), Some(k)) = (self.pools.get(pool), self.keys.get(&pool.key)) else {
            return 0;
        };
        p.seats
            .iter()
            .filter_map(|(i, n)| {
                let e = k.document.entries.get(*i)?;
                (e.feature == feature && now < e.not_after).then_some(u64::from(*n))
            })
            .sum()
    }

    pub fn usage(&self, pool: &PoolId, feature: &str) -> Usage {
        self.pools
            .get(pool)
            .and_then(|p| p.usage.get(feature))
            .copied()
            .unwrap_or_default()
    }

    /// Can `features` be added to `pool` at `now`? Beyond the pool's allocation only
    /// within the key's overdraft: seats shared by its pools, while its allowance of
    /// hours lasts.
    fn fits(&self, pool: &PoolId, features: &Features, now: Timestamp) -> Result<(), Refusal> {
        let mut extra = 0u64;
        let mut short: Option<(&Feature, u64, u64)> = None;
        for (feature, n) in features {
            if *n == 0 {
                continue;
            }
            let used = self.usage(pool, feature).counted();
            let total = self.allocation(pool, feature, now);
            let over_before = used.saturating_sub(total);
            let over_after = (used + u64::from(*n)).saturating_sub(total);
            if over_after > over_before {
                extra += over_after - over_before;
                short.get_or_insert((feature, used, total));
            }
        }
        let Some((feature, used, total)) = short else {
            return Ok(());
        };
        // Use over the allocation is the overdraft's while the overdraft covers it;
        // beyond, it is what a shrink left behind.
        let mut overdraft_full = false;
        if let Some(k) = self.keys.get(&pool.key) {
            let policy = &k.document.policy;
            if policy.overdraft_seats > 0 {
                if self.overdraft_spent(&pool.key, now) {
                    return Err(Refusal::OverdraftSpent {
                        feature: feature.clone(),
                        in_use: used,
                        total,
                        hours: policy.overdraft_hours,
                    });
                }
                let excess = self.key_excess(&pool.key, now);
                let seats = u64::from(policy.overdraft_seats);
                if excess + extra <= seats {
                    return Ok(());
                }
                overdraft_full = excess <= seats;
            }
        }
        if used > total && !overdraft_full {
            Err(Refusal::OverAllocated {
                feature: feature.clone(),
                in_use: used,
                total,
            })
        } else {
            Err(Refusal::NoSeats {
                feature: feature.clone(),
                in_use: used,
                total,
            })
        }
    }

    fn add_usage(&mut self, pool: &PoolId, features: &Features, held: i64, revoking: i64) {
        if let Some(p) = self.pools.get_mut(pool) {
            for (f, n) in features {
                let u = p.usage.entry(f.clone()).or_default();
                let n = i64::from(*n);
                u.held = (u.held as i64 + held * n).max(0) as u64;
                u.revoking = (u.revoking as i64 + revoking * n).max(0) as u64;
            }
        }
    }

    fn check_in(&mut self, now: Timestamp, server: &str) {
        if let Some(s) = self.servers.get_mut(server) {
            s.check_in(now);
            self.note_unpersisted(server);
        }
    }

    /// The server's renewal is in memory only.
    fn note_unpersisted(&mut self, server: &str) {
        self.unpersisted.insert(server);
    }

    /// A durable change for this server: its renewal is persisted with it.
    fn check_in_durable(&mut self, now: Timestamp, server: &str) {
        let Some(s) = self.servers.get_mut(server) else {
            return;
        };
        s.check_in(now);
        s.persisted_renewal = s.persisted_renewal.max(now);
        if let Some(end) = reservation_end_of(&self.keys, s) {
            self.next_due = self.next_due.min(end);
        }
    }

    fn is_newly_added(
        &self,
        key: &str,
        camera: &CameraRecord,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let period = self.keys.get(key)?.document.policy.revocation_period_ms();
        let until = camera.first_granted()?.plus(period);
        (period > 0 && now < until).then_some(until)
    }

    /// Ends a held lease: the seat returns at once.
    fn release_lease(&mut self, key: &str, camera: &str, reason: ReleaseReason) {
        let Some(lease) = self
            .cameras
            .get_mut(key, camera)
            .and_then(|c| c.take_lease())
        else {
            return;
        };
        self.add_usage(&lease.pool, &lease.features, -1, 0);
        if let Some(s) = self.servers.get_mut(&lease.server) {
            s.held.remove(camera);
            // A move request still waiting for this holder is moot now. Looked up by its
            // key: a holder asked for many cameras in a move storm has as many requests;
            // and not at all when there are none (most releases), as the key is a copy.
            if !s.revocations.is_empty() {
                let request = (camera.to_string(), lease.epoch);
                if s.revocations.get(&request).is_some_and(|r| r.provisional) {
                    s.revocations.remove(&request);
                }
            }
        }
        self.events.push_with(|| Event::Released {
            key: key.to_string(),
            camera: camera.to_string(),
            server: lease.server.clone(),
            epoch: lease.epoch,
            reason,
        });
    }

    /// Turns a held lease into a counted `revoking` lease and tells the holder.
    fn revoke_lease(&mut self, now: Timestamp, key: &str, camera: &str, reason: RevocationReason) {
        let Some(lease) = self.cameras.get(key, camera).and_then(|c| c.lease()) else {
            return;
        };
        let until = self.reservation_end(&lease.server).unwrap_or(now).max(now);
        if until <= now {
            self.release_lease(key, camera, ReleaseReason::Expired);
            return;
        }
        if let Some(c) = self.cameras.get_mut(key, camera) {
            c.held = None;
            c.revoking_mut().push(RevokingLease {
                server: lease.server.clone(),
                pool: lease.pool.clone(),
                features: lease.features.clone(),
                epoch: lease.epoch,
                until,
                reason,
            });
        }
        self.add_usage(&lease.pool, &lease.features, -1, 1);
        if let Some(s) = self.servers.get_mut(&lease.server) {
            s.held.remove(camera);
            s.revoking.insert((camera.to_string(), lease.epoch));
        }
        self.next_due = self.next_due.min(until);
        self.issue_revocation(now, &lease.server, key, camera, lease.epoch, reason, false);
    }

    #[allow(clippy::too_many_arguments)]
    fn issue_revocation(
        &mut self,
        now: Timestamp,
        server: &str,
        key: &str,
        camera: &str,
        epoch: u64,
        reason: RevocationReason,
        provisional: bool,
    ) {
        if let Some(s) = self.servers.get_mut(server) {
            s.revocations.insert(
                (camera.to_string(), epoch),
                Revocation {
                    camera: camera.to_string(),
                    epoch,
                    reason,
                    issued_at: now,
                    provisional,
                },
            );
        }
        self.events.push_with(|| Event::RevocationIssued {
            server: server.to_string(),
            key: key.to_string(),
            camera: camera.to_string(),
            epoch,
            reason,
        });
    }

    /// Removes one `revoking` lease; the seat returns.
    fn end_revoking(
        &mut self,
        key: &str,
        camera: &str,
        server: &str,
        epoch: u64,
        acknowledged: bool,
    ) {
        let Some(c) = self.cameras.get_mut(key, camera) else {
            return;
        };
        let Some(pos) = c
            .revoking()
            .iter()
            .position(|r| r.server == server && r.epoch == epoch)
        else {
            return;
        };
        let r = c.revoking_mut().remove(pos);
        c.tidy();
        self.add_usage(&r.pool, &r.features, 0, -1);
        if let Some(s) = self.servers.get_mut(server) {
            s.revoking.remove(&(camera.to_string(), epoch));
            if !acknowledged {
                // The holder's own deadline has passed too (invariant 6): nothing to tell.
                s.revocations.remove(&(camera.to_string(), epoch));
            }
        }
        self.events.push_with(|| Event::RevokingEnded {
            key: key.to_string(),
            camera: camera.to_string(),
            server: server.to_string(),
            epoch,
            acknowledged,
        });
        self.forget_if_kicked_and_empty(server);
    }

    fn forget_if_kicked_and_empty(&mut self, server: &str) {
        let done = self
            .servers
            .get(server)
            .is_some_and(|s| s.kicked && s.held.is_empty() && s.revoking.is_empty());
        if done {
            self.servers.remove(server);
            self.unpersisted.remove(server);
            self.events.push_with(|| Event::Forgotten {
                server: server.to_string(),
            });
        }
    }

    /// Resolves `NAME` or `KEY/NAME` to a pool; a bare name must be unique.
    pub fn resolve_pool(&self, name: &str) -> Result<PoolId, Refusal> {
        if let Some((key, pool)) = name.split_once('/') {
            let id = PoolId::new(key, pool);
            return if self.pools.contains_key(&id) {
                Ok(id)
            } else {
                Err(Refusal::UnknownPool {
                    pool: name.to_string(),
                })
            };
        }
        let matches: Vec<&PoolId> = self.pools.keys().filter(|p| p.name == name).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Refusal::UnknownPool {
                pool: name.to_string(),
            }),
            _ => Err(Refusal::BadRequest {
                reason: format!(
                    "pool name {name:?} is ambiguous; say KEY_ID/{name} ({})",
                    matches
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }
}

#[cfg(test)]
mod key_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod pool_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
