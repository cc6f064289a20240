//! Road traffic as one camera or loop detector sees it: free flow most of the time, with
//! congestion episodes that the bundled and benchmark rules are written to catch.
//!
//! Free flow runs at the site's own speed (50-90 km/h) with noise and the odd slow reading
//! (a truck, a turning bus). A jam is several readings under 20 km/h, with stop-and-go
//! readings of 20-35 between them and now and then one reading over 40 (the queue clears
//! for a moment, which is what the congestion rule's guard is for); a short recovery follows.

use super::rng::Dice;

/// Probability per reading that a jam starts: with jams of 3-12 readings and a short
/// recovery, about 3 % of readings fall in an episode.
pub const JAM_CHANCE: f64 = 0.004;

/// One reading of the traffic state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Mean speed, km/h.
    pub speed: f64,
    /// Lane occupancy, percent.
    pub occupancy: f64,
    /// True while a jam (or its recovery) lasts.
    pub episode: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Free,
    Jam { left: u32, steady: bool },
    Recover { left: u32 },
}

/// The traffic at one site.
#[derive(Debug, Clone)]
pub struct Traffic {
    free_speed: f64,
    phase: Phase,
}

impl Traffic {
    /// A site with a free-flow speed drawn from 55-85 km/h.
    pub fn new(dice: &mut Dice) -> Traffic {
        Traffic {
            free_speed: dice.range(55.0, 85.0),
            phase: Phase::Free,
        }
    }

    /// Starts a jam of `readings` readings now.
    pub fn start_jam(&mut self, readings: u32) {
        self.phase = Phase::Jam {
            left: readings.max(1),
            steady: false,
        };
    }

    /// Starts a jam of `readings` readings that all stay under 20 km/h (scripted episodes
    /// that must be seen by the congestion rules).
    pub fn start_steady_jam(&mut self, readings: u32) {
        self.phase = Phase::Jam {
            left: readings.max(1),
            steady: true,
        };
    }

    /// True while a jam or its recovery lasts.
    pub fn in_episode(&self) -> bool {
        self.phase != Phase::Free
    }

    /// The next reading; a jam starts with probability `jam_chance`.
    pub fn step(&mut self, dice: &mut Dice, jam_chance: f64) -> Reading {
        if self.phase == Phase::Free && dice.chance(jam_chance) {
            self.start_jam(dice.between(3, 12) as u32);
        }
        match self.phase {
            Phase::Free => {
                let speed = if dice.chance(0.01) {
                    dice.range(22.0, 40.0)
                } else {
                    dice.normal(self.free_speed, 5.0).clamp(42.0, 120.0)
                };
                Reading {
                    speed,
                    occupancy: dice.range(2.0, 18.0),
                    episode: false,
                }
            }
            Phase::Jam { left, steady } => {
                self.phase = if left > 1 {
                    Phase::Jam {
                        left: left - 1,
                        steady,
                    }
                } else {
                    Phase::Recover {
                        left: dice.between(2, 4) as u32,
                    }
                };
                let roll = if steady { None } else { Some(dice.unit()) };
                let speed = match roll {
                    None => dice.range(4.0, 15.0),
                    Some(roll) if roll < 0.80 => dice.range(3.0, 19.5),
                    Some(roll) if roll < 0.95 => dice.range(20.0, 35.0),
                    Some(_) => dice.range(42.0, 55.0),
                };
                Reading {
                    speed,
                    occupancy: dice.range(35.0, 85.0),
                    episode: true,
                }
            }
            Phase::Recover { left } => {
                self.phase = if left > 1 {
                    Phase::Recover { left: left - 1 }
                } else {
                    Phase::Free
                };
                Reading {
                    speed: dice.range(25.0, 45.0),
                    occupancy: dice.range(18.0, 35.0),
                    episode: true,
                }
            }
        }
    }
}

/// `x` rounded to one decimal, as integer tenths (half away from zero).
pub fn tenths(x: f64) -> i64 {
    (x * 10.0).round() as i64
}

/// Writes integer tenths as a decimal with one fraction digit: `375` -> `37.5`.
pub fn push_tenths(out: &mut Vec<u8>, t: i64) {
    if t < 0 {
        out.push(b'-');
    }
    let a = t.unsigned_abs();
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(a / 10).as_bytes());
    out.push(b'.');
    out.push(b'0' + (a % 10) as u8);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn tenths_print_with_one_digit() {
        let mut v = Vec::new();
        for (x, s) in [
            (37.46, "37.5"),
            (40.0, "40.0"),
            (0.04, "0.0"),
            (-2.25, "-2.3"),
        ] {
            v.clear();
            push_tenths(&mut v, tenths(x));
            assert_eq!(String::from_utf8(v.clone()).unwrap(), s);
        }
    }

    #[test]
    fn a_few_percent_of_readings_are_in_episodes_and_jams_go_slow() {
        let mut dice = Dice::new(11);
        let mut t = Traffic::new(&mut dice);
        let n = 200_000;
        let mut episode = 0;
        let mut slow = 0;
        for _ in 0..n {
            let r = t.step(&mut dice, JAM_CHANCE);
            episode += u32::from(r.episode);
            slow += u32::from(r.speed < 20.0);
            assert!(r.speed > 0.0 && r.occupancy > 0.0);
        }
        let share = f64::from(episode) / f64::from(n);
        assert!((0.02..0.05).contains(&share), "episode share {share}");
        assert!(f64::from(slow) / f64::from(n) > 0.01);
    }

    #[test]
    fn free_flow_is_fast() {
        let mut dice = Dice::new(5);
        let mut t = Traffic::new(&mut dice);
        let fast = (0..1000)
            .map(|_| t.step(&mut dice, 0.0))
            .filter(|r| r.speed > 40.0)
            .count();
        assert!(fast > 970, "{fast}");
    }
}
