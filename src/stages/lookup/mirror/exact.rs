//! Which IPv4 addresses the mirror holds exactly, packed for the hot
//! path's one question: is this address a hit at all?
//!
//! The records' hash map answers it too, but a hit there reads two cache
//! lines (the control bytes and the bucket) of a table of tens of MB, and
//! on random addresses each is a miss. Here an address's top 16 bits pick
//! its bucket: the bucket's low 16 bits, sorted (2 bytes per address), or,
//! for a bucket of more than 4 096 addresses (a provider's range listed
//! address by address), a 65 536-bit map of the same size or less. With a
//! 256 KiB offset table this stays mostly in cache, and a lookup reads one
//! or two lines. It is derived from the map and rebuilt whole
//! ([`ExactSet::build`]) when the index is sealed before a swap; an index
//! changed since answers from the map.

/// Invariant: for each value `t` of the top 16 bits, either `dense[t]`
/// indexes the bitmap of its addresses' low 16 bits, or
/// `lows[offsets[t]..offsets[t + 1]]` are those low bits, sorted.
#[derive(Clone, Default)]
pub struct ExactSet {
    offsets: Vec<u32>,
    lows: Vec<u16>,
    dense: Vec<u32>,
    bitmaps: Vec<[u64; 1024]>,
}

/// Addresses in a bucket above which a bitmap (8 KiB) is no larger than
/// the sorted list.
const DENSE: u32 = 4096;
const SPARSE: u32 = u32::MAX;

impl ExactSet {
    pub fn build(addresses: impl Iterator<Item = u32>) -> ExactSet {
        let mut all: Vec<u32> = addresses.collect();
        all.sort_unstable();
        let mut offsets = vec![0u32; (1 << 16) + 1];
        for a in &all {
            offsets[(a >> 16) as usize + 1] += 1;
        }
        let mut dense = vec![SPARSE; 1 << 16];
        let mut bitmaps = Vec::new();
        let mut lows = Vec::with_capacity(all.len());
        let mut run = all.as_slice();
        for (t, d) in dense.iter_mut().enumerate() {
            let n = offsets[t + 1] as usize;
            let (bucket, rest) = run.split_at(n);
            run = rest;
            if n as u32 > DENSE {
                let mut map = [0u64; 1024];
                for a in bucket {
                    let low = *a as u16 as usize;
                    map[low / 64] |= 1 << (low % 64);
                }
                *d = bitmaps.len() as u32;
                bitmaps.push(map);
                offsets[t + 1] = 0;
            } else {
                lows.extend(bucket.iter().map(|a| *a as u16));
            }
        }
        for t in 1..offsets.len() {
            offsets[t] += offsets[t - 1];
        }
        ExactSet {
            offsets,
            lows,
            dense,
            bitmaps,
        }
    }

    pub fn contains(&self, address: u32) -> bool {
        let t = (address >> 16) as usize;
        let (Some(&from), Some(&to)) = (self.offsets.get(t), self.offsets.get(t + 1)) else {
            return false;
        };
        if let Some(map) = self.bitmaps.get(self.dense[t] as usize) {
            let low = address as u16 as usize;
            return map[low / 64] & (1 << (low % 64)) != 0;
        }
        self.lows[from as usize..to as usize]
            .binary_search(&(address as u16))
            .is_ok()
    }

    pub fn memory_bytes(&self) -> usize {
        self.offsets.capacity() * 4
            + self.lows.capacity() * 2
            + self.dense.capacity() * 4
            + self.bitmaps.capacity() * 8192
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn holds_exactly_what_it_was_built_from(
            // Few top bits, so that some buckets go dense.
            held in proptest::collection::hash_set((0u32..3, any::<u16>()).prop_map(|(t, l)| t << 16 | u32::from(l)), 0..12_000),
            probes in proptest::collection::vec(0u32..0x4_0000, 0..300),
        ) {
            let set = ExactSet::build(held.iter().copied());
            for a in held.iter().chain(&probes) {
                prop_assert_eq!(set.contains(*a), held.contains(a));
            }
        }
    }

    #[test]
    fn a_dense_bucket_is_a_bitmap_and_holds_the_same() {
        // 185.100.0.0/16 listed nearly address by address, beside sparse ones.
        let dense: Vec<u32> = (0..60_000u32).map(|i| 0xB964_0000 + i).collect();
        let sparse = [0x0102_0304u32, 0xB965_0001, 0xFFFF_FFFF];
        let set = ExactSet::build(dense.iter().chain(&sparse).copied());
        assert_eq!(set.bitmaps.len(), 1);
        for a in dense.iter().chain(&sparse) {
            assert!(set.contains(*a), "{a:#x}");
        }
        for a in [0xB964_EA60u32, 0xB965_0002, 0x0102_0305, 0] {
            assert!(!set.contains(a), "{a:#x}");
        }
    }

    #[test]
    fn empty_holds_nothing() {
        assert!(!ExactSet::default().contains(7));
        assert!(!ExactSet::build(std::iter::empty()).contains(0));
    }
}
