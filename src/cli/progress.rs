//! indicatif bars driven by hub events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use schnell::hub::{EventSink, HubEvent, HubFile};

/// One bar per file, created when its first event arrives.
#[derive(Clone)]
pub struct DownloadBars {
    multi: MultiProgress,
    bars: Arc<Mutex<HashMap<HubFile, ProgressBar>>>,
}

impl DownloadBars {
    /// No bars yet: one appears per file as it starts.
    pub fn new() -> Self {
        Self {
            multi: MultiProgress::new(),
            bars: Arc::default(),
        }
    }

    /// The hub client's event sink, drawing into these bars.
    pub fn sink(&self) -> EventSink {
        let this = self.clone();
        Arc::new(move |event| this.on(event))
    }

    fn bar(&self, file: &HubFile, size: u64) -> ProgressBar {
        let mut bars = self.bars.lock().expect("not poisoned");
        bars.entry(file.clone())
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg:40!} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta:>4}",
                    )
                    .expect("valid template"),
                );
                bar.set_message(file.path.clone());
                bar
            })
            .clone()
    }

    /// Adds another bar (the steps) below the downloads.
    pub fn add(&self, bar: ProgressBar) -> ProgressBar {
        self.multi.add(bar)
    }

    /// Prints above the bars.
    /// A line above the bars; on stderr as it is when there are no bars
    /// (not a terminal), where indicatif would drop it.
    pub fn println(&self, line: String) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// Draws one hub event.
    pub fn on(&self, event: HubEvent) {
        match event {
            HubEvent::Queued { file, size } => {
                self.bar(&file, size).set_length(size);
            }
            HubEvent::Started {
                file,
                size,
                resumed_from,
            } => {
                let bar = self.bar(&file, size);
                bar.set_length(size);
                bar.set_position(resumed_from);
            }
            HubEvent::Advanced { file, bytes } => self.bar(&file, 0).inc(bytes),
            HubEvent::Finished { file, size } | HubEvent::Cached { file, size } => {
                let bar = self.bar(&file, size);
                bar.set_length(size);
                bar.set_position(size);
                bar.finish();
            }
            HubEvent::Retrying {
                file,
                delay_ms,
                reason,
                ..
            } => {
                let _ = self.multi.println(format!(
                    "{}: {reason}; retrying in {delay_ms} ms",
                    file.path
                ));
            }
            // A kind of event this build does not draw.
            _ => {}
        }
    }

    /// Ends every bar.
    pub fn finish(&self) {
        for bar in self.bars.lock().expect("not poisoned").values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}
