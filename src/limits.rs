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
