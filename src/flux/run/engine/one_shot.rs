//! The one-shot calls beside [`FluxSchnell::generate`]'s stream: the same
//! generation, drained to its images (as reqwest offers `text()` beside
//! `bytes_stream()`).

use std::sync::Arc;

use super::FluxSchnell;
use crate::flux::error::FluxError;
use crate::flux::request::generate::GenerateRequest;
use crate::flux::request::output::{GenerateEvent, Generated, Generation};

impl FluxSchnell {
    /// Makes one image (the request's `n` is set to 1) and returns it with
    /// its seed, timings and token count. The stream's other events are
    /// dropped, warnings included: [`FluxSchnell::generate_images`] keeps
    /// them.
    ///
    /// ```no_run
    /// # async fn run(engine: schnell::flux::FluxSchnell) -> Result<(), Box<dyn std::error::Error>> {
    /// use schnell::flux::GenerateRequest;
    /// let made = engine.generate_image(GenerateRequest::new("a red fox").seed(1)).await?;
    /// std::fs::write("fox.png", made.image.to_png()?)?;
    /// # Ok(()) }
    /// ```
    pub async fn generate_image(
        &self,
        request: GenerateRequest,
    ) -> Result<Generated, Arc<FluxError>> {
        let mut generation = self.generate_images(request.images(1)).await?;
        Ok(generation.images.swap_remove(0))
    }

    /// Makes every image of the request, in order, and returns them with the
    /// warnings given on the way. A stream that ends short of the request's
    /// `n` images without a failure is [`FluxError::EngineStopped`].
    pub async fn generate_images(
        &self,
        request: GenerateRequest,
    ) -> Result<Generation, Arc<FluxError>> {
        self.generate_images_with(request, |_| {}).await
    }

    /// [`FluxSchnell::generate_images`], showing every event of the stream
    /// to `on_event` as it comes (downloads, loading, steps with previews),
    /// for progress reports.
    pub async fn generate_images_with(
        &self,
        request: GenerateRequest,
        on_event: impl FnMut(&GenerateEvent),
    ) -> Result<Generation, Arc<FluxError>> {
        let expected = request.n as usize;
        Generation::collect(self.generate(request), expected, on_event).await
    }
}
