//! What the page shows around a generation: the image's frame and result,
//! the running state, and errors with the fields at fault.

use super::dom::{png_url, revoke, set_fraction, set_text};
use super::page::App;
use crate::web::api::Params;
use crate::web::history::HistoryEntry;

impl App {
    /// Sizes the image to the request, so previews (which may be smaller)
    /// and the result take the same place.
    pub(super) fn show_image_frame(&self, params: &Params) {
        let image = &self.ui.image;
        image.set_width(params.width);
        image.set_height(params.height);
        image.set_alt(&params.prompt);
        let _ = image.remove_attribute("data-seed");
        self.ui.image_info.set_hidden(true);
        set_fraction(&self.ui.progress, Some(0.0));
    }

    pub(super) fn show_result(&self, entry: &HistoryEntry, png: &[u8]) -> Result<(), String> {
        let url = png_url(png)?;
        let ui = &self.ui;
        ui.image.set_src(&url);
        ui.image.set_hidden(false);
        let _ = ui.image.set_attribute("data-seed", &entry.seed.to_string());
        ui.download.set_href(&url);
        ui.download.set_download(&entry.file_name());
        set_text(
            &ui.image_seed,
            &format!(
                "Seed {} · {}×{} · {} steps",
                entry.seed, entry.width, entry.height, entry.steps
            ),
        );
        ui.image_info.set_hidden(false);
        if let Some(old) = self.result_url.replace(Some(url)) {
            revoke(&old);
        }
        Ok(())
    }

    pub(super) fn set_running(&self, running: bool) {
        self.ui.generate.set_disabled(running);
        self.ui.cancel.set_hidden(!running);
        self.ui
            .progress
            .set_hidden(!running && self.ui.image.hidden());
    }

    pub(super) fn clear_error(&self) {
        self.ui.error.set_hidden(true);
        for id in [
            "prompt",
            "width",
            "height",
            "steps",
            "seed",
            "strength",
            "edit-image",
            "api-key",
        ] {
            if let Some(field) = self.ui.field(id) {
                let _ = field.remove_attribute("aria-invalid");
            }
        }
    }

    /// The message, and the fields at fault marked (the first focused).
    pub(super) fn show_error(&self, message: &str, fields: &[&str]) {
        set_text(&self.ui.error, message);
        self.ui.error.set_hidden(false);
        for (i, id) in fields.iter().enumerate() {
            if let Some(field) = self.ui.field(id) {
                let _ = field.set_attribute("aria-invalid", "true");
                if i == 0 {
                    let _ = field.focus();
                }
            }
        }
    }
}
