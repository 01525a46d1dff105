//! Who fetches which range next: the missing bytes of one file cut into
//! ranges for the connections, and, at the file's end, the end of a slow
//! range in flight handed to an idle connection so that both finish together.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The missing bytes of one file: gaps not yet asked for, handed out as
/// ranges of at most `max_chunk`, and the ranges in flight. When nothing is
/// left to hand out, an idle connection takes over the end of the range
/// with the most left, if that pays ([`Work::splittable`]): so a file's last
/// connections finish together, without cutting its end into small ranges.
pub(super) struct Work {
    gaps: VecDeque<(u64, u64)>,
    max_chunk: u64,
    active: Vec<Arc<Active>>,
}

impl Work {
    pub(super) fn new(gaps: Vec<(u64, u64)>, max_chunk: u64) -> Self {
        Self {
            gaps: gaps.into(),
            max_chunk: max_chunk.max(1),
            active: Vec::new(),
        }
    }

    /// What a connection could still take.
    pub(super) fn left(&self, latency: &Latency) -> Left {
        let in_flight: u64 = self.active.iter().map(|a| a.remaining()).sum();
        let unassigned: u64 = self.gaps.iter().map(|(s, e)| e - s).sum();
        if unassigned > 0 || self.splittable(latency, None).is_some() {
            Left::Bytes(unassigned + in_flight)
        } else if in_flight > 0 {
            Left::InFlight
        } else {
            Left::Nothing
        }
    }

    /// The next range: the next piece of the first gap (a gap's last piece
    /// is never cut into a sliver), else the end of a range in flight other
    /// than `own`.
    pub(super) fn next(
        &mut self,
        latency: &Latency,
        own: Option<&Arc<Active>>,
    ) -> Option<Arc<Active>> {
        let range = match self.gaps.pop_front() {
            Some((start, end)) => {
                let want = jittered(self.max_chunk, start);
                let take = if end - start <= want + want / 2 {
                    end - start
                } else {
                    want
                };
                if start + take < end {
                    self.gaps.push_front((start + take, end));
                }
                Active::new(start, start + take)
            }
            None => {
                let (victim, share) = self.splittable(latency, own)?;
                let (from, end) = victim.split(share)?;
                Active::new(from, end)
            }
        };
        let range = Arc::new(range);
        self.active.push(range.clone());
        Some(range)
    }

    pub(super) fn finished(&mut self, range: &Arc<Active>) {
        self.active.retain(|a| !Arc::ptr_eq(a, range));
    }

    /// The range in flight with the most left, and the share of its end to
    /// take so that both connections finish together: the new one first
    /// waits a request's latency `l`, so at rate `r` it takes
    /// `(remaining - r·l) / 2`. `None` when that share is too small.
    fn splittable(
        &self,
        latency: &Latency,
        own: Option<&Arc<Active>>,
    ) -> Option<(&Arc<Active>, u64)> {
        let (victim, rate) = self
            .active
            .iter()
            .filter(|a| own.is_none_or(|own| !Arc::ptr_eq(a, own)))
            .filter_map(|a| Some((a, a.rate()?)))
            .max_by_key(|(a, _)| a.remaining())?;
        let waited = rate * latency.get().as_secs_f64();
        let share = ((victim.remaining() as f64 - waited) / 2.0).max(0.0) as u64;
        (share >= MIN_SPLIT).then_some((victim, share))
    }
}

/// Between half and all of `max_chunk`, varied by `start`. Connections that
/// share a link receive at the same rate: with ranges of one size they would
/// all finish at once, and all wait out the next request's latency together,
/// leaving the link idle. Sizes that differ spread those waits out.
fn jittered(max_chunk: u64, start: u64) -> u64 {
    // splitmix64: a fixed, well-spread function of the offset.
    let mut z = start.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let half = (max_chunk / 2).max(1);
    half + z % (max_chunk - half + 1)
}

/// What is left of a file for another connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Left {
    /// Bytes to take (all that is left of the file, in flight or not).
    Bytes(u64),
    /// Only ranges in flight, none worth splitting now.
    InFlight,
    Nothing,
}

/// How often an idle connection looks again for a range worth splitting.
pub(super) const RECHECK: Duration = Duration::from_millis(20);

/// Shares of a range smaller than this are not split off.
const MIN_SPLIT: u64 = 256 << 10;

/// A range in flight: the next byte to arrive and where it stops, which a
/// split moves; and how fast it arrives.
pub(super) struct Active {
    bounds: Mutex<(u64, u64)>,
    arriving: Mutex<Option<(Instant, u64)>>,
}

impl Active {
    fn new(start: u64, end: u64) -> Self {
        Self {
            bounds: Mutex::new((start, end)),
            arriving: Mutex::new(None),
        }
    }

    pub(super) fn bounds(&self) -> (u64, u64) {
        *self.bounds.lock().expect("not poisoned")
    }

    fn remaining(&self) -> u64 {
        let (next, end) = self.bounds();
        end - next
    }

    /// The response's first byte is on its way.
    pub(super) fn started(&self) {
        *self.arriving.lock().expect("not poisoned") = Some((Instant::now(), 0));
    }

    /// Bytes per second since the response began, once it has for a while.
    fn rate(&self) -> Option<f64> {
        let (since, bytes) = (*self.arriving.lock().expect("not poisoned"))?;
        let elapsed = since.elapsed().as_secs_f64();
        (elapsed > 0.01 && bytes > 0).then(|| bytes as f64 / elapsed)
    }

    /// `n` bytes arrived: how many of them are still this range's, and
    /// where it stops now.
    pub(super) fn receive(&self, n: u64) -> (u64, u64) {
        let mut bounds = self.bounds.lock().expect("not poisoned");
        let keep = n.min(bounds.1 - bounds.0);
        bounds.0 += keep;
        if let Some((_, bytes)) = self.arriving.lock().expect("not poisoned").as_mut() {
            *bytes += keep;
        }
        (keep, bounds.1)
    }

    /// Whether what is left would arrive within twice `wait` at the rate
    /// so far (or is the last 64 kB). Twice: the rate is an average since
    /// the range began, and a connection speeds up when others end.
    pub(super) fn ends_within(&self, wait: Duration) -> bool {
        let lead = self
            .rate()
            .map_or(0.0, |rate| rate * wait.as_secs_f64() * 2.0);
        self.remaining() <= (lead as u64).max(64 << 10)
    }

    /// Gives away the last `share` bytes of what is left: `[end - share, end)`.
    fn split(&self, share: u64) -> Option<(u64, u64)> {
        let mut bounds = self.bounds.lock().expect("not poisoned");
        let (next, end) = *bounds;
        // Bytes may have arrived since the share was worked out.
        (share > 0 && end - next > share).then(|| {
            bounds.1 = end - share;
            (end - share, end)
        })
    }
}

/// The time from asking for a range to its response, as last measured.
#[derive(Default)]
pub(super) struct Latency(AtomicU64);

impl Latency {
    pub(super) fn observe(&self, took: Duration) {
        self.0.store(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub(super) fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Every range `Work` hands out while none is in flight.
    fn cut(gaps: Vec<(u64, u64)>, max_chunk: u64) -> Vec<(u64, u64)> {
        let mut w = Work::new(gaps, max_chunk);
        let latency = Latency::default();
        std::iter::from_fn(|| {
            let r = w.next(&latency, None)?;
            w.finished(&r);
            Some(r.bounds())
        })
        .collect()
    }

    #[test]
    fn ranges_vary_in_size_cover_every_byte_once_and_leave_no_slivers() {
        // Small files are one range.
        assert_eq!(cut(vec![(0, 5_000)], 16 * MIB), vec![(0, 5_000)]);
        // A large file: ranges of half to all of the largest size (the last
        // may take what would have been a sliver), in order, every byte once.
        let size = 500 * MIB + 12345;
        let ranges = cut(vec![(0, size)], 16 * MIB);
        assert_eq!(ranges[0].0, 0);
        assert_eq!(ranges.last().unwrap().1, size);
        assert!(ranges.windows(2).all(|w| w[0].1 == w[1].0));
        let lens: Vec<u64> = ranges.iter().map(|(s, e)| e - s).collect();
        let (last, most) = lens.split_last().unwrap();
        assert!(
            most.iter().all(|l| (8 * MIB..=16 * MIB).contains(l)),
            "{lens:?}"
        );
        assert!((4 * MIB..=24 * MIB).contains(last), "{lens:?}");
        // Not all of one size, so that connections do not finish in step.
        let mut distinct = most.to_vec();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > most.len() / 2, "{lens:?}");
        // Only the gaps are asked for.
        assert_eq!(
            cut(vec![(0, MIB), (5 * MIB, 6 * MIB + 10)], 16 * MIB),
            vec![(0, MIB), (5 * MIB, 6 * MIB + 10)]
        );
    }

    #[test]
    fn the_next_range_is_asked_for_two_latencies_before_the_current_ends() {
        let range = Active::new(0, 8 * MIB);
        // Nothing is known of its speed: only the last 64 kB count as the end.
        assert!(!range.ends_within(Duration::from_secs(1)));
        range.started();
        range.receive(MIB);
        std::thread::sleep(Duration::from_millis(20));
        let rate = range.rate().unwrap();
        // What is left (7 MiB) takes 7 MiB / rate: a wait of over half that
        // starts the next request now, a shorter one not.
        let rest = 7.0 * MIB as f64 / rate;
        assert!(range.ends_within(Duration::from_secs_f64(rest * 0.6)));
        assert!(!range.ends_within(Duration::from_secs_f64(rest * 0.4)));
    }

    #[test]
    fn an_idle_connection_takes_half_of_a_slow_range_only_when_it_pays() {
        let mut w = Work::new(vec![(0, 8 * MIB)], 16 * MIB);
        let latency = Latency::default();
        let first = w.next(&latency, None).unwrap();
        // Nothing is known of its speed yet: no split.
        assert_eq!(w.left(&latency), Left::InFlight);
        first.started();
        first.receive(MIB);
        std::thread::sleep(Duration::from_millis(20));
        // A request that waits no time: the new connection takes half.
        assert_eq!(w.left(&latency), Left::Bytes(7 * MIB));
        let second = w.next(&latency, None).unwrap();
        assert_eq!(second.bounds(), (MIB + 7 * MIB / 2, 8 * MIB));
        assert_eq!(first.bounds(), (MIB, MIB + 7 * MIB / 2));
        // Bytes past the new end are not the first range's any more.
        assert_eq!(first.receive(4 * MIB), (7 * MIB / 2, MIB + 7 * MIB / 2));
        w.finished(&first);
        // With a wait, the new connection takes less than half: what the
        // old one receives meanwhile is its head start.
        second.started();
        second.receive(MIB / 2);
        std::thread::sleep(Duration::from_millis(20));
        let rate = second.rate().unwrap();
        latency.observe(Duration::from_secs_f64(MIB as f64 / rate));
        let (_, share) = w.splittable(&latency, None).unwrap();
        let left = 3 * MIB;
        let expected = (left as f64 - rate * latency.get().as_secs_f64()) / 2.0;
        assert!(
            (share as f64 - expected).abs() < 1e4 && share < left / 2 - MIB / 4,
            "{share}"
        );
        // A wait as long as the rest takes: not worth a request.
        latency.observe(Duration::from_secs(3600));
        assert_eq!(w.left(&latency), Left::InFlight);
        assert!(w.next(&latency, None).is_none());
        w.finished(&second);
        assert_eq!(w.left(&latency), Left::Nothing);
    }
}
