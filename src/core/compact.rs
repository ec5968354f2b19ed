//! Compact building blocks for the per-lease state, which a daemon holds a million of:
//! camera ids stored inline, lease terms shared between the leases that have the same
//! ones, and maps built densely when a snapshot loads and rebuilt densely as they grow.
//! None of it changes what the core does; it changes how many bytes each lease takes
//! (the aim: 200 at most).

use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::thread::LocalKey;

/// Bytes of an id kept inline; longer ids go to the heap.
const INLINE: usize = 22;

/// A camera or server id as a map key. The ids real cameras have (MAC addresses, 17 bytes)
/// and the ones the daemon gives servers (`srv-` and 12 hex digits) fit in its 24 bytes
/// without a heap allocation; it orders, compares and hashes as the string's bytes, which
/// is how `str` orders, so maps keyed by it iterate in id order.
#[derive(Clone)]
pub struct IdKey(Repr);

/// Private, so every key is made by `IdKey::new`: the order and equality of two inline
/// ids read the bytes past their lengths, which `new` leaves zero, and an id of up to
/// `INLINE` bytes is always inline.
#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl IdKey {
    pub fn new(id: &str) -> Self {
        if id.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..id.len()].copy_from_slice(id.as_bytes());
            IdKey(Repr::Inline {
                len: id.len() as u8,
                bytes,
            })
        } else {
            IdKey(Repr::Heap(id.into()))
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(s) => s.as_bytes(),
        }
    }

    /// The inline bytes as three big-endian words: two inline ids order as their words,
    /// then their lengths. The bytes past an inline id's length are zeros, so the first
    /// word that differs orders two ids as their bytes do, and where none differs the
    /// shorter id is a prefix of the longer. A lookup among a million cameras makes a
    /// few dozen comparisons, and real ids share long prefixes (one vendor's MAC
    /// addresses), which a byte-wise compare walks in a call to `memcmp` each time.
    fn words(bytes: &[u8; INLINE]) -> [u64; 3] {
        let word = |from: usize| {
            let mut w = [0u8; 8];
            let to = (from + 8).min(INLINE);
            w[..to - from].copy_from_slice(&bytes[from..to]);
            u64::from_be_bytes(w)
        };
        [word(0), word(8), word(16)]
    }

    /// Where `id` is, or would go, in `ids` (sorted).
    pub fn search(ids: &[IdKey], id: &str) -> Result<usize, usize> {
        Self::look_up(
            ids,
            id,
            |ids, key| ids.binary_search(key),
            |ids, bytes| ids.binary_search_by(|c| c.as_bytes().cmp(bytes)),
        )
    }

    /// Looks `id` up in `within` as an `IdKey` when it fits inline (compared word by
    /// word), by its bytes otherwise, so a lookup never copies a long id to the heap.
    fn look_up<M, R>(
        within: M,
        id: &str,
        inline: impl FnOnce(M, &IdKey) -> R,
        bytes: impl FnOnce(M, &[u8]) -> R,
    ) -> R {
        if id.len() <= INLINE {
            inline(within, &IdKey::new(id))
        } else {
            bytes(within, id.as_bytes())
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Built from a `str` only, so always valid.
            Repr::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Repr::Heap(s) => s,
        }
    }
}

impl From<&str> for IdKey {
    fn from(id: &str) -> Self {
        IdKey::new(id)
    }
}

impl PartialEq for IdKey {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (
                Repr::Inline { len, bytes },
                Repr::Inline {
                    len: other_len,
                    bytes: other_bytes,
                },
            ) => len == other_len && bytes == other_bytes,
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}
impl Eq for IdKey {}
impl PartialOrd for IdKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for IdKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (&self.0, &other.0) {
            (
                Repr::Inline { len, bytes },
                Repr::Inline {
                    len: other_len,
                    bytes: other_bytes,
                },
            ) => Self::words(bytes)
                .cmp(&Self::words(other_bytes))
                .then(len.cmp(other_len)),
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
    }
}
impl Hash for IdKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}
impl Borrow<[u8]> for IdKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}
impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl fmt::Display for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
/// As the id's string. In postcard (not human-readable) a string and bytes encode alike,
/// and writing the bytes skips checking, for each of a million ids in a snapshot, that
/// bytes made from a `str` are still UTF-8.
impl Serialize for IdKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(self.as_str())
        } else {
            s.serialize_bytes(self.as_bytes())
        }
    }
}
impl<'de> Deserialize<'de> for IdKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IdKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a camera or server id")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IdKey, E> {
                Ok(IdKey::new(v))
            }
        }
        d.deserialize_str(V)
    }
}

/// One copy of each distinct value, shared by everything that holds it: a million leases
/// have a handful of distinct terms. Values nobody else holds any more are dropped now and
/// then, so the table stays as small as what is in use.
#[derive(Clone, Debug)]
pub struct Interner<T> {
    values: HashSet<Arc<T>>,
    /// Sweep for unused values when the table grows past this.
    sweep_at: usize,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            values: HashSet::new(),
            sweep_at: 64,
        }
    }
}

impl<T: Eq + Hash> Interner<T> {
    /// The shared copy of the value `key` stands for, made with `make` only if there is
    /// none yet.
    pub fn intern_borrowed<Q>(&mut self, key: &Q, make: impl FnOnce(&Q) -> T) -> Arc<T>
    where
        Arc<T>: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.values.get(key) {
            Some(shared) => shared.clone(),
            None => self.intern(make(key)),
        }
    }

    pub fn intern(&mut self, value: T) -> Arc<T> {
        if let Some(shared) = self.values.get(&value) {
            return shared.clone();
        }
        if self.values.len() >= self.sweep_at {
            self.values.retain(|v| Arc::strong_count(v) > 1);
            self.sweep_at = (self.values.len() * 2).max(64);
        }
        let shared = Arc::new(value);
        self.values.insert(shared.clone());
        shared
    }
}

/// How a snapshot writes the terms of its leases. Schema 4 writes each distinct terms
/// once, in a table ahead of the camera records, and each held lease as its index in it:
/// a million leases share a handful of terms, and writing them out in full made most of
/// a snapshot's bytes and of the time the event loop spends serializing it. Snapshots
/// and backups written before schema 4 hold the terms in full with every lease
/// (`TermsFormat::Inline`), and are read so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermsFormat {
    Inline,
    Table,
}

/// Where the terms a lease refers to are read from, while camera records deserialize.
enum Reading {
    /// In full with each lease, joined to one table as they come.
    Inline(Interner<super::Terms>),
    /// By index into the table read ahead of the records.
    Table(Vec<Arc<super::Terms>>),
}

/// Indices of the terms being written, by the address of their shared copy, with the
/// last one looked up (a server's cameras follow one another and share their terms).
struct Writing {
    index: TermsIndices,
    last: Option<(*const super::Terms, u32)>,
}

thread_local! {
    /// The terms deserialized camera records on this thread refer to (`reading_cameras`):
    /// without a shared table each of a million leases would come back with its own copy.
    static READING: RefCell<Option<Reading>> = const { RefCell::new(None) };
    /// The format the camera records deserialized on this thread were written in.
    static FORMAT: Cell<TermsFormat> = const { Cell::new(TermsFormat::Table) };
    /// The index of each terms while camera records serialize (`writing_cameras`).
    static WRITING: RefCell<Option<Writing>> = const { RefCell::new(None) };
}

/// Sets a thread-local for the length of a call and puts back what it held when dropped:
/// a panic in the call (caught by a fuzzer, or on a thread that goes on to other work)
/// cannot leave it set for the next one.
struct Scoped<T: 'static> {
    key: &'static LocalKey<RefCell<Option<T>>>,
    outer: Option<Option<T>>,
}

impl<T> Scoped<T> {
    fn set(key: &'static LocalKey<RefCell<Option<T>>>, value: T) -> Self {
        let outer = key.with(|k| k.borrow_mut().replace(value));
        Scoped {
            key,
            outer: Some(outer),
        }
    }

    /// Ends the scope; returns the value as the call left it.
    fn end(mut self) -> Option<T> {
        self.put_back()
    }

    fn put_back(&mut self) -> Option<T> {
        let outer = self.outer.take()?;
        self.key
            .with(|k| std::mem::replace(&mut *k.borrow_mut(), outer))
    }
}

impl<T> Drop for Scoped<T> {
    fn drop(&mut self) {
        self.put_back();
    }
}

/// The terms format in force before `read_as`, put back when dropped.
struct FormatScope(TermsFormat);

impl Drop for FormatScope {
    fn drop(&mut self) {
        FORMAT.with(|c| c.set(self.0));
    }
}

/// Runs `f`, a deserialization of data written in `format`, on this thread.
pub fn read_as<R>(format: TermsFormat, f: impl FnOnce() -> R) -> R {
    let _outer = FormatScope(FORMAT.with(|c| c.replace(format)));
    f()
}

/// The format camera records are read in on this thread now.
pub(crate) fn reading_format() -> TermsFormat {
    FORMAT.with(|c| c.get())
}

/// Runs `f`, a deserialization of camera records, with the terms they refer to; returns
/// the table of terms too, for the loaded state to keep interning into.
pub(crate) fn reading_cameras<R>(
    table: Option<Vec<super::Terms>>,
    f: impl FnOnce() -> R,
) -> (R, Interner<super::Terms>) {
    let mut interner = Interner::default();
    let reading = match table {
        None => Reading::Inline(Interner::default()),
        Some(table) => Reading::Table(table.into_iter().map(|t| interner.intern(t)).collect()),
    };
    let scope = Scoped::set(&READING, reading);
    let out = f();
    if let Some(Reading::Inline(inline)) = scope.end() {
        interner = inline;
    }
    (out, interner)
}

/// The index of each distinct terms, by the address of its shared copy, in the order
/// `add` first meets them.
#[derive(Default)]
pub(crate) struct TermsIndex<'a> {
    index: TermsIndices,
    table: Vec<&'a super::Terms>,
    last: Option<*const super::Terms>,
}

impl<'a> TermsIndex<'a> {
    pub(crate) fn add(&mut self, terms: &'a Arc<super::Terms>) {
        let ptr = Arc::as_ptr(terms);
        // A server's cameras follow one another and share their terms.
        if self.last != Some(ptr) {
            self.last = Some(ptr);
            let next = self.table.len() as u32;
            self.index.entry(ptr).or_insert_with(|| {
                self.table.push(terms);
                next
            });
        }
    }

    /// The index, for `writing_cameras`, and the terms in index order.
    pub(crate) fn split(self) -> (TermsIndices, Vec<&'a super::Terms>) {
        (self.index, self.table)
    }
}

pub(crate) type TermsIndices = HashMap<*const super::Terms, u32>;

/// Runs `f`, a serialization of camera records, with `index` giving each terms its index.
pub(crate) fn writing_cameras<R>(index: TermsIndices, f: impl FnOnce() -> R) -> R {
    let _scope = Scoped::set(&WRITING, Writing { index, last: None });
    f()
}

/// `deserialize_with` for shared lease terms: an index into the table read ahead, or (in
/// data older than the table) the terms in full, joined to the table being built.
pub(crate) fn shared_terms<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<super::Terms>, D::Error> {
    if reading_format() == TermsFormat::Table {
        let i = u32::deserialize(d)?;
        return READING.with(|r| match r.borrow().as_ref() {
            Some(Reading::Table(table)) => table.get(i as usize).cloned().ok_or_else(|| {
                serde::de::Error::custom(format!("lease terms {i} are not in the table"))
            }),
            _ => Err(serde::de::Error::custom("lease terms outside their table")),
        });
    }
    let terms = super::Terms::deserialize(d)?;
    Ok(READING.with(|r| match r.borrow_mut().as_mut() {
        Some(Reading::Inline(table)) => table.intern(terms),
        _ => Arc::new(terms),
    }))
}

/// `serialize_with` for shared lease terms: their index in the table written ahead.
pub(crate) fn serialize_shared<S: Serializer>(
    v: &Arc<super::Terms>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let ptr = Arc::as_ptr(v);
    let i = WRITING.with(|w| {
        let mut w = w.borrow_mut();
        let w = w.as_mut()?;
        match w.last {
            Some((last, i)) if last == ptr => Some(i),
            _ => {
                let i = *w.index.get(&ptr)?;
                w.last = Some((ptr, i));
                Some(i)
            }
        }
    });
    match i {
        Some(i) => i.serialize(s),
        None => Err(serde::ser::Error::custom("lease terms outside their table")),
    }
}

/// A sorted map that keeps its nodes nearly full. A `BTreeMap` filled one key at a time
/// splits a full node in two; keys that arrive in ascending runs (a video server's
/// cameras, one after the other) leave every node it splits a little over half full for
/// good, about 120 bytes per camera record where a full node takes 65. So once the map
/// has grown by half since it was last built, it is built again in bulk, which fills
/// every node: each rebuild moves every entry once, which the half as many inserts since
/// the last one pay for (amortised O(1) per insert). Entries are never removed one by one
/// (camera records live as long as their key), so only inserts count.
#[derive(Clone, Debug)]
pub struct DenseMap<K, V> {
    map: BTreeMap<K, V>,
    /// Entries when the map was last built in bulk.
    built: usize,
}

/// Below this many entries a map is not rebuilt: its nodes are too few to matter.
const REBUILD_MIN: usize = 64;

impl<K, V> Default for DenseMap<K, V> {
    fn default() -> Self {
        DenseMap {
            map: BTreeMap::new(),
            built: 0,
        }
    }
}

/// Looked up by a camera id the way `IdKey::search` finds one in a slice.
impl<V> DenseMap<IdKey, V> {
    pub fn get_id(&self, id: &str) -> Option<&V> {
        get_by_id(&self.map, id)
    }

    pub fn get_id_mut(&mut self, id: &str) -> Option<&mut V> {
        get_by_id_mut(&mut self.map, id)
    }
}

fn get_by_id<'a, V>(map: &'a BTreeMap<IdKey, V>, id: &str) -> Option<&'a V> {
    IdKey::look_up(map, id, |m, k| m.get(k), |m, b| m.get(b))
}

fn get_by_id_mut<'a, V>(map: &'a mut BTreeMap<IdKey, V>, id: &str) -> Option<&'a mut V> {
    IdKey::look_up(map, id, |m, k| m.get_mut(k), |m, b| m.get_mut(b))
}

/// Entries keyed by id (the core's servers), looked up by `&str` as `DenseMap::get_id`
/// does. The core finds a server among ten thousand by its id several times per request:
/// with `String` keys, each of those lookups called `memcmp` a dozen times or more, and
/// replaying a log of camera moves spent a fifth of its time there. It reads and writes
/// as a map keyed by strings, so a snapshot written with `String` keys reads back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdMap<V>(BTreeMap<IdKey, V>);

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap(BTreeMap::new())
    }
}

impl<V> IdMap<V> {
    pub fn get(&self, id: &str) -> Option<&V> {
        get_by_id(&self.0, id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut V> {
        get_by_id_mut(&mut self.0, id)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    pub fn insert(&mut self, id: &str, value: V) -> Option<V> {
        self.0.insert(IdKey::new(id), value)
    }

    pub fn remove(&mut self, id: &str) -> Option<V> {
        IdKey::look_up(&mut self.0, id, |m, k| m.remove(k), |m, b| m.remove(b))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// In id order, as a `BTreeMap<String, V>` iterates.
    pub fn iter(&self) -> IdMapIter<'_, V> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn values(&self) -> std::collections::btree_map::Values<'_, IdKey, V> {
        self.0.values()
    }

    pub fn values_mut(&mut self) -> std::collections::btree_map::ValuesMut<'_, IdKey, V> {
        self.0.values_mut()
    }
}

/// `IdMap::iter`: ids as `&str`.
pub type IdMapIter<'a, V> = std::iter::Map<
    std::collections::btree_map::Iter<'a, IdKey, V>,
    fn((&'a IdKey, &'a V)) -> (&'a str, &'a V),
>;

impl<'a, V> IntoIterator for &'a IdMap<V> {
    type Item = (&'a str, &'a V);
    type IntoIter = IdMapIter<'a, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A set of ids (the servers whose renewal is in memory only), looked up as `IdMap` does;
/// it reads and writes as a set of strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdSet(BTreeSet<IdKey>);

impl IdSet {
    pub fn contains(&self, id: &str) -> bool {
        IdKey::look_up(&self.0, id, |s, k| s.contains(k), |s, b| s.contains(b))
    }

    /// Whether `id` was not in the set. An id already there costs no copy (servers check
    /// in again all the time), nor does one that fits inline.
    pub fn insert(&mut self, id: &str) -> bool {
        IdKey::look_up(
            &mut self.0,
            id,
            |s, key| s.insert(key.clone()),
            |s, bytes| !s.contains(bytes) && s.insert(IdKey::new(id)),
        )
    }

    pub fn remove(&mut self, id: &str) -> bool {
        IdKey::look_up(&mut self.0, id, |s, k| s.remove(k), |s, b| s.remove(b))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(IdKey::as_str)
    }
}
impl<K: Ord, V> DenseMap<K, V> {
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(key)
    }

    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.map.get_mut(key)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.map.contains_key(key)
    }

    /// The value of `key`, inserted as the default if the map has none.
    pub fn entry_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        // Checked before the insert, so a rebuild never invalidates the entry handed out;
        // the length test comes first so that a lookup of a present key costs nothing more.
        if self.map.len() >= self.rebuild_at() && !self.map.contains_key(&key) {
            self.rebuild();
        }
        self.map.entry(key).or_default()
    }

    fn rebuild_at(&self) -> usize {
        (self.built + self.built / 2).max(REBUILD_MIN)
    }

    /// Builds the map again with full nodes. `append` merges two maps by pushing their
    /// union, in order, into fresh nodes, freeing the old ones as it goes: no second copy
    /// of the entries is made (`collect` would gather them in a vector first).
    fn rebuild(&mut self) {
        let mut rest = std::mem::take(&mut self.map);
        if let Some((k, v)) = rest.pop_first() {
            self.map.insert(k, v);
            self.map.append(&mut rest);
        }
        self.built = self.map.len();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> std::collections::btree_map::Iter<'_, K, V> {
        self.map.iter()
    }

    pub fn values(&self) -> std::collections::btree_map::Values<'_, K, V> {
        self.map.values()
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for DenseMap<K, V> {
    /// Built in bulk (`BTreeMap`'s `collect` sorts and then fills each node).
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let map: BTreeMap<K, V> = iter.into_iter().collect();
        DenseMap {
            built: map.len(),
            map,
        }
    }
}

impl<K: Serialize, V: Serialize> Serialize for DenseMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Deserialize<'de> for DenseMap<K, V> {
    /// Read as a sorted run and built in bulk, as a snapshot loads.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries: Vec<(K, V)> = d.deserialize_map(EntriesVisitor(PhantomData))?;
        Ok(entries.into_iter().collect())
    }
}

/// A length hint from the input is trusted only this far before the items arrive.
const MAX_PREALLOC: usize = 1 << 16;

struct EntriesVisitor<K, V>(PhantomData<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<K, V> {
    type Value = Vec<(K, V)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(MAX_PREALLOC));
        while let Some(entry) = map.next_entry()? {
            out.push(entry);
        }
        Ok(out)
    }
}

/// An optional instant in 8 bytes (`u64::MAX`, an instant no clock reaches, is "none").
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OptionalInstant(u64);

impl OptionalInstant {
    pub const NONE: OptionalInstant = OptionalInstant(u64::MAX);

    pub fn get(self) -> Option<super::Timestamp> {
        (self.0 != u64::MAX).then_some(super::Timestamp(self.0))
    }

    pub fn set(&mut self, t: super::Timestamp) {
        self.0 = t.0.min(u64::MAX - 1);
    }
}

impl Default for OptionalInstant {
    fn default() -> Self {
        OptionalInstant::NONE
    }
}

impl fmt::Debug for OptionalInstant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

impl Serialize for OptionalInstant {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> Deserialize<'de> for OptionalInstant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = OptionalInstant::NONE;
        if let Some(t) = Option::<super::Timestamp>::deserialize(d)? {
            out.set(t);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_reading_leaves_the_format_and_the_table_as_they_were() {
        let caught = std::panic::catch_unwind(|| {
            read_as(TermsFormat::Inline, || {
                reading_cameras(Some(Vec::new()), || {
                    writing_cameras(TermsIndices::new(), || panic!("a decoder gave up"))
                })
            })
        });
        assert!(caught.is_err());
        assert_eq!(reading_format(), TermsFormat::Table);
        assert!(READING.with(|r| r.borrow().is_none()));
        assert!(WRITING.with(|w| w.borrow().is_none()));
    }

    #[test]
    fn camera_keys_order_as_their_strings() {
        let mut ids: Vec<String> = ["", "a", "02:00:00:00:00:01", "02:00:00:00:00:0a", "é"]
            .map(String::from)
            .to_vec();
        ids.extend(["x".repeat(22), "x".repeat(23), "y".repeat(128)]);
        for a in &ids {
            assert_eq!(IdKey::new(a).as_str(), a);
            for b in &ids {
                assert_eq!(IdKey::new(a).cmp(&IdKey::new(b)), a.cmp(b), "{a} {b}");
                assert_eq!(IdKey::new(a) == IdKey::new(b), a == b);
            }
        }
        assert_eq!(std::mem::size_of::<IdKey>(), 24);
        let long = "a-camera-id-longer-than-the-inline-bytes";
        for id in ["cam-1", long] {
            let bytes = postcard::to_allocvec(&IdKey::new(id)).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(id).unwrap());
            let back: IdKey = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back.as_str(), id);
            let json = serde_json::to_string(&IdKey::new(id)).unwrap();
            assert_eq!(json, serde_json::to_string(id).unwrap());
        }
    }

    #[test]
    fn equal_values_share_one_copy_and_unused_ones_go() {
        let mut t: Interner<String> = Interner::default();
        let a = t.intern("a".into());
        let b = t.intern("a".into());
        assert!(Arc::ptr_eq(&a, &b));
        for i in 0..200 {
            t.intern(i.to_string());
        }
        // The unused numbers were swept as the table grew; "a" is still held.
        assert!(t.values.len() < 100, "{}", t.values.len());
        assert!(Arc::ptr_eq(&a, &t.intern("a".into())));
    }

    #[test]
    fn borrowed_terms_find_their_shared_copy_and_make_one_only_when_new() {
        use crate::core::{AsTermsRef, PoolId, Terms, TermsRef};
        let pool = PoolId::new("K1", "Default");
        let features: crate::core::Features = [("video".to_string(), 1)].into();
        let modules = vec!["lpr".to_string()];
        let borrowed = TermsRef {
            server: "srv-1",
            pool: &pool,
            features: &features,
            class: "camera",
            modules: &modules,
            device_version: Some("7.1"),
            legacy: false,
        };
        let owned = Terms {
            server: "srv-1".into(),
            pool: pool.clone(),
            features: features.clone(),
            class: "camera".into(),
            modules: modules.clone(),
            device_version: Some("7.1".into()),
            legacy: false,
        };
        let mut t: Interner<Terms> = Interner::default();
        let shared = t.intern(owned.clone());
        let mut made = 0;
        let found = t.intern_borrowed(&borrowed as &dyn AsTermsRef, |k| {
            made += 1;
            k.terms_ref().to_terms()
        });
        assert!(Arc::ptr_eq(&shared, &found));
        assert_eq!(made, 0);
        // Each field tells terms apart, as `Terms`' own equality does.
        let other_pool = PoolId::new("K1", "Lobby");
        let other_features: crate::core::Features = [("video".to_string(), 2)].into();
        let others = [
            TermsRef {
                pool: &other_pool,
                ..borrowed
            },
            TermsRef {
                features: &other_features,
                ..borrowed
            },
            TermsRef {
                server: "srv-2",
                ..borrowed
            },
            TermsRef {
                class: "door",
                ..borrowed
            },
            TermsRef {
                modules: &[],
                ..borrowed
            },
            TermsRef {
                device_version: None,
                ..borrowed
            },
            TermsRef {
                legacy: true,
                ..borrowed
            },
        ];
        for other in others {
            let new = t.intern_borrowed(&other as &dyn AsTermsRef, |k| k.terms_ref().to_terms());
            assert!(!Arc::ptr_eq(&shared, &new));
            assert_eq!(new.terms_ref(), other);
            // The copy made is found again, from owned terms as from borrowed ones.
            assert!(Arc::ptr_eq(&new, &t.intern((*new).clone())));
            assert!(Arc::ptr_eq(
                &new,
                &t.intern_borrowed(&other as &dyn AsTermsRef, |_| unreachable!())
            ));
        }
    }

    #[test]
    fn a_dense_map_is_rebuilt_as_it_grows_and_keeps_its_entries() {
        let mut m: DenseMap<u32, u64> = DenseMap::default();
        let mut model = BTreeMap::new();
        let mut builds = vec![];
        // Runs of ascending keys, interleaved, as video servers check out their cameras.
        for i in 0..2_000u32 {
            let key = (i % 7) * 1_000 + i / 7;
            *m.entry_or_default(key) += u64::from(i);
            *model.entry(key).or_insert(0) += u64::from(i);
            if builds.last() != Some(&m.built) {
                builds.push(m.built);
            }
            // Present keys never trigger a rebuild, however large the map has grown.
            *m.entry_or_default(key) += 1;
            *model.entry(key).or_insert(0) += 1;
        }
        assert_eq!(builds, [0, 64, 96, 144, 216, 324, 486, 729, 1093, 1639]);
        assert!(m.iter().eq(model.iter()));
        assert_eq!(m.len(), model.len());
        assert_eq!(m.get(&7_000), None);
        assert_eq!(m.get(&1_000), model.get(&1_000));
        // Serialized as the map it holds, and read back built in bulk.
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&model).unwrap());
        let back: DenseMap<u32, u64> = postcard::from_bytes(&bytes).unwrap();
        assert!(back.iter().eq(model.iter()));
        assert_eq!(back.built, model.len());
    }

    proptest::proptest! {
        #[test]
        fn a_dense_map_holds_what_a_btree_map_holds(
            ops in proptest::collection::vec((0u16..600, proptest::bool::ANY), 0..800)
        ) {
            let mut m: DenseMap<u16, u32> = DenseMap::default();
            let mut model: BTreeMap<u16, u32> = BTreeMap::new();
            for (i, (key, write)) in ops.into_iter().enumerate() {
                if write {
                    *m.entry_or_default(key) = i as u32;
                    *model.entry(key).or_default() = i as u32;
                } else {
                    proptest::prop_assert_eq!(m.get(&key), model.get(&key));
                    proptest::prop_assert_eq!(m.contains_key(&key), model.contains_key(&key));
                }
                if let Some(v) = m.get_mut(&key) {
                    *v += 1;
                    *model.get_mut(&key).unwrap() += 1;
                }
                proptest::prop_assert!(m.len() <= m.rebuild_at());
            }
            proptest::prop_assert!(m.iter().eq(model.iter()));
            proptest::prop_assert!(m.values().eq(model.values()));
            proptest::prop_assert_eq!(m.is_empty(), model.is_empty());
        }

        /// The word-wise order of inline ids must be the strings' order, or a map searched
        /// with one and built with the other loses entries. Both ids share a prefix of up
        /// to 24 characters (NUL bytes among them), so the words that decide are the second
        /// and third as often as the first, ids one NUL longer than another tie on every
        /// word, and pairs straddle the inline length.
        #[test]
        fn camera_keys_order_and_compare_as_their_strings(
            prefix in "[a\\x00\\x{e9}]{0,24}",
            a in "[a\\x00]{0,3}",
            b in "[a\\x00]{0,3}",
        ) {
            let (a, b) = (format!("{prefix}{a}"), format!("{prefix}{b}"));
            let (ka, kb) = (IdKey::new(&a), IdKey::new(&b));
            proptest::prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            proptest::prop_assert_eq!(ka == kb, a == b);
            proptest::prop_assert_eq!(ka.cmp(&kb), ka.as_bytes().cmp(kb.as_bytes()));
        }

        /// The core's servers moved from `BTreeMap<String, _>` and `BTreeSet<String>` to
        /// `IdMap` and `IdSet`: run side by side on ids short and long (straddling the
        /// inline length), they must hold, find and list the same, and write the same
        /// bytes, or a snapshot written before would read back otherwise.
        #[test]
        fn id_maps_and_sets_hold_and_write_what_string_keyed_ones_do(
            ops in proptest::collection::vec(
                (0u8..3, "(srv-[0-9a-f]{1,3}|srv-[0-9a-f]{12}|[a-z]{20,24})", 0u32..100),
                0..200,
            )
        ) {
            let (mut map, mut model): (IdMap<u32>, BTreeMap<String, u32>) = Default::default();
            let (mut set, mut set_model): (IdSet, BTreeSet<String>) = Default::default();
            for (op, id, v) in &ops {
                match op {
                    0 => {
                        proptest::prop_assert_eq!(map.insert(id, *v), model.insert(id.clone(), *v));
                        proptest::prop_assert_eq!(set.insert(id), set_model.insert(id.clone()));
                    }
                    1 => {
                        proptest::prop_assert_eq!(map.remove(id), model.remove(id));
                        proptest::prop_assert_eq!(set.remove(id), set_model.remove(id));
                    }
                    _ => {
                        if let Some(x) = map.get_mut(id) {
                            *x += v;
                        }
                        if let Some(x) = model.get_mut(id) {
                            *x += v;
                        }
                    }
                }
                proptest::prop_assert_eq!(map.get(id), model.get(id));
                proptest::prop_assert_eq!(map.contains_key(id), model.contains_key(id));
                proptest::prop_assert_eq!(set.contains(id), set_model.contains(id));
            }
            proptest::prop_assert_eq!(map.len(), model.len());
            proptest::prop_assert!(map.iter().eq(model.iter().map(|(k, v)| (k.as_str(), v))));
            proptest::prop_assert!(set.iter().eq(set_model.iter().map(String::as_str)));
            written_as(&map, &model)?;
            written_as(&set, &set_model)?;
        }
    }

    /// `ours` writes the bytes (postcard) and the JSON `model` writes, and reads both back.
    fn written_as<T, M>(ours: &T, model: &M) -> Result<(), proptest::test_runner::TestCaseError>
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + fmt::Debug,
        M: Serialize,
    {
        let bytes = postcard::to_allocvec(ours).unwrap();
        proptest::prop_assert_eq!(&bytes, &postcard::to_allocvec(model).unwrap());
        proptest::prop_assert_eq!(&postcard::from_bytes::<T>(&bytes).unwrap(), ours);
        let json = serde_json::to_string(ours).unwrap();
        proptest::prop_assert_eq!(&json, &serde_json::to_string(model).unwrap());
        proptest::prop_assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), ours);
        Ok(())
    }

    #[test]
    fn an_optional_instant_round_trips() {
        let mut o = OptionalInstant::default();
        assert_eq!(o.get(), None);
        let bytes = postcard::to_allocvec(&o).unwrap();
        assert_eq!(postcard::from_bytes::<OptionalInstant>(&bytes).unwrap(), o);
        o.set(super::super::Timestamp(5));
        assert_eq!(o.get(), Some(super::super::Timestamp(5)));
        let bytes = postcard::to_allocvec(&o).unwrap();
        assert_eq!(postcard::from_bytes::<OptionalInstant>(&bytes).unwrap(), o);
    }
}
