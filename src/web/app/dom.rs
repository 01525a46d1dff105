//! The page's elements (their markup is in `web/index.html`) and small helpers.

use js_sys::{Array, Uint8Array};
use wasm_bindgen::JsCast;
use web_sys::{
    Blob, BlobPropertyBag, Document, Element, HtmlAnchorElement, HtmlButtonElement,
    HtmlDetailsElement, HtmlElement, HtmlFormElement, HtmlImageElement, HtmlInputElement,
    HtmlProgressElement, HtmlTextAreaElement, Url,
};

/// Every element the app drives, found once at start.
pub struct Ui {
    pub doc: Document,
    pub model: HtmlElement,
    pub status: HtmlElement,
    pub status_text: HtmlElement,
    pub status_progress: HtmlProgressElement,
    pub form: HtmlFormElement,
    pub prompt: HtmlTextAreaElement,
    pub counts: HtmlElement,
    pub dropped: HtmlElement,
    pub width: HtmlInputElement,
    pub height: HtmlInputElement,
    pub steps: HtmlInputElement,
    pub seed: HtmlInputElement,
    pub edit_image: HtmlInputElement,
    pub strength: HtmlInputElement,
    pub clear_image: HtmlButtonElement,
    pub key_details: HtmlDetailsElement,
    pub api_key: HtmlInputElement,
    pub generate: HtmlButtonElement,
    pub cancel: HtmlButtonElement,
    pub error: HtmlElement,
    pub progress: HtmlProgressElement,
    pub progress_text: HtmlElement,
    pub image: HtmlImageElement,
    pub image_info: HtmlElement,
    pub image_seed: HtmlElement,
    pub download: HtmlAnchorElement,
    pub history: HtmlElement,
    pub history_note: HtmlElement,
    pub clear_history: HtmlButtonElement,
}

fn by_id<T: JsCast>(doc: &Document, id: &str) -> Result<T, String> {
    doc.get_element_by_id(id)
        .ok_or_else(|| format!("the page has no #{id} element"))?
        .dyn_into::<T>()
        .map_err(|_| format!("#{id} is not the kind of element the app expects"))
}

impl Ui {
    pub fn find(doc: Document) -> Result<Self, String> {
        Ok(Self {
            model: by_id(&doc, "model")?,
            status: by_id(&doc, "status")?,
            status_text: by_id(&doc, "status-text")?,
            status_progress: by_id(&doc, "status-progress")?,
            form: by_id(&doc, "form")?,
            prompt: by_id(&doc, "prompt")?,
            counts: by_id(&doc, "token-counts")?,
            dropped: by_id(&doc, "dropped")?,
            width: by_id(&doc, "width")?,
            height: by_id(&doc, "height")?,
            steps: by_id(&doc, "steps")?,
            seed: by_id(&doc, "seed")?,
            edit_image: by_id(&doc, "edit-image")?,
            strength: by_id(&doc, "strength")?,
            clear_image: by_id(&doc, "clear-image")?,
            key_details: by_id(&doc, "key-details")?,
            api_key: by_id(&doc, "api-key")?,
            generate: by_id(&doc, "generate")?,
            cancel: by_id(&doc, "cancel")?,
            error: by_id(&doc, "error")?,
            progress: by_id(&doc, "progress")?,
            progress_text: by_id(&doc, "progress-text")?,
            image: by_id(&doc, "image")?,
            image_info: by_id(&doc, "image-info")?,
            image_seed: by_id(&doc, "image-seed")?,
            download: by_id(&doc, "download")?,
            history: by_id(&doc, "history")?,
            history_note: by_id(&doc, "history-note")?,
            clear_history: by_id(&doc, "clear-history")?,
            doc,
        })
    }

    /// A new element; tags are fixed strings, so it cannot fail.
    pub fn element<T: JsCast>(&self, tag: &str) -> T {
        self.doc
            .create_element(tag)
            .expect("a valid tag")
            .unchecked_into()
    }

    /// A form field by its id (the ones [`crate::web::api`] names).
    pub fn field(&self, id: &str) -> Option<HtmlElement> {
        self.doc.get_element_by_id(id)?.dyn_into().ok()
    }
}

pub fn set_text(element: &Element, text: &str) {
    element.set_text_content(Some(text));
}

/// A progress bar's fraction; `None` makes it indeterminate.
pub fn set_fraction(bar: &HtmlProgressElement, fraction: Option<f64>) {
    match fraction {
        Some(f) => bar.set_value(f.clamp(0.0, 1.0)),
        None => {
            let _ = bar.remove_attribute("value");
        }
    }
}

/// An object URL for PNG bytes; revoke it when it is no longer shown.
pub fn png_url(png: &[u8]) -> Result<String, String> {
    let parts = Array::of1(&Uint8Array::from(png));
    let options = BlobPropertyBag::new();
    options.set_type("image/png");
    let blob = Blob::new_with_u8_array_sequence_and_options(&parts, &options)
        .map_err(|e| crate::hub::js_message(&e))?;
    blob_url(&blob)
}

pub fn blob_url(blob: &Blob) -> Result<String, String> {
    Url::create_object_url_with_blob(blob).map_err(|e| crate::hub::js_message(&e))
}

pub fn revoke(url: &str) {
    let _ = Url::revoke_object_url(url);
}
