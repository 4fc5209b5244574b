//! Length-prefixed JSON frames on a libp2p stream: a 4-byte big-endian
//! length, then that many bytes of JSON. The length is checked against a
//! limit before anything is allocated.

use futures_util::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest frame accepted (a long prompt fits; a flood does not).
pub const MAX_FRAME: usize = 4 << 20;

/// Writes one frame and flushes it.
///
/// # Errors
/// On an I/O error or a value larger than [`MAX_FRAME`].
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    if bytes.len() > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("frame of {} bytes exceeds {MAX_FRAME}", bytes.len())));
    }
    let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&bytes).await?;
    w.flush().await
}

/// Reads one frame; `None` when the stream ended cleanly before it.
///
/// # Errors
/// On an I/O error, a frame over [`MAX_FRAME`], a stream cut inside a frame,
/// or JSON that is not a `T`.
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        got += n;
    }
    let body = decode_len(len)?;
    let mut bytes = vec![0u8; body];
    r.read_exact(&mut bytes).await?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn decode_len(header: [u8; 4]) -> std::io::Result<usize> {
    let n = u32::from_be_bytes(header) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame of {n} bytes exceeds {MAX_FRAME}")));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[tokio::test]
    async fn frames_round_trip_and_any_bytes_are_an_error_not_a_panic() {
        let mut buf = Vec::new();
        write(&mut buf, &serde_json::json!({"text": "héllo"})).await.unwrap();
        write(&mut buf, &42u32).await.unwrap();
        let mut r = futures_util::io::Cursor::new(buf.clone());
        assert_eq!(read::<_, serde_json::Value>(&mut r).await.unwrap().unwrap()["text"], "héllo");
        assert_eq!(read::<_, u32>(&mut r).await.unwrap(), Some(42));
        assert_eq!(read::<_, u32>(&mut r).await.unwrap(), None);
        // A header claiming 4 GiB is refused before allocating.
        let mut r = futures_util::io::Cursor::new(vec![0xff, 0xff, 0xff, 0xff, 1, 2]);
        assert!(read::<_, u32>(&mut r).await.is_err());
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for i in 0..5_000 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                (0..rng.random_range(0..64)).map(|_| rng.random()).collect()
            } else {
                let mut b = buf.clone();
                let at = rng.random_range(0..b.len());
                b[at] = rng.random();
                b.truncate(rng.random_range(0..=b.len()));
                b
            };
            let mut r = futures_util::io::Cursor::new(bytes);
            while let Ok(Some(_)) = read::<_, serde_json::Value>(&mut r).await {}
        }
    }
}
