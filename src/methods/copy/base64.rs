//! Base64 (RFC 4648, the standard alphabet, padded): how a chunk's bytes travel in a
//! message's `data`, which is JSON text. A third larger than the bytes, and no character
//! JSON escapes. Small enough to keep here rather than take a crate for.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `bytes` as base64 text.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let sextets = [n >> 18, n >> 12, n >> 6, n].map(|s| ALPHABET[(s & 63) as usize]);
        let kept = group.len() + 1;
        out.extend_from_slice(&sextets[..kept]);
        out.extend(std::iter::repeat_n(b'=', 4 - kept));
    }
    String::from_utf8(out).expect("the base64 alphabet is ASCII")
}

/// The bytes base64 `text` stands for; `None` if it is not canonical base64 (a length not a
/// multiple of four, a character outside the alphabet, padding anywhere but the end, or
/// bits set past the last byte), so a chunk is taken only exactly as it was sent.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let groups = text.len() / 4;
    for (i, group) in text.chunks(4).enumerate() {
        let pad = group.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != groups) {
            return None;
        }
        let mut n = 0u32;
        for &c in &group[..4 - pad] {
            n = n << 6 | u32::from(value(c)?);
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let kept = 3 - pad;
        // Bits past the last byte must be zero: one text per bytes.
        if bytes[kept..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&bytes[..kept]);
    }
    Some(out)
}

fn value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_4648_test_vectors() {
        for (bytes, text) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(bytes.as_bytes()), text);
            assert_eq!(decode(text).unwrap(), bytes.as_bytes());
        }
    }

    #[test]
    fn every_byte_value_and_length_round_trips() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for len in 0..bytes.len() {
            let text = encode(&bytes[..len]);
            assert_eq!(text.len(), len.div_ceil(3) * 4);
            assert_eq!(decode(&text).unwrap(), &bytes[..len], "length {len}");
        }
    }

    #[test]
    fn only_canonical_base64_decodes() {
        for bad in [
            "Zg=",       // not a multiple of four
            "Zg==Zg==",  // padding before the end
            "Z===",      // too much padding
            "Zm9v!A==",  // outside the alphabet
            "Zh==",      // bits set past the last byte
            "Zm9\nv",    // a line break
            "Zm9vYmFy=", // stray padding
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
