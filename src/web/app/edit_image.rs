//! The image chosen to edit: the size it suggests, or why it cannot be read.

use std::rc::Rc;

use wasm_bindgen::JsCast;

use super::net;
use super::page::App;

impl App {
    /// The image chosen to edit, if any.
    pub(super) fn edit_file(&self) -> Option<web_sys::File> {
        self.ui.edit_image.files().and_then(|files| files.get(0))
    }

    /// An image was chosen (or the choice cleared): width and height take
    /// its proportions, as the server would pick them
    /// (`crate::limits::edit_size`); the person may still change them.
    pub(super) async fn image_chosen(self: Rc<Self>) {
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
}
