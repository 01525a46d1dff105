//! What one request may ask for. The server enforces these and the browser
//! checks them before asking, with the same words, so both targets share them.

pub const MIN_SIDE: u32 = 256;
pub const MAX_SIDE: u32 = 2048;
pub const MAX_STEPS: u32 = 50;
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

#[cfg(test)]
mod tests {
    use super::*;

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
