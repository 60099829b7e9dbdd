//! Pacing of the batches a relay or a dispatcher starts when woken.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Spaces the batches that wake-ups start at least `linger` apart, so that
/// under load a batch carries the events of a whole `linger` instead of
/// one commit's: fewer, larger transactions. The first wake-up after a
/// quiet `linger` goes at once.
pub(super) struct Pace {
    linger: Duration,
    last: Option<Instant>,
}

impl Pace {
    pub(super) fn new(linger: Duration) -> Pace {
        Pace { linger, last: None }
    }

    /// Waits until the batch of a wake-up may start, or the host stops.
    pub(super) async fn wait_unless(&mut self, stop: &CancellationToken) {
        let now = Instant::now();
        let start = self.start(now);
        if start > now {
            tokio::select! {
                _ = tokio::time::sleep_until(start.into()) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// When the batch of a wake-up at `now` starts.
    fn start(&mut self, now: Instant) -> Instant {
        let start = self.last.map_or(now, |last| now.max(last + self.linger));
        self.last = Some(start);
        start
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Pace;

    #[test]
    fn batches_of_wake_ups_are_spaced_by_the_linger_and_an_idle_one_goes_at_once() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut pace = Pace::new(ms(2));
        assert_eq!(pace.start(t0), t0, "the first wake-up");
        assert_eq!(pace.start(t0 + ms(1)), t0 + ms(2), "one a millisecond later waits");
        assert_eq!(pace.start(t0 + ms(2)), t0 + ms(4), "...and so does the next");
        assert_eq!(pace.start(t0 + ms(10)), t0 + ms(10), "after a quiet linger, at once");

        let mut never = Pace::new(Duration::ZERO);
        assert_eq!(never.start(t0), t0);
        assert_eq!(never.start(t0), t0);
    }
}
