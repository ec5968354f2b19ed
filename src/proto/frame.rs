//! Framing: a 4-byte big-endian length, then that many bytes of postcard. The length is
//! checked against `MAX_FRAME` before any buffer is reserved, so a peer cannot make the
//! daemon allocate by announcing a huge frame.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::LengthDelimitedCodec;

/// The largest frame either side accepts: 64 KiB holds a checkout of several hundred
/// cameras; a bigger batch is split by the client.
pub const MAX_FRAME: usize = 64 * 1024;

pub type Framed<T> = tokio_util::codec::Framed<T, LengthDelimitedCodec>;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not a valid message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("message does not fit in a frame ({len} bytes, limit {limit})")]
    TooLarge { len: usize, limit: usize },
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
}

pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// What each of a connection's two frame buffers starts with. Frames are mostly a few
/// hundred bytes and a buffer grows for a bigger one; the codec's default, 8 KiB each,
/// fills page by page as frames pass through it, so ten thousand connections would
/// hold about 160 MiB of it once they had been busy for a while.
const BUFFER_CAPACITY: usize = 1024;

/// Wraps any byte stream (TCP now, TLS later) in the frame codec.
pub fn framed<T: AsyncRead + AsyncWrite>(io: T) -> Framed<T> {
    let mut framed = tokio_util::codec::Framed::with_capacity(io, codec(), BUFFER_CAPACITY);
    *framed.write_buffer_mut() = bytes::BytesMut::with_capacity(BUFFER_CAPACITY);
    framed
}

pub fn encode<M: Serialize>(msg: &M) -> Result<Bytes, FrameError> {
    // Most frames fit: growing from nothing reallocated several times per answer.
    let v = postcard::to_extend(msg, Vec::with_capacity(256))?;
    if v.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: v.len(),
            limit: MAX_FRAME,
        });
    }
    Ok(Bytes::from(v))
}

/// Decodes one frame's payload; trailing bytes are an error, so each frame has exactly
/// one reading.
pub fn decode<M: DeserializeOwned>(payload: &[u8]) -> Result<M, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(payload)?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(
            postcard::Error::DeserializeUnexpectedEnd,
        ));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};

    #[tokio::test]
    async fn frames_larger_than_the_buffers_pass_whole_and_in_order() {
        let (a, b) = tokio::io::duplex(4096);
        let (mut tx, mut rx) = (framed(a), framed(b));
        let sizes = [
            1,
            300,
            BUFFER_CAPACITY,
            5_000,
            40,
            MAX_FRAME,
            7,
            2 * BUFFER_CAPACITY,
        ];
        let frames: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Bytes::from(vec![i as u8; *n]))
            .collect();
        let sent = frames.clone();
        let writer = tokio::spawn(async move {
            for f in sent {
                tx.send(f).await.expect("send");
            }
        });
        for f in &frames {
            let got = rx.next().await.expect("a frame").expect("read");
            assert_eq!(&got[..], &f[..]);
        }
        writer.await.expect("writer");
    }
}
