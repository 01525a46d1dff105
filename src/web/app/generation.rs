//! Generate: the request (again on 429), its stream of previews, and the
//! finished image into the history.

use std::rc::Rc;

use base64::Engine as _;
use wasm_bindgen_futures::spawn_local;
use web_sys::{AbortController, AbortSignal};

use super::dom::{set_fraction, set_text};
use super::net;
use super::page::App;
use crate::web::api::{ApiFailure, Params, StreamEvent, QUEUE_TRIES};
use crate::web::history::HistoryEntry;

impl App {
    pub(super) async fn generate(self: Rc<Self>) {
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
    pub(super) async fn run(
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
    pub(super) async fn follow(
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
}
