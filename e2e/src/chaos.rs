//! What chaos tests share: repeatable randomness and knobs from the
//! environment (`SWELL_CHAOS_KILLS`, `SWELL_CHAOS_SEED`, ...).

/// xorshift64: tiny, seedable, and the same sequence on every machine, so a
/// failing chaos run can be replayed with its printed seed.
pub struct Xorshift(pub u64);

impl Xorshift {
    /// The next value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A number from the environment variable `name`, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
