//! `--quant`'s choice (a fixed type or `auto`) and the plan it resolves to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::flux::weights::quant::{Quant, T5Quant};

/// What `--quant` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantChoice {
    /// The largest type that fits the device's free memory.
    #[default]
    Auto,
    /// This type, whether or not it fits.
    Fixed(Quant),
}

impl fmt::Display for QuantChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantChoice::Auto => f.write_str("auto"),
            QuantChoice::Fixed(q) => q.fmt(f),
        }
    }
}

impl FromStr for QuantChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(QuantChoice::Auto);
        }
        s.parse::<Quant>()
            .map(QuantChoice::Fixed)
            .map_err(|e| format!("{e}, or auto"))
    }
}

/// The weights an engine runs, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuantPlan {
    /// The transformer's weights.
    pub transformer: Quant,
    /// T5's weights.
    pub t5: T5Quant,
    /// One sentence: what was picked and the memory figures behind it.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_or_a_type() {
        assert_eq!("auto".parse::<QuantChoice>().unwrap(), QuantChoice::Auto);
        assert_eq!(
            "Q8_0".parse::<QuantChoice>().unwrap(),
            QuantChoice::Fixed(Quant::Q8_0)
        );
        let err = "q4_k_m".parse::<QuantChoice>().unwrap_err();
        assert!(err.contains("q4_k_s") && err.contains("auto"), "{err}");
    }
}
