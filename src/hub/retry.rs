//! The retry policy both backends share: which failures are worth another
//! try, how long to wait before it (exponential backoff with jitter, a
//! server's `Retry-After` honoured), and how many tries in a row at most.

use std::future::Future;
use std::time::Duration;

use super::error::HubError;
use super::event::{EventSink, HubEvent};
use super::file::HubFile;

/// How one attempt ended, when it did not succeed.
#[derive(Debug)]
pub(crate) enum Failure<E> {
    /// Worth another try: a connection problem, a timeout, 408, 429 or 5xx.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
        /// The attempt moved bytes, so the failure budget starts again.
        made_progress: bool,
    },
    /// Retrying cannot help (401, 403, 404, a bad name, a full disk...).
    Fatal(E),
}

impl<E> Failure<E> {
    pub(crate) fn transient(reason: impl Into<String>) -> Self {
        Failure::Transient {
            reason: reason.into(),
            retry_after: None,
            made_progress: false,
        }
    }
}

/// Exponential backoff with jitter, bounded in count and in delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// The first delay; each retry in a row doubles it.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Retries in a row before giving up.
    pub max_retries: u32,
}

/// The longest `Retry-After` we honour, so that a confused server cannot park a
/// download for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl Default for Backoff {
    /// 0.5 s, doubling up to 30 s; 5 retries in a row at most.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_retries: 5,
        }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (1-based): a random point in the
    /// upper half of `base * 2^(retry-1)`, capped at `max`; a server's
    /// `Retry-After` wins when it asks for longer.
    pub(crate) fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_with(retry, retry_after, jitter())
    }

    /// As [`Backoff::delay`], with the jitter given: a factor in 0.5..=1.
    fn delay_with(&self, retry: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << (retry.saturating_sub(1)).min(20))
            .min(self.max);
        let jittered = exp.mul_f64(jitter.clamp(0.5, 1.0));
        match retry_after {
            Some(ra) => ra.min(MAX_RETRY_AFTER).max(jittered),
            None => jittered,
        }
    }
}

/// True for statuses that a later attempt may get past: 408, 429 and 5xx.
pub(crate) fn is_transient_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// A `Retry-After` value, delta-seconds or an HTTP date, as a delay from
/// `now` (the time since the Unix epoch).
pub(crate) fn parse_retry_after(value: &str, now: Duration) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(when.saturating_sub(now))
}

/// Runs `attempt` until it succeeds, fails for good, or has failed
/// transiently `max_retries + 1` times in a row without progress. Each retry
/// is reported as [`HubEvent::Retrying`] and waits as [`Backoff::delay`] says.
pub(crate) async fn with_retries<T, F, Fut>(
    backoff: &Backoff,
    file: &HubFile,
    events: Option<&EventSink>,
    mut attempt: F,
) -> Result<T, HubError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure<HubError>>>,
{
    let mut failures = 0u32;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient {
                reason,
                retry_after,
                made_progress,
            }) => {
                failures = if made_progress { 1 } else { failures + 1 };
                if failures > backoff.max_retries {
                    return Err(HubError::Transfer {
                        file: file.clone(),
                        attempts,
                        reason,
                    });
                }
                let delay = backoff.delay(failures, retry_after);
                tracing::info!(%file, %reason, ?delay, "retrying");
                if let Some(sink) = events {
                    sink(HubEvent::Retrying {
                        file: file.clone(),
                        attempt: attempts,
                        delay_ms: delay.as_millis() as u64,
                        reason,
                    });
                }
                sleep(delay).await;
            }
        }
    }
}

cfg_if::cfg_if! {
    if #[cfg(target_arch = "wasm32")] {
        fn jitter() -> f64 {
            0.5 + js_sys::Math::random() / 2.0
        }

        async fn sleep(delay: Duration) {
            let ms = delay.as_millis().min(u32::MAX as u128) as u32;
            gloo_timers::future::TimeoutFuture::new(ms).await;
        }

        /// The time since the Unix epoch (the browser has no `SystemTime`).
        pub(crate) fn now() -> Duration {
            Duration::from_secs_f64(js_sys::Date::now().max(0.0) / 1000.0)
        }
    } else {
        fn jitter() -> f64 {
            use rand::Rng;
            rand::rng().random_range(0.5..=1.0)
        }

        async fn sleep(delay: Duration) {
            tokio::time::sleep(delay).await;
        }

        /// The time since the Unix epoch.
        pub(crate) fn now() -> Duration {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_retries: 5,
        };
        for _ in 0..50 {
            let d1 = b.delay(1, None);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = b.delay(3, None);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(b.delay(30, None) <= Duration::from_secs(1));
        }
        assert_eq!(
            b.delay_with(3, None, 0.5),
            Duration::from_millis(200),
            "the lower end of the jitter"
        );
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(7200))),
            MAX_RETRY_AFTER,
            "a Retry-After is capped"
        );
        assert_eq!(Backoff::default().max_retries, 5);
    }

    #[test]
    fn parses_retry_after_forms() {
        let now = now();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        let later = std::time::UNIX_EPOCH + now + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later), now).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
        let earlier = std::time::UNIX_EPOCH + now - Duration::from_secs(120);
        assert_eq!(
            parse_retry_after(&httpdate::fmt_http_date(earlier), now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn transient_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient_status(s));
        }
        for s in [200, 400, 401, 403, 404, 416] {
            assert!(!is_transient_status(s));
        }
    }
}
