//! Which partition an entity belongs to.

/// FNV-1a 64-bit: the offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit: the prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The partition of `entity_id` among `partitions`: the FNV-1a 64-bit hash
/// of the id's UTF-8 bytes, modulo `partitions`.
///
/// The same on every replica, every version and in any language, so it is
/// written out here to be copied: start from `h = 0xcbf29ce484222325`; for
/// each byte `b` of the id, `h = (h XOR b) * 0x100000001b3` (wrapping, as an
/// unsigned 64-bit integer); the partition is `h mod partitions`. In
/// Python: `h = 0xcbf29ce484222325; for b in id.encode(): h = ((h ^ b) *
/// 0x100000001b3) % 2**64`. Changing it (or `PARTITIONS`) moves entities
/// to other partitions: never while any replica runs.
///
/// `partitions` is at least 1 ([`Settings`](super::Settings) makes sure);
/// 0 answers partition 0 rather than dividing by zero.
pub fn partition_of(entity_id: &str, partitions: u16) -> u16 {
    let hash = fnv1a64(entity_id.as_bytes());
    let partition = hash.checked_rem(u64::from(partitions)).unwrap_or(0);
    u16::try_from(partition).expect("a remainder modulo a u16 fits in a u16")
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published FNV-1a 64-bit test vectors.
    #[test]
    fn the_hash_is_fnv1a_64() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Fixed vectors, computed independently with the Python line in the
    /// doc comment: a change here moves live entities between partitions.
    #[test]
    fn partitions_of_fixed_ids_never_change() {
        for (id, partitions, expected) in [
            ("", 16, 5),
            ("a", 16, 12),
            ("foobar", 16, 8),
            ("order-1", 16, 13),
            ("3f2504e0-4f89-11d3-9a0c-0305e82c3301", 16, 0),
            ("3f2504e0-4f89-11d3-9a0c-0305e82c3301", 1024, 928),
            ("ünïcode", 7, 6),
            ("anything", 1, 0),
        ] {
            assert_eq!(
                partition_of(id, partitions),
                expected,
                "{id:?} mod {partitions}"
            );
        }
    }

    #[test]
    fn zero_partitions_does_not_panic() {
        assert_eq!(partition_of("x", 0), 0);
    }

    #[test]
    fn ids_spread_over_every_partition() {
        let mut counts = [0u32; 16];
        for n in 0..1600 {
            counts[usize::from(partition_of(&format!("order-{n}"), 16))] += 1;
        }
        assert!(
            counts.iter().all(|&c| (60..=140).contains(&c)),
            "{counts:?}"
        );
    }
}
