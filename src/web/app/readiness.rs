//! The model's loading progress, from `/readyz`, until it is ready.

use std::rc::Rc;

use super::dom::{set_fraction, set_text};
use super::net;
use super::page::App;
use crate::web::api::Readiness;

impl App {
    /// Polls `/readyz` until the model is ready, showing how far it is.
    pub(super) async fn watch_readiness(self: Rc<Self>) {
        if self.watching_readiness.replace(true) {
            return;
        }
        let url = format!("{}/readyz", net::origin());
        loop {
            let wait_ms = match net::get(&url).await {
                Err(e) => {
                    self.show_status(
                        &format!(
                            "Cannot reach the schnell server at {} ({}); trying again…",
                            net::origin(),
                            e.message
                        ),
                        None,
                    );
                    2000
                }
                Ok(response) => match Readiness::parse(&net::text(&response).await) {
                    Err(e) => {
                        self.show_status(&e, None);
                        5000
                    }
                    Ok(r) => {
                        set_text(&self.ui.model, &r.model);
                        self.ensure_tokenizers(&r.tokenizers, r.ready);
                        if r.ready {
                            self.ui.status.set_hidden(true);
                            break;
                        }
                        self.show_status(&r.summary(), r.fraction());
                        let _ = self
                            .ui
                            .status
                            .class_list()
                            .toggle_with_force("failed", r.failed());
                        self.ui.status_progress.set_hidden(r.failed());
                        if r.failed() {
                            5000
                        } else {
                            1000
                        }
                    }
                },
            };
            net::sleep(wait_ms).await;
        }
        self.watching_readiness.set(false);
    }

    pub(super) fn show_status(&self, text: &str, fraction: Option<f64>) {
        self.ui.status.set_hidden(false);
        self.ui.status_progress.set_hidden(false);
        set_text(&self.ui.status_text, text);
        set_fraction(&self.ui.status_progress, fraction);
    }
}
