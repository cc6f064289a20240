//! The simulator's dice: a seeded ChaCha8 stream and the few distributions it needs.
//!
//! Every draw is built from integer output and IEEE additions and multiplications only (no
//! `ln`, `cos` or `sqrt`, whose last bit may differ between C libraries), so one seed gives
//! the same workload byte for byte on every platform.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng as _, SeedableRng as _};

/// A seeded random source.
#[derive(Debug, Clone)]
pub struct Dice {
    rng: ChaCha8Rng,
}

impl Dice {
    /// A source seeded from `seed`.
    pub fn new(seed: u64) -> Dice {
        Dice {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A uniform number in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform number in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// A uniform integer in `[0, n)` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.rng.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform integer in `[lo, hi]`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// An approximately normal number (Irwin-Hall: the sum of four uniforms, rescaled);
    /// bounded to `mean ± 3.46 sd`, which suits sensor noise.
    pub fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let s = self.unit() + self.unit() + self.unit() + self.unit();
        // The sum has mean 2 and variance 1/3; sqrt(3) rescales it to unit variance.
        mean + (s - 2.0) * 1.732_050_807_568_877_2 * sd
    }

    /// One of `items`, uniformly (`None` when empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }

    /// A new independent source derived from this one (for one device).
    pub fn fork(&mut self) -> Dice {
        Dice::new(self.rng.next_u64())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn same_seed_same_draws() {
        let mut a = Dice::new(7);
        let mut b = Dice::new(7);
        let xs: Vec<u64> = (0..100).map(|_| a.below(1000)).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.below(1000)).collect();
        assert_eq!(xs, ys);
        let mut c = Dice::new(8);
        let zs: Vec<u64> = (0..100).map(|_| c.below(1000)).collect();
        assert_ne!(xs, zs);
    }

    #[test]
    fn draws_stay_in_range() {
        let mut d = Dice::new(1);
        for _ in 0..10_000 {
            let u = d.unit();
            assert!((0.0..1.0).contains(&u));
            let r = d.range(50.0, 90.0);
            assert!((50.0..90.0).contains(&r));
            assert!(d.between(3, 5) >= 3 && d.between(3, 5) <= 5);
            let n = d.normal(10.0, 1.0);
            assert!((6.5..13.5).contains(&n));
        }
    }

    #[test]
    fn normal_has_the_asked_spread() {
        let mut d = Dice::new(3);
        let xs: Vec<f64> = (0..20_000).map(|_| d.normal(5.0, 2.0)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64;
        assert!((mean - 5.0).abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.05, "sd {}", var.sqrt());
    }
}
