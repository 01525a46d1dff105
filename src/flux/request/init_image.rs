//! What an edit starts from: the uploaded image and mask, decoded within
//! limits, checked against each other, and shrunk to what an edit can use.
//! The encoding on the engine's thread is `crate::flux::run::edit`'s.

use image::imageops::FilterType;

use crate::flux::error::FluxError;
use crate::flux::request::output::Image;
use crate::limits::MAX_SIDE;

/// What an edit starts from: the image, how much of it to repaint, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct InitImage {
    /// At most [`MAX_SIDE`] a side: it is resized to the request's.
    pub image: Image,
    /// The noise level the image's latent is brought to before denoising,
    /// in (0, 1]; the request's steps run from there to 0 on schnell's
    /// linear schedule (as ComfyUI's `denoise` does).
    pub strength: f32,
    /// Where to repaint; everywhere without one. The image's size.
    pub mask: Option<Mask>,
}

impl InitImage {
    /// An edit of `image`, repainted where `mask` says (which must be the
    /// image's size). Both are shrunk, keeping their proportions, to at
    /// most [`MAX_SIDE`] a side, the largest image an edit makes, so that a
    /// queued edit holds no more than it can use.
    pub fn new(image: Image, mask: Option<Mask>, strength: f32) -> Result<Self, FluxError> {
        if let Some(mask) = &mask {
            if (mask.width, mask.height) != (image.width, image.height) {
                return Err(FluxError::InvalidRequest {
                    field: "mask",
                    reason: format!(
                        "is {}×{}, but the image is {}×{}: they must be the same size",
                        mask.width, mask.height, image.width, image.height
                    ),
                });
            }
        }
        let (width, height) = fit_within(image.width, image.height, MAX_SIDE);
        let image = if (width, height) == (image.width, image.height) {
            image
        } else {
            let rgb = image::RgbImage::from_raw(image.width, image.height, image.rgb).ok_or_else(
                || FluxError::InvalidRequest {
                    field: "image",
                    reason: "is not an RGB image of its size".into(),
                },
            )?;
            let small = image::imageops::resize(&rgb, width, height, FilterType::Triangle);
            Image {
                width,
                height,
                rgb: small.into_raw(),
            }
        };
        let mask = match mask {
            Some(mask) if (mask.width, mask.height) != (width, height) => {
                let gray = image::GrayImage::from_raw(mask.width, mask.height, mask.repaint)
                    .ok_or_else(|| FluxError::InvalidRequest {
                        field: "mask",
                        reason: "is not a mask of its size".into(),
                    })?;
                let small = image::imageops::resize(&gray, width, height, FilterType::Triangle);
                Some(Mask {
                    width,
                    height,
                    repaint: small.into_raw(),
                })
            }
            mask => mask,
        };
        Ok(Self {
            image,
            strength,
            mask,
        })
    }
}

/// `width`×`height` scaled down, keeping proportions, until neither side
/// is above `max` (unchanged if it fits); at least 1 pixel a side.
fn fit_within(width: u32, height: u32, max: u32) -> (u32, u32) {
    let longer = width.max(height);
    if longer <= max {
        return (width, height);
    }
    let scale = f64::from(max) / f64::from(longer);
    let side = |v: u32| ((f64::from(v) * scale).round() as u32).clamp(1, max);
    (side(width), side(height))
}

/// Where an edit repaints, one weight a pixel: 255 repaints, 0 keeps the
/// image; between, a blend. The same size as the image it masks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    /// Width in pixels, the image's.
    pub width: u32,
    /// Height in pixels, the image's.
    pub height: u32,
    /// One weight a pixel, row-major: 255 repaints, 0 keeps.
    pub repaint: Vec<u8>,
}

/// The largest side of an uploaded image or mask, and the most its decoding
/// may allocate: beyond them it is refused before it is decoded.
pub const MAX_INPUT_SIDE: u32 = 4096;
/// A 4096² RGBA image of 16-bit channels, the largest there is.
const MAX_INPUT_ALLOC: u64 = 128 << 20;

/// An uploaded image file (png, jpeg or webp), decoded within the limits.
fn decode_upload(bytes: &[u8]) -> Result<image::DynamicImage, String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot be read: {e}"))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP) => {}
        Some(other) => return Err(format!("is a {other:?} image: send a png, jpeg or webp")),
        None => return Err("is not a png, jpeg or webp image".into()),
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(MAX_INPUT_ALLOC);
    reader.limits(limits);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => {
            format!("is larger than {MAX_INPUT_SIDE}×{MAX_INPUT_SIDE} pixels")
        }
        e => format!("cannot be decoded: {e}"),
    })
}

impl Image {
    /// An uploaded png, jpeg or webp, as RGB (any transparency dropped).
    /// The error says what is wrong with the file, for the caller to name it.
    pub fn decode(bytes: &[u8]) -> Result<Image, String> {
        let rgb = decode_upload(bytes)?.to_rgb8();
        Ok(Image {
            width: rgb.width(),
            height: rgb.height(),
            rgb: rgb.into_raw(),
        })
    }
}

impl Mask {
    /// A mask file as OpenAI's API reads it: its transparent pixels are
    /// repainted (alpha 0 repaints, 255 keeps). Without an alpha channel, or
    /// with one that is opaque everywhere (black-and-white masks saved as
    /// RGBA), its white pixels are (diffusers' inpainting masks).
    pub fn decode(bytes: &[u8]) -> Result<Mask, String> {
        let decoded = decode_upload(bytes)?;
        let (width, height) = (decoded.width(), decoded.height());
        let alpha: Option<Vec<u8>> = decoded
            .color()
            .has_alpha()
            .then(|| decoded.to_rgba8().pixels().map(|p| 255 - p.0[3]).collect())
            .filter(|repaint: &Vec<u8>| repaint.iter().any(|&v| v > 0));
        let repaint = match alpha {
            Some(repaint) => repaint,
            None => decoded.to_luma8().into_raw(),
        };
        Ok(Mask {
            width,
            height,
            repaint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(image: image::DynamicImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn masks_read_alpha_else_white_and_oversized_inputs_are_refused() {
        // Transparent pixels repaint.
        let alpha = image::RgbaImage::from_fn(4, 2, |x, _| {
            image::Rgba([0, 0, 0, if x < 2 { 0 } else { 255 }])
        });
        let mask = Mask::decode(&png(alpha.into())).unwrap();
        assert_eq!(mask.repaint, [255, 255, 0, 0, 255, 255, 0, 0]);
        // Opaque everywhere, or no alpha at all: white repaints.
        let opaque = image::RgbaImage::from_fn(4, 2, |x, _| {
            let v = if x < 2 { 255 } else { 0 };
            image::Rgba([v, v, v, 255])
        });
        let rgb = image::DynamicImage::from(opaque.clone()).to_rgb8();
        for file in [png(opaque.into()), png(rgb.into())] {
            let mask = Mask::decode(&file).unwrap();
            assert_eq!(mask.repaint, [255, 255, 0, 0, 255, 255, 0, 0]);
        }
        // Beyond the side limit: refused before decoding, naming the limit.
        let wide = png(image::RgbImage::new(MAX_INPUT_SIDE + 1, 1).into());
        let e = Image::decode(&wide).unwrap_err();
        assert!(e.contains("larger than 4096×4096"), "{e}");
        let e = Image::decode(b"GIF89a....").unwrap_err();
        assert!(e.contains("png, jpeg or webp"), "{e}");
    }

    #[test]
    fn an_edit_shrinks_its_image_and_mask_alike_and_needs_them_the_same_size() {
        let image = |w: u32, h: u32| Image {
            width: w,
            height: h,
            rgb: vec![7; (w * h * 3) as usize],
        };
        let mask = |w: u32, h: u32| Mask {
            width: w,
            height: h,
            repaint: vec![255; (w * h) as usize],
        };
        let big = InitImage::new(image(4096, 1024), Some(mask(4096, 1024)), 0.8).unwrap();
        assert_eq!((big.image.width, big.image.height), (MAX_SIDE, 512));
        assert_eq!(big.image.rgb.len(), (MAX_SIDE * 512 * 3) as usize);
        let m = big.mask.unwrap();
        assert_eq!((m.width, m.height), (MAX_SIDE, 512));
        assert!(m.repaint.iter().all(|&v| v == 255));
        let small = InitImage::new(image(300, 200), None, 0.5).unwrap();
        assert_eq!((small.image.width, small.image.height), (300, 200));
        let e = InitImage::new(image(4096, 1024), Some(mask(4000, 1024)), 0.8).unwrap_err();
        assert!(e.to_string().contains("4000×1024"), "{e}");
    }
}
