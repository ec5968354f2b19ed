//! Host binding: the machine identifiers a daemon reads about its host, the salted hashes
//! an activation request carries and a host-bound key names, and the rule deciding
//! whether a key still belongs to this host (docs/KEYS.md, "Host binding").
//!
//! Two classes of identifiers (seed 004's "opaque machine identifiers"):
//! - hardware: the hypervisor or board UUID (`product_uuid`), and the permanent MAC
//!   addresses of the physical network cards, hashed together as one identifier;
//! - software: `/etc/machine-id` and the root filesystem's UUID.
//!
//! The rule: the key must name this daemon's identity; of the identifiers the key names,
//! at most one may differ now, and if it names any hardware identifier, one of those must
//! still match. A cloned VM keeps machine-id and disk but gets a new UUID and new MACs:
//! two differ, no hardware matches, it fails. A host with one replaced network card
//! differs only in its MAC set: it passes.
//!
//! Everything is read below a root directory (`/` in production), so tests can lay out a
//! fake `/sys`, `/etc` and `/proc` and simulate a clone or a card swap.

use crate::identity::PublicKey;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Where the unit's privileged start step (`netkeyd --write-host-ids`) leaves the values
/// the service user may not read itself (the DMI UUID is readable by root only, and the
/// sandbox hides block devices), relative to the root directory.
pub const HANDOVER_FILE: &str = "run/netkey/host-ids";

/// The machine identifiers of one host, in clear. Never leaves the host: requests and
/// keys carry only salted hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostValues {
    /// The hypervisor's or the board's UUID (SMBIOS system UUID), lower case.
    pub board_uuid: Option<String>,
    /// Permanent MAC addresses of the physical network cards, sorted.
    pub macs: Vec<String>,
    pub machine_id: Option<String>,
    pub root_fs_uuid: Option<String>,
}

/// The values the privileged start step hands over (`HANDOVER_FILE`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub board_uuid: Option<String>,
    pub root_fs_uuid: Option<String>,
}

/// Where a daemon reads its host's identifiers from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HostSource {
    /// The real host: `/`.
    #[default]
    System,
    /// Files below this directory instead of `/` (tests).
    Root(PathBuf),
    /// These values (tests).
    Values(HostValues),
}

impl HostSource {
    pub fn read(&self) -> HostValues {
        match self {
            HostSource::System => HostValues::collect(Path::new("/")),
            HostSource::Root(root) => HostValues::collect(root),
            HostSource::Values(v) => v.clone(),
        }
    }
}

/// One identifier: which it is decides its class and how a change is described.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentKind {
    BoardUuid,
    Macs,
    MachineId,
    RootFs,
}

impl IdentKind {
    pub const ALL: [IdentKind; 4] = [
        IdentKind::BoardUuid,
        IdentKind::Macs,
        IdentKind::MachineId,
        IdentKind::RootFs,
    ];

    /// The label in front of each hash (`board_uuid:9f2c...`).
    pub fn label(self) -> &'static str {
        match self {
            IdentKind::BoardUuid => "board_uuid",
            IdentKind::Macs => "macs",
            IdentKind::MachineId => "machine_id",
            IdentKind::RootFs => "root_fs",
        }
    }

    pub fn from_label(label: &str) -> Option<IdentKind> {
        IdentKind::ALL.into_iter().find(|k| k.label() == label)
    }

    pub fn is_hardware(self) -> bool {
        matches!(self, IdentKind::BoardUuid | IdentKind::Macs)
    }

    /// How a person would name it.
    pub fn describe(self) -> &'static str {
        match self {
            IdentKind::BoardUuid => "the hypervisor or board UUID",
            IdentKind::Macs => "the network cards' permanent MAC addresses",
            IdentKind::MachineId => "the machine-id (/etc/machine-id)",
            IdentKind::RootFs => "the root filesystem's UUID",
        }
    }
}

/// What a host-bound key names: the hosting daemon's identity (public key, base64), the
/// salt of the hashes, and one `label:hash` per identifier, by class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostBinding {
    pub daemon_identity: String,
    /// Hex; chosen by the daemon for each activation request.
    #[serde(default)]
    pub salt: String,
    #[serde(default)]
    pub hardware: Vec<String>,
    #[serde(default)]
    pub software: Vec<String>,
}

impl HostValues {
    /// Reads the identifiers below `root`. Missing or unreadable sources give no value;
    /// values the service user cannot read come from the handover file.
    pub fn collect(root: &Path) -> HostValues {
        let handover: Handover = read_text(&root.join(HANDOVER_FILE))
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let board_uuid = read_text(&root.join("sys/class/dmi/id/product_uuid"))
            .and_then(|t| clean_uuid(&t))
            .or_else(|| read_text(&root.join("sys/hypervisor/uuid")).and_then(|t| clean_uuid(&t)))
            .or_else(|| handover.board_uuid.as_deref().and_then(clean_uuid));
        let machine_id = read_text(&root.join("etc/machine-id"))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty() && t != "uninitialized" && t.chars().any(|c| c != '0'));
        let root_fs_uuid =
            root_fs_uuid(root).or_else(|| handover.root_fs_uuid.as_deref().and_then(clean_uuid));
        HostValues {
            board_uuid,
            macs: permanent_macs(root),
            machine_id,
            root_fs_uuid,
        }
    }

    /// The privileged values alone, as the start step writes them.
    pub fn handover(&self) -> Handover {
        Handover {
            board_uuid: self.board_uuid.clone(),
            root_fs_uuid: self.root_fs_uuid.clone(),
        }
    }

    fn value(&self, kind: IdentKind) -> Option<String> {
        match kind {
            IdentKind::BoardUuid => self.board_uuid.clone(),
            IdentKind::Macs => (!self.macs.is_empty()).then(|| self.macs.join(",")),
            IdentKind::MachineId => self.machine_id.clone(),
            IdentKind::RootFs => self.root_fs_uuid.clone(),
        }
    }

    /// The identifiers present, as `label:hash` under `salt`.
    pub fn hashed(&self, salt: &str) -> Vec<(IdentKind, String)> {
        IdentKind::ALL
            .into_iter()
            .filter_map(|k| self.value(k).map(|v| (k, hashed(salt, k, &v))))
            .collect()
    }

    /// A binding of `identity` to these values, under `salt`.
    pub fn binding(&self, identity: &PublicKey, salt: &str) -> HostBinding {
        let all = self.hashed(salt);
        let pick = |hw: bool| -> Vec<String> {
            all.iter()
                .filter(|(k, _)| k.is_hardware() == hw)
                .map(|(_, h)| h.clone())
                .collect()
        };
        HostBinding {
            daemon_identity: identity.to_base64(),
            salt: salt.to_string(),
            hardware: pick(true),
            software: pick(false),
        }
    }
}

fn hashed(salt: &str, kind: IdentKind, value: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"netkey host identifier v1\0");
    ctx.update(salt.as_bytes());
    ctx.update(b"\0");
    ctx.update(kind.label().as_bytes());
    ctx.update(b"\0");
    ctx.update(value.as_bytes());
    format!("{}:{}", kind.label(), crate::hex(ctx.finish().as_ref()))
}

/// Why a key does not belong to this host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("the key is not bound to a host; the vendor activates it for this daemon from an activation request (`netkeyctl key request --out FILE`)")]
    Unbound,
    #[error("the key names daemon identity {named}, but this daemon's identity is {ours}: it was activated for another daemon (or this one's identity was replaced). Request a repair: run `netkeyctl key request --out FILE` here and send FILE to the vendor")]
    OtherDaemon { named: String, ours: String },
    #[error("the key's host binding is unreadable: {0}")]
    Malformed(String),
    #[error("this host is not the one the key was activated for: {} changed ({}). Request a repair: run `netkeyctl key request --out FILE` here and send FILE with the key id to the vendor", describe_all(.changed), hint(.changed))]
    HostChanged { changed: Vec<IdentKind> },
}

fn describe_all(kinds: &[IdentKind]) -> String {
    let names: Vec<&str> = kinds.iter().map(|k| k.describe()).collect();
    match names.as_slice() {
        [] => "nothing".into(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn hint(changed: &[IdentKind]) -> &'static str {
    let hw = changed.iter().all(|k| k.is_hardware());
    if hw && changed.len() >= 2 {
        "a cloned or moved virtual machine, or new hardware"
    } else if changed.iter().any(|k| !k.is_hardware()) && changed.iter().any(|k| k.is_hardware()) {
        "a copy of this host, or a reinstalled one"
    } else {
        "more than one identifier differs"
    }
}

/// A binding that holds, and what (at most one identifier) differs and was tolerated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingOk {
    pub tolerated: Option<IdentKind>,
}

/// Applies the matching rule (module documentation) to a key's binding.
pub fn check(
    binding: Option<&HostBinding>,
    identity: &PublicKey,
    values: &HostValues,
) -> Result<BindingOk, BindingError> {
    let b = binding.ok_or(BindingError::Unbound)?;
    let named = PublicKey::from_base64(&b.daemon_identity)
        .map_err(|e| BindingError::Malformed(e.to_string()))?;
    if named != *identity {
        return Err(BindingError::OtherDaemon {
            named: named.fingerprint(),
            ours: identity.fingerprint(),
        });
    }
    let ours: Vec<String> = values.hashed(&b.salt).into_iter().map(|(_, h)| h).collect();
    let mut changed = Vec::new();
    let mut hardware_named = false;
    let mut hardware_matched = false;
    for h in b.hardware.iter().chain(&b.software) {
        let label = h.split(':').next().unwrap_or("");
        let kind = IdentKind::from_label(label)
            .ok_or_else(|| BindingError::Malformed(format!("unknown identifier {label:?}")))?;
        let matched = ours.contains(h);
        if kind.is_hardware() {
            hardware_named = true;
            hardware_matched |= matched;
        }
        if !matched {
            changed.push(kind);
        }
    }
    changed.sort();
    changed.dedup();
    if changed.len() > 1 || (hardware_named && !hardware_matched) {
        return Err(BindingError::HostChanged { changed });
    }
    Ok(BindingOk {
        tolerated: changed.first().copied(),
    })
}

fn read_text(path: &Path) -> Option<String> {
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 * 1024)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// A UUID as lower-case text, or None for the placeholders firmware leaves behind.
fn clean_uuid(text: &str) -> Option<String> {
    let t = text.trim().to_ascii_lowercase();
    let digits: String = t.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    if digits.len() < 16 || digits.chars().all(|c| c == '0') || digits.chars().all(|c| c == 'f') {
        return None;
    }
    Some(t)
}

/// Permanent MACs of physical cards: a card is physical when `/sys/class/net/IF/device`
/// exists; its address is permanent when `addr_assign_type` is 0. A card whose address
/// was changed by software is left out (its permanent address is not in sysfs).
fn permanent_macs(root: &Path) -> Vec<String> {
    let dir = root.join("sys/class/net");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut macs: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let p = e.path();
            if std::fs::symlink_metadata(p.join("device")).is_err() {
                return None;
            }
            let assign = read_text(&p.join("addr_assign_type"))?;
            if assign.trim() != "0" {
                return None;
            }
            let mac = read_text(&p.join("address"))?.trim().to_ascii_lowercase();
            (mac.len() == 17 && mac != "00:00:00:00:00:00").then_some(mac)
        })
        .collect();
    macs.sort();
    macs.dedup();
    macs
}

/// The root filesystem's UUID: udev's database, then `/dev/disk/by-uuid`, then the
/// filesystem's superblock (ext2/3/4, XFS, btrfs) where the device is readable.
fn root_fs_uuid(root: &Path) -> Option<String> {
    let mountinfo = read_text(&root.join("proc/self/mountinfo"))?;
    let devno = mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(4) == Some(&"/")).then(|| f.get(2).map(|s| s.to_string()))?
    })?;
    if let Some(t) = read_text(&root.join(format!("run/udev/data/b{devno}"))) {
        if let Some(u) = t.lines().find_map(|l| l.strip_prefix("E:ID_FS_UUID=")) {
            return clean_uuid(u);
        }
    }
    let devname = read_text(&root.join(format!("sys/dev/block/{devno}/uevent")))?
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))?;
    if let Ok(links) = std::fs::read_dir(root.join("dev/disk/by-uuid")) {
        for l in links.filter_map(Result::ok) {
            let target = std::fs::read_link(l.path()).ok();
            if target.is_some_and(|t| t.file_name().is_some_and(|n| n == devname.as_str())) {
                return clean_uuid(&l.file_name().to_string_lossy());
            }
        }
    }
    superblock_uuid(&root.join("dev").join(&devname))
}

fn superblock_uuid(device: &Path) -> Option<String> {
    let mut f = std::fs::File::open(device).ok()?;
    let mut buf = vec![0u8; 0x10100];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    let b = &buf[..n];
    let uuid_at = |off: usize| -> Option<String> {
        let u = b.get(off..off + 16)?;
        let h = crate::hex(u);
        clean_uuid(&format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        ))
    };
    // ext2/3/4: superblock at 1024, magic 0xEF53 at +56, UUID at +104.
    if b.get(1024 + 56..1024 + 58) == Some(&[0x53, 0xef]) {
        return uuid_at(1024 + 104);
    }
    if b.get(0..4) == Some(b"XFSB") {
        return uuid_at(32);
    }
    if b.get(0x10040..0x10048) == Some(b"_BHRfS_M") {
        return uuid_at(0x10020);
    }
    None
}

impl fmt::Display for IdentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    pub(crate) fn values() -> HostValues {
        HostValues {
            board_uuid: Some("4c4c4544-0042-3510-8052-b4c04f4e3732".into()),
            macs: vec!["52:54:00:12:34:56".into(), "52:54:00:12:34:57".into()],
            machine_id: Some("3d1219c7c4c5404aaa1f6d2a48adfda4".into()),
            root_fs_uuid: Some("0b6c1b5e-5f0f-4a43-9d5e-0b1f3c1f7a11".into()),
        }
    }

    #[test]
    fn the_same_host_passes_and_a_clone_fails() {
        let id = Identity::generate().public();
        let b = values().binding(&id, "00ff");
        assert_eq!(b.hardware.len(), 2);
        assert_eq!(b.software.len(), 2);
        assert_eq!(check(Some(&b), &id, &values()).unwrap().tolerated, None);

        let mut clone = values();
        clone.board_uuid = Some("11111111-2222-3333-4444-555555555555".into());
        clone.macs = vec!["52:54:00:aa:bb:cc".into()];
        let err = check(Some(&b), &id, &clone).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("the hypervisor or board UUID and the network cards' permanent MAC addresses changed"), "{text}");
        assert!(text.contains("netkeyctl key request"), "{text}");
    }

    #[test]
    fn one_replaced_card_passes_and_is_reported() {
        let id = Identity::generate().public();
        let b = values().binding(&id, "00ff");
        let mut swapped = values();
        swapped.macs[1] = "52:54:00:99:99:99".into();
        assert_eq!(
            check(Some(&b), &id, &swapped).unwrap().tolerated,
            Some(IdentKind::Macs)
        );
    }

    #[test]
    fn another_identity_or_no_binding_fails() {
        let id = Identity::generate().public();
        let other = Identity::generate().public();
        let b = values().binding(&id, "00ff");
        let err = check(Some(&b), &other, &values()).unwrap_err();
        assert!(
            err.to_string().contains("activated for another daemon"),
            "{err}"
        );
        assert_eq!(check(None, &id, &values()), Err(BindingError::Unbound));
    }

    #[test]
    fn a_reinstalled_disk_on_the_same_hardware_fails() {
        let id = Identity::generate().public();
        let b = values().binding(&id, "00ff");
        let mut v = values();
        v.machine_id = Some("ffffffffffffffffffffffffffff0001".into());
        v.root_fs_uuid = Some("99999999-5f0f-4a43-9d5e-0b1f3c1f7a11".into());
        let err = check(Some(&b), &id, &v).unwrap_err();
        assert!(err.to_string().contains("machine-id"), "{err}");
    }

    #[test]
    fn values_are_read_from_a_root_directory() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let w = |p: &str, t: &str| {
            let path = r.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, t).unwrap();
        };
        w(
            "sys/class/dmi/id/product_uuid",
            "4C4C4544-0042-3510-8052-B4C04F4E3732\n",
        );
        w("sys/class/net/eth0/address", "52:54:00:12:34:56\n");
        w("sys/class/net/eth0/addr_assign_type", "0\n");
        w("sys/class/net/eth0/device/vendor", "0x1af4\n");
        // A virtual card (no device) and a card with a software-set address are left out.
        w("sys/class/net/br0/address", "52:54:00:00:00:01\n");
        w("sys/class/net/br0/addr_assign_type", "0\n");
        w("sys/class/net/eth1/address", "02:00:00:00:00:09\n");
        w("sys/class/net/eth1/addr_assign_type", "3\n");
        w("sys/class/net/eth1/device/vendor", "0x1af4\n");
        w("etc/machine-id", "3d1219c7c4c5404aaa1f6d2a48adfda4\n");
        w(
            "proc/self/mountinfo",
            "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n",
        );
        w(
            "run/udev/data/b254:0",
            "E:ID_FS_TYPE=ext4\nE:ID_FS_UUID=0b6c1b5e-5f0f-4a43-9d5e-0b1f3c1f7a11\n",
        );
        let v = HostValues::collect(r);
        assert_eq!(v, values_one_card());
    }

    fn values_one_card() -> HostValues {
        HostValues {
            macs: vec!["52:54:00:12:34:56".into()],
            ..values()
        }
    }

    #[test]
    fn privileged_values_come_from_the_handover_file_when_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HANDOVER_FILE);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let handed = Handover {
            board_uuid: values().board_uuid,
            root_fs_uuid: values().root_fs_uuid,
        };
        std::fs::write(&path, serde_json::to_vec(&handed).unwrap()).unwrap();
        let v = HostValues::collect(dir.path());
        assert_eq!(v.board_uuid, values().board_uuid);
        assert_eq!(v.root_fs_uuid, values().root_fs_uuid);
        assert_eq!(v.handover(), handed);
    }

    #[test]
    fn an_ext4_superblock_gives_the_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = vec![0u8; 4096];
        img[1024 + 56] = 0x53;
        img[1024 + 57] = 0xef;
        let uuid = [
            0x0b, 0x6c, 0x1b, 0x5e, 0x5f, 0x0f, 0x4a, 0x43, 0x9d, 0x5e, 0x0b, 0x1f, 0x3c, 0x1f,
            0x7a, 0x11,
        ];
        img[1024 + 104..1024 + 120].copy_from_slice(&uuid);
        let p = dir.path().join("vda");
        std::fs::write(&p, img).unwrap();
        assert_eq!(
            superblock_uuid(&p).as_deref(),
            Some("0b6c1b5e-5f0f-4a43-9d5e-0b1f3c1f7a11")
        );
    }
}
