//! The page's state ([`App`]), its start and its event listeners.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::spawn_local;
use web_sys::AbortController;

use super::dom::Ui;
use super::net;
use crate::tokens::TokenCounter;
use crate::web::history::History;

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

/// Where the prompt's token counter stands.
pub(super) enum Counter {
    /// The server has not named its tokenizers yet.
    Waiting,
    Loading,
    Ready(Box<TokenCounter>),
    Failed(String),
}

/// The page's one state: its elements and what it is doing.
pub(super) struct App {
    pub(super) ui: Ui,
    pub(super) counter: RefCell<Counter>,
    /// A failed tokenizer load is tried once more when the server is ready
    /// (before that, it may simply not have the files yet).
    pub(super) retried_tokenizers: Cell<bool>,
    /// The generation under way, to cancel it.
    pub(super) running: RefCell<Option<AbortController>>,
    pub(super) watching_readiness: Cell<bool>,
    /// The shown result's object URL, and the history's by entry id.
    pub(super) result_url: RefCell<Option<String>>,
    pub(super) history_urls: RefCell<HashMap<String, String>>,
    /// What the history list shows.
    pub(super) history: RefCell<History>,
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
}
