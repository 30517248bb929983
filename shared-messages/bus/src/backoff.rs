//! Capped exponential backoff, the one schedule for reconnecting,
//! re-consuming and retrying a handler in place.

use std::time::Duration;

/// Waits that double from `min` up to `max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.min(max);
        Self {
            min,
            max,
            current: min,
        }
    }

    /// The wait before the next attempt; each call doubles the one after,
    /// up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut b = Backoff::new(MS(100), MS(1000));
        let delays: Vec<_> = (0..7).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            [
                MS(100),
                MS(200),
                MS(400),
                MS(800),
                MS(1000),
                MS(1000),
                MS(1000)
            ]
        );
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(MS(50), MS(400));
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.next_delay(), MS(50));
    }

    #[test]
    fn a_min_above_the_cap_is_the_cap() {
        let mut b = Backoff::new(MS(500), MS(100));
        assert_eq!(b.next_delay(), MS(100));
        assert_eq!(b.next_delay(), MS(100));
    }
}
