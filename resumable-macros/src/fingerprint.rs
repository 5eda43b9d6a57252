//! A stable 64-bit hash (FNV-1a) of a workflow's shape, computed at compile time.
//! Not `std`'s hasher: its output may change between Rust releases, and a
//! fingerprint must not.

pub fn fnv1a64(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_values() {
        assert_eq!(super::fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
