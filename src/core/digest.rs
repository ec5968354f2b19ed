//! The digest of a server's holdings, computed the same way by the client and the
//! daemon: SHA-256 over the (camera, epoch) pairs sorted by camera id, each encoded as
//! the camera id's UTF-8 bytes, one 0x00 byte, and the epoch as 8 bytes little-endian.

use ring::digest::{Context, SHA256};

pub fn holdings<'a>(pairs: impl IntoIterator<Item = (&'a str, u64)>) -> [u8; 32] {
    let mut sorted: Vec<(&str, u64)> = pairs.into_iter().collect();
    sorted.sort_unstable();
    let mut ctx = Context::new(&SHA256);
    for (camera, epoch) in sorted {
        ctx.update(camera.as_bytes());
        ctx.update(&[0]);
        ctx.update(&epoch.to_le_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn order_does_not_matter_epochs_do() {
        let a = super::holdings([("cam-1", 1), ("cam-2", 4)]);
        let b = super::holdings([("cam-2", 4), ("cam-1", 1)]);
        let c = super::holdings([("cam-2", 5), ("cam-1", 1)]);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
