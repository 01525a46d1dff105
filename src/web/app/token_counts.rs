//! The prompt's live token counts, and the words each encoder will not read.

use std::rc::Rc;

use wasm_bindgen_futures::spawn_local;
use web_sys::HtmlElement;

use super::dom::set_text;
use super::page::{App, Counter};
use crate::hub::{huggingface_files, HubFile};
use crate::tokens::{TokenCounter, CLIP_LIMIT, T5_LIMIT};
use crate::web::api::Tokenizers;

impl App {
    pub(super) fn update_counts(&self) {
        let prompt = self.ui.prompt.value();
        let counts = &self.ui.counts;
        self.ui.dropped.set_hidden(true);
        let _ = counts.class_list().remove_1("over");
        match &*self.counter.borrow() {
            Counter::Waiting | Counter::Loading => set_text(
                counts,
                "Token counts appear once the tokenizers are loaded…",
            ),
            Counter::Failed(e) => set_text(counts, &format!("Token counts are unavailable: {e}")),
            Counter::Ready(counter) => match counter.count(&prompt) {
                Err(e) => set_text(counts, &format!("Token counts are unavailable: {e}")),
                Ok(c) => {
                    set_text(
                        counts,
                        &format!(
                            "CLIP {}/{CLIP_LIMIT} · T5 {}/{T5_LIMIT} tokens",
                            c.clip, c.t5
                        ),
                    );
                    let over = c.clip_dropped.is_some() || c.t5_dropped.is_some();
                    let _ = counts.class_list().toggle_with_force("over", over);
                    self.show_dropped(c.clip_dropped.as_deref(), c.t5_dropped.as_deref());
                }
            },
        }
    }

    /// The words each encoder will not read, marked.
    pub(super) fn show_dropped(&self, clip: Option<&str>, t5: Option<&str>) {
        let dropped = &self.ui.dropped;
        dropped.set_text_content(None);
        for (label, words) in [
            (
                format!("Past CLIP's {CLIP_LIMIT} tokens (T5 still reads them): "),
                clip,
            ),
            (format!("Past T5's {T5_LIMIT} tokens (ignored): "), t5),
        ] {
            let Some(words) = words else { continue };
            let line: HtmlElement = self.ui.element("span");
            line.set_class_name("dropped-line");
            set_text(&line, &label);
            let mark: HtmlElement = self.ui.element("mark");
            set_text(&mark, words);
            let _ = line.append_child(&mark);
            let _ = dropped.append_child(&line);
            dropped.set_hidden(false);
        }
    }

    /// Loads the tokenizers through `huggingface_file` (from the Cache API
    /// on a later visit), when the server has named them.
    pub(super) fn ensure_tokenizers(self: &Rc<Self>, tokenizers: &Option<Tokenizers>, ready: bool) {
        let Some(tokenizers) = tokenizers.clone() else {
            return;
        };
        let start = match &*self.counter.borrow() {
            Counter::Waiting => true,
            Counter::Failed(_) => ready && !self.retried_tokenizers.replace(true),
            _ => false,
        };
        if !start {
            return;
        }
        *self.counter.borrow_mut() = Counter::Loading;
        let app = self.clone();
        spawn_local(async move {
            let loaded = load_counter(tokenizers.t5, tokenizers.clip).await;
            *app.counter.borrow_mut() = match loaded {
                Ok(counter) => Counter::Ready(Box::new(counter)),
                Err(e) => Counter::Failed(e),
            };
            app.update_counts();
        });
    }
}

/// Both tokenizers through `huggingface_file`.
async fn load_counter(t5: HubFile, clip: HubFile) -> Result<TokenCounter, String> {
    let files = huggingface_files(&[t5, clip])
        .await
        .map_err(|e| e.to_string())?;
    let t5 = files[0].bytes().await.map_err(|e| e.to_string())?;
    let clip = files[1].bytes().await.map_err(|e| e.to_string())?;
    TokenCounter::from_json(&t5, &clip)
}
