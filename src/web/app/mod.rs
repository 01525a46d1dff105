//! The page: a prompt with live token counts, the settings, an optional
//! image to edit, Generate with per-step previews, the result, and a
//! history that survives a reload.
//! Everything runs on the page's one thread; long waits are futures.

mod dom;
mod net;
mod store;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use base64::Engine as _;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::spawn_local;
use web_sys::{AbortController, AbortSignal, HtmlButtonElement, HtmlElement, HtmlImageElement};

use self::dom::{png_url, revoke, set_fraction, set_text, Ui};
use self::store::HistoryStore;
use super::api::{ApiFailure, Params, Readiness, StreamEvent, Tokenizers, QUEUE_TRIES};
use super::history::{History, HistoryEntry};
use crate::hub::{huggingface_files, HubFile};
use crate::tokens::{TokenCounter, CLIP_LIMIT, T5_LIMIT};

pub use self::net::read_sse;
pub use self::store::HISTORY_CACHE;

/// Starts the app on the page that holds its elements (`web/index.html`).
pub fn start() {
    let Some(doc) = web_sys::window().and_then(|w| w.document()) else {
        return;
    };
    match Ui::find(doc) {
        Ok(ui) => App::new(ui).wire(),
        Err(e) => web_sys::console::error_1(&format!("schnell: {e}").into()),
    }
}

enum Counter {
    /// The server has not named its tokenizers yet.
    Waiting,
    Loading,
    Ready(Box<TokenCounter>),
    Failed(String),
}

struct App {
    ui: Ui,
    counter: RefCell<Counter>,
    /// A failed tokenizer load is tried once more when the server is ready
    /// (before that, it may simply not have the files yet).
    retried_tokenizers: Cell<bool>,
    /// The generation under way, to cancel it.
    running: RefCell<Option<AbortController>>,
    watching_readiness: Cell<bool>,
    /// The shown result's object URL, and the history's by entry id.
    result_url: RefCell<Option<String>>,
    history_urls: RefCell<HashMap<String, String>>,
    /// What the history list shows.
    history: RefCell<History>,
}

fn listen(target: &web_sys::EventTarget, kind: &str, f: impl FnMut(web_sys::Event) + 'static) {
    // The page lives as long as its listeners, so they are never removed.
    let closure = Closure::<dyn FnMut(web_sys::Event)>::new(f);
    let _ = target.add_event_listener_with_callback(kind, closure.as_ref().unchecked_ref());
    closure.forget();
}

impl App {
    fn new(ui: Ui) -> Rc<Self> {
        Rc::new(Self {
            ui,
            counter: RefCell::new(Counter::Waiting),
            retried_tokenizers: Cell::new(false),
            running: RefCell::new(None),
            watching_readiness: Cell::new(false),
            result_url: RefCell::new(None),
            history_urls: RefCell::new(HashMap::new()),
            history: RefCell::new(History::default()),
        })
    }

    fn wire(self: Rc<Self>) {
        let app = self.clone();
        listen(&self.ui.prompt, "input", move |_| app.update_counts());
        let app = self.clone();
        listen(&self.ui.form, "submit", move |event| {
            event.prevent_default();
            spawn_local(app.clone().generate());
        });
        let app = self.clone();
        listen(&self.ui.edit_image, "change", move |_| {
            spawn_local(app.clone().image_chosen());
        });
        let app = self.clone();
        listen(&self.ui.clear_image, "click", move |_| {
            app.ui.edit_image.set_value("");
            app.ui.clear_image.set_hidden(true);
        });
        let app = self.clone();
        listen(&self.ui.cancel, "click", move |_| {
            if let Some(controller) = app.running.borrow().as_ref() {
                controller.abort();
            }
        });
        let app = self.clone();
        listen(&self.ui.clear_history, "click", move |_| {
            let sure = net::window()
                .confirm_with_message("Forget every image in the history?")
                .unwrap_or(false);
            if sure {
                spawn_local(app.clone().clear_history());
            }
        });
        let app = self.clone();
        listen(&self.ui.history, "click", move |event| {
            let entry = event
                .target()
                .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
                .filter(|t| t.class_list().contains("reuse"))
                .and_then(|t| t.closest("li").ok().flatten())
                .and_then(|li| li.get_attribute("data-id"))
                .and_then(|id| {
                    app.history
                        .borrow()
                        .entries
                        .iter()
                        .find(|e| e.id == id)
                        .cloned()
                });
            if let Some(entry) = entry {
                app.reuse(&entry);
            }
        });
        self.update_counts();
        spawn_local(self.clone().watch_readiness());
        spawn_local(self.show_history(None));
    }

    // --- token counts -------------------------------------------------

    fn update_counts(&self) {
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
    fn show_dropped(&self, clip: Option<&str>, t5: Option<&str>) {
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
    fn ensure_tokenizers(self: &Rc<Self>, tokenizers: &Option<Tokenizers>, ready: bool) {
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

    // --- readiness ----------------------------------------------------

    /// Polls `/readyz` until the model is ready, showing how far it is.
    async fn watch_readiness(self: Rc<Self>) {
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

    fn show_status(&self, text: &str, fraction: Option<f64>) {
        self.ui.status.set_hidden(false);
        self.ui.status_progress.set_hidden(false);
        set_text(&self.ui.status_text, text);
        set_fraction(&self.ui.status_progress, fraction);
    }

    // --- an image to edit ---------------------------------------------

    /// The image chosen to edit, if any.
    fn edit_file(&self) -> Option<web_sys::File> {
        self.ui.edit_image.files().and_then(|files| files.get(0))
    }

    /// An image was chosen (or the choice cleared): width and height take
    /// its proportions, as the server would pick them
    /// (`crate::limits::edit_size`); the person may still change them.
    async fn image_chosen(self: Rc<Self>) {
        self.clear_error();
        let Some(file) = self.edit_file() else {
            self.ui.clear_image.set_hidden(true);
            return;
        };
        self.ui.clear_image.set_hidden(false);
        let decoded = match net::window().create_image_bitmap_with_blob(&file) {
            Ok(promise) => wasm_bindgen_futures::JsFuture::from(promise).await,
            Err(e) => Err(e),
        };
        match decoded.and_then(|b| b.dyn_into::<web_sys::ImageBitmap>()) {
            Ok(bitmap) => {
                let (width, height) = crate::limits::edit_size(bitmap.width(), bitmap.height());
                bitmap.close();
                self.ui.width.set_value(&width.to_string());
                self.ui.height.set_value(&height.to_string());
            }
            Err(_) => self.show_error(
                &format!(
                    "{} cannot be read as an image: choose a png, jpeg or webp.",
                    file.name()
                ),
                &["edit-image"],
            ),
        }
    }

    // --- generation ---------------------------------------------------

    async fn generate(self: Rc<Self>) {
        if self.running.borrow().is_some() {
            return;
        }
        self.clear_error();
        let ui = &self.ui;
        let params = match Params::from_form(
            &ui.prompt.value(),
            &ui.width.value(),
            &ui.height.value(),
            &ui.steps.value(),
            &ui.seed.value(),
        )
        .and_then(|p| match self.edit_file() {
            Some(_) => p.with_strength(&ui.strength.value()),
            None => Ok(p),
        }) {
            Ok(p) => p,
            Err(e) => return self.show_error(&e.message, &[e.field]),
        };
        let Ok(controller) = AbortController::new() else {
            return self.show_error(
                "This browser cannot cancel requests (no AbortController).",
                &[],
            );
        };
        let signal = controller.signal();
        *self.running.borrow_mut() = Some(controller);
        self.set_running(true);
        let outcome = self.run(&params, &signal).await;
        *self.running.borrow_mut() = None;
        self.set_running(false);
        match outcome {
            Ok(()) => set_text(&self.ui.progress_text, "Done."),
            Err((message, fields)) => {
                set_text(&self.ui.progress_text, "");
                self.show_error(&message, fields)
            }
        }
    }

    /// Sends the request (again on 429) and follows its stream: an edit
    /// of the chosen image, or a generation.
    async fn run(
        self: &Rc<Self>,
        params: &Params,
        signal: &AbortSignal,
    ) -> Result<(), (String, &'static [&'static str])> {
        let edit = match self.edit_file() {
            None => None,
            Some(file) => {
                let form = web_sys::FormData::new()
                    .map_err(|_| ("This browser cannot send forms.".to_string(), &[][..]))?;
                for (name, value) in params.form_fields() {
                    let _ = form.append_with_str(&name, &value);
                }
                let _ = form.append_with_blob_and_filename("image", &file, &file.name());
                Some(form)
            }
        };
        let endpoint = if edit.is_some() {
            "edits"
        } else {
            "generations"
        };
        let url = format!("{}/v1/images/{endpoint}", net::origin());
        let body =
            serde_json::to_string(&params.request_body()).expect("requests always serialise");
        let cancelled = || ("Cancelled.".to_string(), &[][..]);
        let mut attempt = 0;
        loop {
            attempt += 1;
            set_text(&self.ui.progress_text, "Sending the request…");
            let key = self.ui.api_key.value();
            let payload = match &edit {
                Some(form) => net::Body::Form(form),
                None => net::Body::Json(&body),
            };
            let sent = net::post(&url, payload, &key, signal).await;
            let response = match sent {
                Ok(r) => r,
                Err(e) if e.aborted => return Err(cancelled()),
                Err(e) => {
                    spawn_local(self.clone().watch_readiness());
                    return Err((
                        format!(
                            "Cannot reach the schnell server at {} ({}). Is it running?",
                            net::origin(),
                            e.message
                        ),
                        &[],
                    ));
                }
            };
            if response.ok() {
                return self.follow(params, &response, signal).await;
            }
            let retry_after = response.headers().get("retry-after").ok().flatten();
            let failure = ApiFailure::new(
                response.status(),
                &net::text(&response).await,
                retry_after.as_deref(),
            );
            if let Some(wait) = failure.retry_in(attempt) {
                set_text(
                    &self.ui.progress_text,
                    &format!(
                        "{} Trying again in {wait} s ({} of {QUEUE_TRIES})…",
                        failure.user_message(),
                        attempt + 1
                    ),
                );
                net::sleep(wait * 1000).await;
                if signal.aborted() {
                    return Err(cancelled());
                }
                continue;
            }
            if failure.is_not_ready() {
                spawn_local(self.clone().watch_readiness());
            }
            if failure.status == 401 {
                self.ui.key_details.set_open(true);
                return Err((failure.user_message(), &["api-key"]));
            }
            return Err((failure.user_message(), failure.fields()));
        }
    }

    /// Shows each step's preview, then the image; stores it in the history.
    async fn follow(
        self: &Rc<Self>,
        params: &Params,
        response: &web_sys::Response,
        signal: &AbortSignal,
    ) -> Result<(), (String, &'static [&'static str])> {
        let ui = &self.ui;
        set_text(&ui.progress_text, "Waiting for the first step…");
        self.show_image_frame(params);
        let mut outcome: Option<Result<(String, u64), String>> = None;
        let read = net::read_sse(response, |event| match StreamEvent::parse(&event) {
            Ok(StreamEvent::Partial {
                step,
                total,
                png_b64,
            }) => {
                set_fraction(&ui.progress, Some(step as f64 / total.max(1) as f64));
                set_text(&ui.progress_text, &format!("Step {step} of {total}"));
                ui.image
                    .set_src(&format!("data:image/png;base64,{png_b64}"));
                ui.image.set_hidden(false);
                true
            }
            Ok(StreamEvent::Completed { png_b64, seed }) => {
                outcome = Some(Ok((png_b64, seed)));
                false
            }
            Ok(StreamEvent::Failed { message }) => {
                outcome = Some(Err(format!("The generation failed: {message}")));
                false
            }
            Ok(StreamEvent::Other) => true,
            Err(e) => {
                outcome = Some(Err(e));
                false
            }
        })
        .await;
        if let Err(e) = read {
            return Err(if signal.aborted() {
                ("Cancelled.".into(), &[])
            } else {
                (format!("The connection to the server broke off: {e}"), &[])
            });
        }
        let (png_b64, seed) = match outcome {
            None => {
                return Err((
                    "The server ended the stream before the image was finished.".into(),
                    &[],
                ))
            }
            Some(Err(e)) => return Err((e, &[])),
            Some(Ok(done)) => done,
        };
        let png = base64::engine::general_purpose::STANDARD
            .decode(png_b64.as_bytes())
            .map_err(|e| {
                (
                    format!("The server sent an image that is not base64: {e}"),
                    &[][..],
                )
            })?;
        let created_ms = js_sys::Date::now() as u64;
        let entry = HistoryEntry {
            id: HistoryEntry::id_for(created_ms, seed),
            prompt: params.prompt.clone(),
            width: params.width,
            height: params.height,
            steps: params.steps,
            seed,
            created_ms,
        };
        self.show_result(&entry, &png).map_err(|e| (e, &[][..]))?;
        set_fraction(&ui.progress, Some(1.0));
        spawn_local(self.clone().show_history(Some((entry, png))));
        Ok(())
    }

    /// Sizes the image to the request, so previews (which may be smaller)
    /// and the result take the same place.
    fn show_image_frame(&self, params: &Params) {
        let image = &self.ui.image;
        image.set_width(params.width);
        image.set_height(params.height);
        image.set_alt(&params.prompt);
        let _ = image.remove_attribute("data-seed");
        self.ui.image_info.set_hidden(true);
        set_fraction(&self.ui.progress, Some(0.0));
    }

    fn show_result(&self, entry: &HistoryEntry, png: &[u8]) -> Result<(), String> {
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

    fn set_running(&self, running: bool) {
        self.ui.generate.set_disabled(running);
        self.ui.cancel.set_hidden(!running);
        self.ui
            .progress
            .set_hidden(!running && self.ui.image.hidden());
    }

    fn clear_error(&self) {
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
    fn show_error(&self, message: &str, fields: &[&str]) {
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

    // --- history ------------------------------------------------------

    /// Adds a new result if given, then shows the stored history.
    async fn show_history(self: Rc<Self>, add: Option<(HistoryEntry, Vec<u8>)>) {
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

    fn history_trouble(&self, message: &str) {
        set_text(&self.ui.history_note, message);
        self.ui.history_note.set_hidden(false);
    }

    /// Reads the images not shown yet (an image is read once, not on every
    /// render), then rebuilds the list in one go, so that two renders racing
    /// (the first load and a new result) cannot interleave.
    async fn render_history(&self, store: &HistoryStore, history: &History) {
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
    fn reuse(&self, entry: &HistoryEntry) {
        let ui = &self.ui;
        ui.prompt.set_value(&entry.prompt);
        ui.width.set_value(&entry.width.to_string());
        ui.height.set_value(&entry.height.to_string());
        ui.steps.set_value(&entry.steps.to_string());
        ui.seed.set_value(&entry.seed.to_string());
        self.update_counts();
        let _ = ui.prompt.focus();
    }

    async fn clear_history(self: Rc<Self>) {
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

/// Both tokenizers through `huggingface_file`.
async fn load_counter(t5: HubFile, clip: HubFile) -> Result<TokenCounter, String> {
    let files = huggingface_files(&[t5, clip])
        .await
        .map_err(|e| e.to_string())?;
    let t5 = files[0].bytes().await.map_err(|e| e.to_string())?;
    let clip = files[1].bytes().await.map_err(|e| e.to_string())?;
    TokenCounter::from_json(&t5, &clip)
}
