//! A ticking task that shows any blocking call on the runtime it runs on.

use std::time::Duration;

use tokio::sync::oneshot;

/// A task ticking every 5 ms on the current runtime, recording the longest gap
/// between ticks: any blocking call on that runtime shows up as a gap.
pub struct Heartbeat {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(Duration, u32)>,
}

impl Heartbeat {
    /// Raises the calling thread's priority (nice -10; needs root, as in CI,
    /// else nothing changes) so that, on a small machine, the scheduler's time
    /// slices for other threads do not pass for stalls. A blocking call on the
    /// runtime still stops the heartbeat. Call on the runtime's thread before
    /// it starts.
    pub fn prioritise_this_thread() {
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, -10);
        }
    }

    /// Starts ticking; call from inside the runtime under test.
    pub async fn start() -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = tokio::time::Instant::now();
            let (mut worst, mut beats) = (Duration::ZERO, 0u32);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let now = tokio::time::Instant::now();
                        worst = worst.max(now - last);
                        last = now;
                        beats += 1;
                    }
                    // A runtime blocked until the end never ticked: count that gap too.
                    _ = &mut stopped => return (worst.max(tokio::time::Instant::now() - last), beats),
                }
            }
        });
        // Let it take its first tick before the work starts.
        tokio::task::yield_now().await;
        Self { stop, task }
    }

    /// The longest gap, and how many ticks there were.
    pub async fn stop(self) -> (Duration, u32) {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}
