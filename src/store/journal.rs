//! The journal: the write-ahead file every batch is appended to, and synced to before any
//! of its answers go out. redb holds the snapshot, the log and the audit chain; moving a
//! batch into it costs a copy-on-write of every B-tree page the batch touches (a dozen
//! scattered pages, and a sync of each) where the journal costs one contiguous write.
//! Batches are moved into redb in bulk (a checkpoint), and on open whatever the journal
//! holds beyond the last checkpoint is moved in before the state is loaded.
//!
//! The journal is two files. Frames go to one of them; a checkpoint that runs on another
//! thread first switches to the other, so batches go on being written from the other's
//! start while the first one's move into redb. A file is written over only once every
//! frame it holds is in redb; until then the journal stays in the file it is in, which
//! grows. A switch syncs the file it leaves: a frame there that was written without a
//! sync must not be lost while a later one in the other file survives.
//!
//! Each file is filled with zeros ahead of use and then overwritten from the start, so a
//! sync never has to record a new file length or newly allocated blocks: only the data
//! goes to the disk. A frame is `[magic][length][check][payload]`,
//! the check being the first 16 bytes of the payload's HMAC-SHA256 under a key of this
//! state directory (kept in redb): a payload holds bytes clients chose (camera ids), and
//! with a plain hash they could plant what reads as a frame inside one. The payload
//! carries the frame's number. Each file is read from its start while frames are whole,
//! check out and carry consecutive numbers: frames left from before they were written
//! over carry lower numbers, so they are never mistaken for new ones. The frames of both
//! files numbered from the first not in redb on are taken while their numbers follow on
//! from it, with no gap. A run may begin below the first number wanted: a checkpoint can
//! reach the disk though its sync reported a failure, and then the journal was written on
//! without starting over. Those frames are skipped, not taken for the end of the journal.

use super::audit::AuditRecord;
use super::{fail, StoreError};
use crate::core::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

const MAGIC: [u8; 4] = *b"NKJ1";
const HEADER: usize = 24;
/// Zeros written ahead of the tail at a time. The file settles at about the checkpoint
/// size plus one step, and is reused from then on.
pub const GROW_BYTES: u64 = 1 << 20;
/// A frame larger than this is not one of ours: reading stops there.
const MAX_FRAME: usize = 256 << 20;

/// Where the journal lives: a file, or in the power-cut tests a disk that forgets what
/// was not synced.
pub trait JournalFile: Send + Sync + std::fmt::Debug {
    fn size(&self) -> io::Result<u64>;
    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn sync_data(&self) -> io::Result<()>;
}

impl JournalFile for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        self.metadata().map(|m| m.len())
    }
    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, out, offset)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }
}

/// One committed batch as the journal carries it: its log record (already serialized,
/// with its log sequence if it has commands), its audit records, already chained, and the
/// high-water mark after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub number: u64,
    pub seq: Option<u64>,
    #[serde(with = "record_bytes")]
    pub record: Vec<u8>,
    pub audit: Vec<AuditRecord>,
    pub hwm: Timestamp,
}

/// A frame's record as bytes. postcard writes bytes and a sequence of `u8` alike (a
/// length, then the bytes), so frames on disk read the same either way; as bytes, a record
/// is one copy each way instead of a call per byte.
mod record_bytes {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a batch record's bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                // The length comes from the file: trust it only so far.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A frame written and not yet settled with the outcome of its sync (`Journal::settle`),
/// which may run on another thread meanwhile (`Journal::file`). Frames are settled in the
/// order they were written; more may be written before the first is settled.
#[derive(Debug)]
#[must_use]
pub struct Written {
    start: u64,
    end: u64,
    generation: u64,
}

#[derive(Debug)]
pub struct Journal {
    /// The file frames are written to.
    file: Arc<dyn JournalFile>,
    /// The other file, and its length.
    other: Arc<dyn JournalFile>,
    other_len: u64,
    /// The number of the last frame in `other` not yet known to be in redb: until it is,
    /// `other` is not written over.
    other_holds: Option<u64>,
    key: ring::hmac::Key,
    /// The end of the settled frames: where the first unsettled one starts.
    tail: u64,
    /// Bytes of zeros (or old frames) the file holds: writes stay below this.
    len: u64,
    /// The number the first frame after the settled ones carries.
    next: u64,
    /// Frames written and not yet settled, in order from `tail`, and where the next one
    /// goes.
    unsettled: VecDeque<Frame>,
    ahead: u64,
    /// Counts failures: a frame written before the last one cannot be settled after it.
    generation: u64,
    /// Failed frames lie between `tail` and this until they are zeroed (see
    /// `fail_unsettled`): nothing is written before they are.
    failed_to: u64,
}

impl Journal {
    /// Opens the journal's two files and reads the frames numbered from `first` on (those
    /// not yet moved into redb). The next frame is written at the start of the first
    /// file: the caller moves what was read into redb before writing anything.
    pub fn open(
        files: [Box<dyn JournalFile>; 2],
        first: u64,
        key: &[u8; 32],
    ) -> Result<(Journal, Vec<Frame>), StoreError> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let [file, other] = files;
        let len = file.size().map_err(io_fail)?;
        let other_len = other.size().map_err(io_fail)?;
        let mut frames = read_run(file.as_ref(), &key, len);
        frames.extend(read_run(other.as_ref(), &key, other_len));
        let frames = following_on(frames, first);
        let next = first + frames.len() as u64;
        let mut journal = Journal {
            file: Arc::from(file),
            other: Arc::from(other),
            other_len,
            other_holds: None,
            key,
            tail: 0,
            len,
            next,
            unsettled: VecDeque::new(),
            ahead: 0,
            generation: 0,
            failed_to: 0,
        };
        if journal.len < GROW_BYTES {
            journal.grow(GROW_BYTES)?;
        }
        Ok((journal, frames))
    }

    /// The number the next frame will carry: recorded in redb at each checkpoint.
    pub fn next_number(&self) -> u64 {
        self.next
    }

    /// Bytes written to the file in use since it was last written from its start (at a
    /// switch, or once redb held all it had).
    pub fn pending_bytes(&self) -> u64 {
        self.tail
    }

    /// Appends a frame (numbered here) and, with `durable`, syncs it to the disk. A frame
    /// whose write or sync failed is overwritten by the next one: the tail does not move.
    /// (The store writes and settles in two halves, so its sync can run elsewhere.)
    #[cfg(test)]
    pub fn append(&mut self, frame: Frame, durable: bool) -> Result<Frame, StoreError> {
        let written = self.write(frame)?;
        let synced = if durable {
            self.file.sync_data()
        } else {
            Ok(())
        };
        self.settle(written, synced)
    }

    /// Writes a frame (numbered here) after the last one written, without syncing it. It
    /// counts once settled; a failure here fails every frame not yet settled.
    pub fn write(&mut self, mut frame: Frame) -> Result<Written, StoreError> {
        if let Err(e) = self.clear_failed() {
            return Err(io_fail(e));
        }
        frame.number = self.next + self.unsettled.len() as u64;
        let bytes = match encode_frame(&self.key, &frame) {
            Ok(b) => b,
            Err(e) => {
                // The store fails every batch begun on any error here, so the frames
                // written before this one must not count either.
                self.fail_unsettled();
                return Err(e);
            }
        };
        let start = self.ahead;
        let end = start + bytes.len() as u64;
        if end > self.len {
            if let Err(e) = self.grow(end.max(self.len + GROW_BYTES)) {
                self.fail_unsettled();
                return Err(e);
            }
        }
        if let Err(e) = self.file.write_at(start, &bytes) {
            // Part of it may be written.
            self.failed_to = self.failed_to.max(end);
            self.fail_unsettled();
            return Err(io_fail(e));
        }
        self.ahead = end;
        self.unsettled.push_back(frame);
        Ok(Written {
            start,
            end,
            generation: self.generation,
        })
    }

    /// Refuses work that must wait until every frame written is settled, and zeroes
    /// failed frames whose zeroing the disk refused so far: a daemon that stops writes
    /// only a checkpoint (its last snapshot), and failed frames it left behind would be
    /// read after the restart as batches that count.
    pub fn settled(&mut self) -> Result<(), StoreError> {
        if !self.unsettled.is_empty() {
            return Err(StoreError::Db(
                "the journal: frames written are not settled yet".into(),
            ));
        }
        self.clear_failed().map_err(io_fail)
    }

    /// How many frames are written and not yet settled.
    pub fn unsettled(&self) -> usize {
        self.unsettled.len()
    }

    /// The audit records of the frames written and not yet settled, oldest first.
    pub fn unsettled_audit(&self) -> impl Iterator<Item = &AuditRecord> {
        self.unsettled.iter().flat_map(|f| &f.audit)
    }

    /// The file, so written frames can be synced away from the thread that writes.
    pub fn file(&self) -> Arc<dyn JournalFile> {
        self.file.clone()
    }

    /// Settles the oldest frame not yet settled with the outcome of a sync that began
    /// after it was written (`Ok` for a frame that need not be durable yet: the next
    /// synced frame carries it to the disk). A failure fails it and every frame written
    /// after it, and so does settling a frame out of order or one a failure already
    /// failed.
    pub fn settle(
        &mut self,
        written: Written,
        synced: io::Result<()>,
    ) -> Result<Frame, StoreError> {
        if written.generation != self.generation {
            return Err(StoreError::Db(
                "the journal: an earlier frame failed, so this one did too".into(),
            ));
        }
        if written.start != self.tail {
            return Err(self.out_of_order());
        }
        if let Err(e) = synced {
            self.fail_unsettled();
            return Err(io_fail(e));
        }
        match self.unsettled.pop_front() {
            Some(frame) => {
                self.tail = written.end;
                self.next = frame.number + 1;
                Ok(frame)
            }
            None => Err(self.out_of_order()),
        }
    }

    fn out_of_order(&mut self) -> StoreError {
        self.fail_unsettled();
        StoreError::Db("the journal: frames must be settled in the order they were written".into())
    }

    /// Drops every frame not yet settled. They may still sit in the page cache, or a sync
    /// that reported failure may have written them: they are zeroed, on disk too, before
    /// anything else is written, so neither a reload in this process nor a restart takes
    /// a batch that was answered as failed. Zeroing the first alone would not do: the
    /// next frame takes its place and number, and where it ends the failed one after it
    /// could read as the one that follows.
    fn fail_unsettled(&mut self) {
        self.failed_to = self.failed_to.max(self.ahead);
        // Tried now; if the disk refuses, tried again before the next write.
        let _ = self.clear_failed();
        self.ahead = self.tail;
        self.unsettled.clear();
        self.generation += 1;
    }

    fn clear_failed(&mut self) -> io::Result<()> {
        if self.failed_to > self.tail {
            self.write_zeros(self.tail, self.failed_to)?;
            self.file.sync_data()?;
        }
        self.failed_to = 0;
        Ok(())
    }

    /// Switches to the other file, if every frame it holds is in redb, and syncs the one
    /// it leaves: from here on, frames are written from the other's start. Only while
    /// every frame written is settled, and there is something to leave.
    pub fn switch(&mut self) -> Result<bool, StoreError> {
        if self.other_holds.is_some() || self.tail == 0 {
            return Ok(false);
        }
        self.settled()?;
        self.file.sync_data().map_err(io_fail)?;
        std::mem::swap(&mut self.file, &mut self.other);
        std::mem::swap(&mut self.len, &mut self.other_len);
        self.other_holds = Some(self.next - 1);
        self.tail = 0;
        self.ahead = 0;
        Ok(true)
    }

    /// redb now holds every frame numbered below `next` (a checkpoint committed): a file
    /// whose frames are all among them may be written over. The one in use is written
    /// from its start again, if nothing has been written to it since.
    pub fn in_redb(&mut self, next: u64) {
        if self.other_holds.is_some_and(|last| last < next) {
            self.other_holds = None;
        }
        if self.unsettled.is_empty() && self.failed_to <= self.tail && self.next <= next {
            self.tail = 0;
            self.ahead = 0;
        }
    }

    /// Fills the file with zeros up to `to` and syncs the new length once, so later
    /// syncs carry data only.
    fn grow(&mut self, to: u64) -> Result<(), StoreError> {
        self.write_zeros(self.len, to).map_err(io_fail)?;
        self.file.sync_data().map_err(io_fail)?;
        self.len = to;
        Ok(())
    }

    /// Zeros from `from` to `to`, a MiB at a time.
    fn write_zeros(&self, from: u64, to: u64) -> io::Result<()> {
        let zeros = vec![0u8; (to.saturating_sub(from)).min(GROW_BYTES) as usize];
        let mut at = from;
        while at < to {
            let n = (to - at).min(zeros.len() as u64);
            self.file.write_at(at, &zeros[..n as usize])?;
            at += n;
        }
        Ok(())
    }
}

/// Frames from the start of a file while each is whole, checks out, and carries the
/// number after the one before it.
fn read_run(file: &dyn JournalFile, key: &ring::hmac::Key, len: u64) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut at = 0u64;
    let mut expect: Option<u64> = None;
    while at + HEADER as u64 <= len {
        let mut header = [0u8; HEADER];
        if file.read_at(at, &mut header).is_err() || header[..4] != MAGIC {
            break;
        }
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if size > MAX_FRAME || at + (HEADER + size) as u64 > len {
            break;
        }
        let mut payload = vec![0u8; size];
        if file.read_at(at + HEADER as u64, &mut payload).is_err()
            || check(key, &payload) != header[8..HEADER]
        {
            break;
        }
        match postcard::from_bytes::<Frame>(&payload) {
            Ok(frame) if expect.is_none_or(|e| frame.number == e) => {
                expect = Some(frame.number + 1);
                frames.push(frame);
            }
            _ => break,
        }
        at += (HEADER + size) as u64;
    }
    frames
}

/// Of the frames read from both files, those numbered `first`, `first + 1` and so on, up
/// to the first number missing. (Both files never hold the same number: a number is
/// used again only for a frame that failed, and that is zeroed before anything else is
/// written or the journal switches.)
fn following_on(mut frames: Vec<Frame>, first: u64) -> Vec<Frame> {
    frames.retain(|f| f.number >= first);
    frames.sort_by_key(|f| f.number);
    let taken = frames
        .iter()
        .zip(first..)
        .take_while(|(f, expect)| f.number == *expect)
        .count();
    frames.truncate(taken);
    frames
}

/// A frame's bytes, `[magic][length][check][payload]`: the header, then the payload
/// serialized in place behind it (a second buffer and a copy of every batch showed in
/// the event loop's profile).
fn encode_frame(key: &ring::hmac::Key, frame: &Frame) -> Result<Vec<u8>, StoreError> {
    if frame.record.len() > MAX_FRAME {
        // Not worth serializing to find out.
        return Err(too_large(frame.record.len()));
    }
    // Room for the record and audit records of common size without growing.
    let mut bytes = Vec::with_capacity(HEADER + 64 + frame.record.len() + 256 * frame.audit.len());
    bytes.extend_from_slice(&[0; HEADER]);
    let mut bytes = postcard::to_extend(frame, bytes).map_err(fail)?;
    let len = bytes.len() - HEADER;
    if len > MAX_FRAME {
        return Err(too_large(len));
    }
    let len = len as u32;
    let tag = check(key, &bytes[HEADER..]);
    bytes[..4].copy_from_slice(&MAGIC);
    bytes[4..8].copy_from_slice(&len.to_le_bytes());
    bytes[8..HEADER].copy_from_slice(&tag);
    Ok(bytes)
}

/// The same from a payload serialized already, written the plain way: the tests plant
/// frames with it, and check `encode_frame` against it.
#[cfg(test)]
fn encode(key: &ring::hmac::Key, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&check(key, payload));
    bytes.extend_from_slice(payload);
    bytes
}

fn check(key: &ring::hmac::Key, payload: &[u8]) -> [u8; 16] {
    let tag = ring::hmac::sign(key, payload);
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag.as_ref()[..16]);
    out
}

/// Reading stops at a frame over the limit: written, it would hide every later one.
fn too_large(len: usize) -> StoreError {
    StoreError::Db(format!(
        "the journal: a batch of {len} bytes or more is over the {MAX_FRAME}-byte limit of a frame"
    ))
}

fn io_fail(e: io::Error) -> StoreError {
    StoreError::Db(format!("the journal: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as it was written before its record was serialized as bytes.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct FrameWithRecordAsSequence {
        number: u64,
        seq: Option<u64>,
        record: Vec<u8>,
        audit: Vec<AuditRecord>,
        hwm: Timestamp,
    }

    #[test]
    fn a_frame_s_record_is_written_and_read_as_before_it_was_bytes() {
        let audit = crate::store::audit::chain(
            crate::store::audit::AuditHead::EMPTY,
            Timestamp(5),
            crate::store::audit::AuditEntry {
                action: "granted".into(),
                detail: "epoch 1 camera=1".into(),
                ..Default::default()
            },
        );
        for record in [
            vec![],
            vec![0, 1, 2, 255],
            (0..=255u8).cycle().take(70_000).collect(),
        ] {
            let new = Frame {
                number: 9,
                seq: Some(3),
                record: record.clone(),
                audit: vec![audit.clone()],
                hwm: Timestamp(7),
            };
            let old = FrameWithRecordAsSequence {
                number: 9,
                seq: Some(3),
                record,
                audit: vec![audit.clone()],
                hwm: Timestamp(7),
            };
            let bytes = postcard::to_allocvec(&old).unwrap();
            assert_eq!(postcard::to_allocvec(&new).unwrap(), bytes);
            assert_eq!(postcard::from_bytes::<Frame>(&bytes).unwrap(), new);
            // And through the journal's own encoding, header and all.
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &KEY);
            assert_eq!(encode_frame(&key, &new).unwrap(), encode(&key, &bytes));
        }
    }

    // The store tests' disk: unsynced writes read back until a power cut, and syncs
    // that can be made to fail.
    use crate::store::tests::PowerCutDisk;

    const KEY: [u8; 32] = [7; 32];

    /// The journal on `disk`, its second file empty.
    fn alone(disk: &PowerCutDisk) -> [Box<dyn JournalFile>; 2] {
        [Box::new(disk.clone()), Box::new(PowerCutDisk::default())]
    }

    fn both(a: &PowerCutDisk, b: &PowerCutDisk) -> [Box<dyn JournalFile>; 2] {
        [Box::new(a.clone()), Box::new(b.clone())]
    }

    fn frame(seq: u64) -> Frame {
        Frame {
            number: 0,
            seq: Some(seq),
            record: vec![seq as u8; 40],
            audit: Vec::new(),
            hwm: Timestamp(seq),
        }
    }

    #[test]
    fn frames_are_read_back_in_order_from_the_first_not_checkpointed() {
        let disk = PowerCutDisk::default();
        let (mut j, found) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        assert!(found.is_empty());
        assert_eq!(disk.size().unwrap(), GROW_BYTES, "zeros are written ahead");
        let written: Vec<Frame> = (1..=3).map(|s| j.append(frame(s), true).unwrap()).collect();
        assert_eq!(
            written.iter().map(|f| f.number).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let (_, found) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        assert_eq!(found, written);
        let (j2, found) = Journal::open(alone(&disk), 1, &KEY).unwrap();
        assert_eq!(
            found,
            written[1..],
            "a checkpoint that reached the disk without the journal starting over"
        );
        assert_eq!(j2.next_number(), 3);
        let (j3, found) = Journal::open(alone(&disk), 4, &KEY).unwrap();
        assert!(found.is_empty(), "a run that ends below the first wanted");
        assert_eq!(j3.next_number(), 4);
        drop(j);
    }

    #[test]
    fn frames_from_before_a_checkpoint_are_not_taken_for_new_ones() {
        let disk = PowerCutDisk::default();
        let (mut j, _) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        for s in 1..=5 {
            j.append(frame(s), true).unwrap();
        }
        j.in_redb(j.next_number());
        // One new frame over the old ones: the old frames after it carry lower numbers.
        let new = j.append(frame(6), true).unwrap();
        assert_eq!(new.number, 5);
        let (_, found) = Journal::open(alone(&disk), 5, &KEY).unwrap();
        assert_eq!(found, vec![new]);
        let (_, found) = Journal::open(alone(&disk), 6, &KEY).unwrap();
        assert!(found.is_empty(), "an old frame is never frame 6");
    }

    #[test]
    fn a_torn_or_altered_frame_ends_the_reading() {
        let disk = PowerCutDisk::default();
        let (mut j, _) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        let a = j.append(frame(1), true).unwrap();
        j.append(frame(2), true).unwrap();
        j.append(frame(3), true).unwrap();
        let second = (HEADER + postcard::to_allocvec(&a).unwrap().len()) as u64;
        // A byte of the second frame's payload flips (a torn write).
        let mut byte = [0u8; 1];
        disk.read_at(second + HEADER as u64 + 3, &mut byte).unwrap();
        disk.write_at(second + HEADER as u64 + 3, &[byte[0] ^ 0xff])
            .unwrap();
        let (_, found) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        assert_eq!(found, vec![a.clone()]);
        // A length past the end of the file.
        disk.write_at(second + 4, &u32::MAX.to_le_bytes()).unwrap();
        let (_, found) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        assert_eq!(found, vec![a]);
    }

    #[test]
    fn a_frame_made_without_the_directory_key_is_not_taken() {
        // Frames are written over older ones after each checkpoint; where the new ones
        // end, bytes a client chose (a camera id inside an old frame) may follow. A frame
        // planted there, well formed but without the key, is not read.
        let disk = PowerCutDisk::default();
        let (mut j, _) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        let a = j.append(frame(1), true).unwrap();
        let end = (HEADER + postcard::to_allocvec(&a).unwrap().len()) as u64;
        let forged = Frame {
            number: 1,
            ..frame(99)
        };
        let payload = postcard::to_allocvec(&forged).unwrap();
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[8; 32]);
        disk.write_at(end, &encode(&other, &payload)).unwrap();
        let (_, found) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        assert_eq!(found, vec![a.clone()]);
        // The same frame with the key is read: the test plants a well-formed frame.
        disk.write_at(end, &encode(&j.key, &payload)).unwrap();
        let (_, found) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        assert_eq!(found, vec![a, forged]);
    }

    #[test]
    fn the_file_grows_in_zeros_when_a_checkpoint_is_late() {
        let disk = PowerCutDisk::default();
        let (mut j, _) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        let big = Frame {
            record: vec![1; (GROW_BYTES as usize) / 3],
            ..frame(1)
        };
        for _ in 0..4 {
            j.append(big.clone(), true).unwrap();
        }
        assert!(disk.size().unwrap() >= 4 * GROW_BYTES / 3);
        assert_eq!(disk.size().unwrap() % (1 << 20), 0);
        let (_, found) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        assert_eq!(found.len(), 4);
    }

    #[test]
    fn a_frame_whose_sync_failed_is_not_read_back() {
        let disk = PowerCutDisk::default();
        let (mut j, _) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        let kept = j.append(frame(1), true).unwrap();
        disk.fail_syncs(true);
        assert!(j.append(frame(2), true).is_err());
        assert_eq!(
            j.next_number(),
            1,
            "the failed frame's number is used again"
        );
        let (_, found) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        assert_eq!(found, vec![kept]);
    }

    #[test]
    fn a_frame_too_large_to_be_read_back_is_not_written_and_fails_those_before_it() {
        let disk = PowerCutDisk::default();
        let (mut j, _) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        let kept = j.append(frame(1), true).unwrap();
        let unsettled = j.write(frame(2)).unwrap();
        let huge = Frame {
            record: vec![0; MAX_FRAME],
            ..frame(3)
        };
        let e = j.write(huge).unwrap_err();
        assert!(e.to_string().contains("over the"), "{e}");
        assert!(
            j.settle(unsettled, Ok(())).is_err(),
            "the store fails every batch begun, so the journal fails their frames"
        );
        assert_eq!(j.next_number(), 1);
        let (_, found) = Journal::open(alone(&disk), 0, &KEY).unwrap();
        assert_eq!(found, vec![kept]);
    }

    /// A journal on two empty files, three durable frames written to the first, then a
    /// switch to the second.
    fn three_frames_then_a_switch() -> (PowerCutDisk, PowerCutDisk, Journal, Vec<Frame>) {
        let (a, b) = (PowerCutDisk::default(), PowerCutDisk::default());
        let (mut j, _) = Journal::open(both(&a, &b), 0, &KEY).unwrap();
        let written: Vec<Frame> = (1..=3).map(|s| j.append(frame(s), true).unwrap()).collect();
        assert!(j.switch().unwrap());
        (a, b, j, written)
    }

    #[test]
    fn after_a_switch_both_files_are_read_in_number_order_and_a_gap_ends_the_reading() {
        let (a, b, mut j, mut written) = three_frames_then_a_switch();
        written.extend((4..=5).map(|s| j.append(frame(s), true).unwrap()));
        let (_, found) = Journal::open(both(&a, &b), 0, &KEY).unwrap();
        assert_eq!(found, written);
        let (_, found) = Journal::open(both(&b, &a), 2, &KEY).unwrap();
        assert_eq!(found, written[2..], "whichever file is named first");
        // The first file lost: the second's frames do not follow on from 0.
        let (_, found) = Journal::open(alone(&b), 0, &KEY).unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn a_file_is_not_written_over_until_every_frame_it_holds_is_in_redb() {
        let (a, b, mut j, mut written) = three_frames_then_a_switch();
        written.push(j.append(frame(4), true).unwrap());
        // A checkpoint of frames 0..3 failed, or has not ended: the first file still
        // holds them, so the journal stays in the second.
        assert!(!j.switch().unwrap());
        j.in_redb(2);
        assert!(!j.switch().unwrap(), "frame 2 is not in redb yet");
        written.push(j.append(frame(5), true).unwrap());
        let (_, found) = Journal::open(both(&a, &b), 0, &KEY).unwrap();
        assert_eq!(found, written);
        j.in_redb(3);
        assert!(j.switch().unwrap());
        // Written over from its start: the frames the first file held are in redb.
        written.push(j.append(frame(6), true).unwrap());
        let (_, found) = Journal::open(both(&a, &b), 3, &KEY).unwrap();
        assert_eq!(found, written[3..]);
    }

    #[test]
    fn a_switch_syncs_the_file_it_leaves() {
        // A frame that needed no sync (a session change) is followed by a durable one in
        // the other file: a power cut must not keep the second and lose the first, which
        // would end the reading before the durable frame.
        let (a, b) = (PowerCutDisk::default(), PowerCutDisk::default());
        let (mut j, _) = Journal::open(both(&a, &b), 0, &KEY).unwrap();
        let loose = j.append(frame(1), false).unwrap();
        assert!(j.switch().unwrap());
        let durable = j.append(frame(2), true).unwrap();
        let (_, found) = Journal::open(both(&a.cut(), &b.cut()), 0, &KEY).unwrap();
        assert_eq!(found, vec![loose, durable]);
    }

    #[test]
    fn the_file_in_use_is_written_from_its_start_once_redb_holds_all_it_has() {
        let (a, b) = (PowerCutDisk::default(), PowerCutDisk::default());
        let (mut j, _) = Journal::open(both(&a, &b), 0, &KEY).unwrap();
        j.append(frame(1), true).unwrap();
        j.append(frame(2), true).unwrap();
        assert!(j.pending_bytes() > 0);
        j.in_redb(1);
        assert!(j.pending_bytes() > 0, "frame 1 is not in redb");
        j.in_redb(2);
        assert_eq!(j.pending_bytes(), 0);
        assert!(!j.switch().unwrap(), "nothing to leave");
    }
}
