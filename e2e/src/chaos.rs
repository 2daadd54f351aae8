//! What chaos tests share: repeatable randomness and knobs from the
//! environment (`SWELL_CHAOS_KILLS`, `SWELL_CHAOS_SEED`, ...).

/// xorshift64: tiny, seedable, and the same sequence on every machine, so a
/// failing chaos run can be replayed with its printed seed.
pub struct Xorshift(pub u64);

impl Xorshift {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `len` bytes of the sequence seeded by `seed`: test data that is the
    /// same on every machine and incompressible enough to exercise a device.
    pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = Xorshift(seed | 1);
        let mut data = Vec::with_capacity(len + 8);
        while data.len() < len {
            data.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        data.truncate(len);
        data
    }
}

/// A number from the environment variable `name`, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
