//! The history list: stored results shown, reused and cleared.

use std::rc::Rc;

use web_sys::{HtmlButtonElement, HtmlElement, HtmlImageElement};

use super::dom::{self, revoke, set_text};
use super::page::App;
use super::store::HistoryStore;
use crate::web::history::{History, HistoryEntry};

impl App {
    /// Adds a new result if given, then shows the stored history.
    pub(super) async fn show_history(self: Rc<Self>, add: Option<(HistoryEntry, Vec<u8>)>) {
        let shown = async {
            let store = HistoryStore::open().await?;
            let history = match add {
                Some((entry, png)) => store.add(entry, &png).await?,
                None => store.load().await?,
            };
            self.render_history(&store, &history).await;
            Ok::<_, String>(())
        };
        if let Err(e) = shown.await {
            self.history_trouble(&format!("The history is unavailable: {e}"));
        }
    }

    pub(super) fn history_trouble(&self, message: &str) {
        set_text(&self.ui.history_note, message);
        self.ui.history_note.set_hidden(false);
    }

    /// Reads the images not shown yet (an image is read once, not on every
    /// render), then rebuilds the list in one go, so that two renders racing
    /// (the first load and a new result) cannot interleave.
    pub(super) async fn render_history(&self, store: &HistoryStore, history: &History) {
        let mut read = Vec::new();
        for entry in &history.entries {
            if self.history_urls.borrow().contains_key(&entry.id) {
                continue;
            }
            if let Ok(Some(blob)) = store.image(entry).await {
                if let Ok(url) = dom::blob_url(&blob) {
                    read.push((entry.id.clone(), url));
                }
            }
        }
        *self.history.borrow_mut() = history.clone();
        let mut urls = self.history_urls.borrow_mut();
        for (id, url) in read {
            // A racing render may have read it too: keep one.
            if let Some(duplicate) = urls.insert(id, url) {
                revoke(&duplicate);
            }
        }
        urls.retain(|id, url| {
            let kept = history.entries.iter().any(|e| &e.id == id);
            if !kept {
                revoke(url);
            }
            kept
        });
        let ui = &self.ui;
        ui.history.set_text_content(None);
        set_text(
            &ui.history_note,
            "Finished images appear here and stay after a reload.",
        );
        ui.history_note.set_hidden(!history.entries.is_empty());
        ui.clear_history.set_hidden(history.entries.is_empty());
        for entry in &history.entries {
            let item: HtmlElement = ui.element("li");
            item.set_class_name("history-entry");
            let _ = item.set_attribute("data-id", &entry.id);
            let image: HtmlImageElement = ui.element("img");
            image.set_width(entry.width);
            image.set_height(entry.height);
            image.set_alt(&entry.prompt);
            let caption: HtmlElement = ui.element("p");
            caption.set_class_name("history-prompt");
            set_text(&caption, &entry.prompt);
            let meta: HtmlElement = ui.element("p");
            meta.set_class_name("history-meta");
            set_text(
                &meta,
                &format!(
                    "{}×{} · seed {} · {} steps",
                    entry.width, entry.height, entry.seed, entry.steps
                ),
            );
            // One listener on the list handles every entry's button (see `wire`).
            let reuse: HtmlButtonElement = ui.element("button");
            reuse.set_type("button");
            reuse.set_class_name("reuse");
            set_text(&reuse, "Use these settings");
            let _ = item.append_child(&image);
            let _ = item.append_child(&caption);
            let _ = item.append_child(&meta);
            if let Some(url) = urls.get(&entry.id) {
                image.set_src(url);
                let link: web_sys::HtmlAnchorElement = ui.element("a");
                link.set_href(url);
                link.set_download(&entry.file_name());
                set_text(&link, "Download");
                let _ = item.append_child(&link);
            }
            let _ = item.append_child(&reuse);
            let _ = ui.history.append_child(&item);
        }
    }

    /// Puts an earlier result's settings back in the form.
    pub(super) fn reuse(&self, entry: &HistoryEntry) {
        let ui = &self.ui;
        ui.prompt.set_value(&entry.prompt);
        ui.width.set_value(&entry.width.to_string());
        ui.height.set_value(&entry.height.to_string());
        ui.steps.set_value(&entry.steps.to_string());
        ui.seed.set_value(&entry.seed.to_string());
        self.update_counts();
        let _ = ui.prompt.focus();
    }

    pub(super) async fn clear_history(self: Rc<Self>) {
        let cleared = async {
            let store = HistoryStore::open().await?;
            store.clear().await?;
            self.render_history(&store, &History::default()).await;
            Ok::<_, String>(())
        };
        if let Err(e) = cleared.await {
            self.history_trouble(&format!("The history could not be cleared: {e}"));
        }
    }
}
