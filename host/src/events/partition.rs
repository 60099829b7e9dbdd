//! The partition of an event key: Kafka's default partitioner (murmur2 of
//! the key's bytes, made positive, modulo the partition count), so that the
//! embedded log and a Kafka topic split keys the same way, and the split
//! never changes with the Rust release (as `DefaultHasher`'s may).

/// The partition of `key` among `partitions` (at least one).
pub fn partition(key: &str, partitions: u32) -> u32 {
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions.max(1)
}

/// Kafka's `Utils.murmur2`: MurmurHash2, 32 bits, seed 0x9747b28c.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::{murmur2, partition};

    #[test]
    fn murmur2_matches_kafka() {
        // Kafka's own test vectors (UtilsTest.testMurmur2), as Java ints.
        let cases: &[(&str, i32)] = &[
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            ("abc", 479470107),
        ];
        for &(key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()) as i32, expected, "{key}");
        }
    }

    #[test]
    fn a_key_always_lands_in_the_same_partition() {
        for key in ["1", "42", "car-7", ""] {
            let first = partition(key, 4);
            assert!(first < 4);
            assert_eq!(partition(key, 4), first);
        }
        assert_eq!(partition("anything", 1), 0);
        assert_eq!(partition("anything", 0), 0, "no partitions is one");
    }
}
