//! What one request may ask for. The server enforces these and the browser
//! checks them before asking, with the same words, so both targets share them.

/// The smallest width or height, in pixels.
pub const MIN_SIDE: u32 = 256;
/// The largest width or height, in pixels.
pub const MAX_SIDE: u32 = 2048;
/// The most denoising steps one request may ask for.
pub const MAX_STEPS: u32 = 50;
/// The steps a request gets when it names none: schnell is distilled for four.
pub const DEFAULT_STEPS: u32 = 4;

/// A width or height: a multiple of 16 (the latent is 1/8 size, packed in
/// 2×2 patches) within the range. The error says what would be valid.
pub fn check_side(field: &str, value: u32) -> Result<(), String> {
    if value.is_multiple_of(16) && (MIN_SIDE..=MAX_SIDE).contains(&value) {
        return Ok(());
    }
    let nearest = (value.saturating_add(8) / 16 * 16).clamp(MIN_SIDE, MAX_SIDE);
    Err(format!(
        "{value} is not a multiple of 16 from {MIN_SIDE} to {MAX_SIDE}; the nearest valid {field} is {nearest}"
    ))
}

/// Denoising steps.
pub fn check_steps(value: u32) -> Result<(), String> {
    if (1..=MAX_STEPS).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{value} is outside 1 to {MAX_STEPS} (schnell needs about 4)"
        ))
    }
}

/// The largest seed: 2^53 - 1, the largest integer every JSON reader keeps
/// exactly (JavaScript's numbers are f64). A larger one would come back to a
/// browser as another number, and its image could not be made again.
pub const MAX_SEED: u64 = (1 << 53) - 1;

/// A seed a client chose.
pub fn check_seed(value: u64) -> Result<(), String> {
    if value <= MAX_SEED {
        Ok(())
    } else {
        Err(format!(
            "{value} is above {MAX_SEED} (2^53 - 1), the largest integer JavaScript reads exactly"
        ))
    }
}

/// The seed after `seed` for the next of `n` images: counts up, and wraps
/// within the range.
pub fn next_seed(seed: u64) -> u64 {
    (seed + 1) & MAX_SEED
}

/// How much of an edited image is repainted by default (see [`check_strength`]).
pub const DEFAULT_STRENGTH: f32 = 0.8;

/// An edit's strength: the noise level its image is brought to before
/// denoising, above 0 and at most 1 (1: only the composition of masked-out
/// areas survives).
pub fn check_strength(value: f32) -> Result<(), String> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(format!(
            "{value} is outside (0, 1]: 0.8, the default, keeps the image's layout and repaints its detail"
        ))
    }
}

/// The size an edit of a `width`×`height` image comes out at when the
/// request does not say: the image's own proportions, shrunk until its
/// longer side is at most 1024 (FLUX's native size) or grown until its
/// shorter side is [`MIN_SIDE`], each side then rounded to a multiple of 16
/// within the limits.
pub fn edit_size(width: u32, height: u32) -> (u32, u32) {
    let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
    let scale = (1024.0 / w.max(h))
        .min(1.0)
        .max(f64::from(MIN_SIDE) / w.min(h));
    let side = |v: f64| (((v * scale / 16.0).round() as u32) * 16).clamp(MIN_SIDE, MAX_SIDE);
    (side(w), side(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_stay_where_javascript_reads_them_exactly() {
        assert!(check_seed(MAX_SEED).is_ok());
        let e = check_seed(10921885008857042145).unwrap_err();
        assert!(e.contains("2^53 - 1"), "{e}");
        assert_eq!(next_seed(MAX_SEED), 0);
        assert_eq!(next_seed(7), 8);
        // What a JavaScript client sees of the largest seed is that seed.
        assert_eq!(MAX_SEED as f64 as u64, MAX_SEED);
    }

    #[test]
    fn edits_keep_their_images_proportions_within_the_limits() {
        assert_eq!(edit_size(512, 512), (512, 512));
        assert_eq!(edit_size(4000, 3000), (1024, 768));
        assert_eq!(edit_size(100, 50), (512, 256));
        assert_eq!(edit_size(300, 301), (304, 304));
        assert_eq!(edit_size(10_000, 10), (2048, 256));
        assert!(check_strength(0.8).is_ok() && check_strength(1.0).is_ok());
        for bad in [0.0, -0.5, 1.01, f32::NAN] {
            assert!(check_strength(bad).unwrap_err().contains("(0, 1]"));
        }
    }

    #[test]
    fn sides_and_steps() {
        assert!(check_side("width", 1024).is_ok());
        assert!(check_side("width", 256).is_ok() && check_side("width", 2048).is_ok());
        let e = check_side("height", 1000).unwrap_err();
        assert!(e.contains("nearest valid height is 1008"), "{e}");
        assert!(check_side("width", 240).unwrap_err().contains("is 256"));
        assert!(check_side("width", u32::MAX)
            .unwrap_err()
            .contains("is 2048"));
        assert!(check_steps(4).is_ok());
        assert!(check_steps(0).is_err() && check_steps(51).is_err());
    }
}
