//! `[[rate_limits]]`: how often one caller may call the routes under a
//! prefix, with governor's GCRA (a token bucket without a timer per key).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimit;

/// Callers remembered per limit before the idle ones are forgotten.
const FORGET_ABOVE: usize = 10_000;

pub struct RateLimits {
    rules: Vec<Rule>,
    clock: DefaultClock,
}

struct Rule {
    prefix: String,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl RateLimits {
    pub fn new(config: &[RateLimit]) -> RateLimits {
        let rules = config
            .iter()
            .map(|limit| {
                // Validated above zero (config::RateLimit::check).
                let rate = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
                let burst = limit.burst.and_then(NonZeroU32::new).unwrap_or(rate);
                Rule {
                    prefix: limit.prefix.clone(),
                    limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
                }
            })
            .collect();
        RateLimits {
            rules,
            clock: DefaultClock::default(),
        }
    }

    /// Counts a request of `caller` for `path` against every limit whose
    /// prefix covers it; `Err` with how long to wait if one is exhausted.
    pub fn check(&self, path: &str, caller: &str) -> Result<(), Duration> {
        for rule in &self.rules {
            if !crate::config::covers(&rule.prefix, path) {
                continue;
            }
            if rule.limiter.len() > FORGET_ABOVE {
                rule.limiter.retain_recent();
            }
            let key = caller.to_string();
            if let Err(not_until) = rule.limiter.check_key(&key) {
                return Err(not_until.wait_time_from(self.clock.now()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_burst_then_waits_and_others_are_apart() {
        let limits = RateLimits::new(&[RateLimit {
            prefix: "/orders".into(),
            per_second: 1,
            burst: Some(2),
        }]);
        assert!(limits.check("/orders", "sub:kim").is_ok());
        assert!(limits.check("/orders/7/cancel", "sub:kim").is_ok());
        let wait = limits.check("/orders", "sub:kim").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(
            limits.check("/orders", "sub:lee").is_ok(),
            "another caller has its own budget"
        );
        assert!(limits.check("/cars", "sub:kim").is_ok(), "other routes are not limited");
        assert!(
            limits.check("/ordersx", "sub:kim").is_ok(),
            "a prefix covers whole segments"
        );
    }
}
