//! `--quant` and `--t5-quant`: which weight files to run, and the Hub files
//! that hold them.
//!
//! The transformer's GGUF files are city96's (`city96/FLUX.1-schnell-gguf`),
//! the T5 encoder's too (`city96/t5-v1_1-xxl-encoder-gguf`). The two repos
//! offer different types, so T5's type defaults to the one nearest in bits per
//! weight to the transformer's.

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;
use serde::{Deserialize, Serialize};

use crate::hub::HubFile;

/// The transformer's GGUF repository.
pub const FLUX_GGUF_REPO: &str = "city96/FLUX.1-schnell-gguf";
/// The T5-XXL encoder's GGUF repository (llama.cpp tensor names).
pub const T5_GGUF_REPO: &str = "city96/t5-v1_1-xxl-encoder-gguf";

/// The transformer's weights: the FLUX repo's safetensors (`none`) or one of
/// city96's GGUF files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quant {
    /// The FLUX repo's BF16 safetensors.
    None,
    /// 8-bit blocks (`flux1-schnell-Q8_0.gguf`).
    Q8_0,
    /// 6-bit k-quants.
    #[serde(rename = "q6_k")]
    Q6K,
    /// 5-bit k-quants, small.
    #[serde(rename = "q5_k_s")]
    Q5KS,
    /// 5-bit blocks with a minimum.
    Q5_1,
    /// 5-bit blocks.
    Q5_0,
    /// 4-bit blocks with a minimum.
    Q4_1,
    /// 4-bit k-quants, small.
    #[serde(rename = "q4_k_s")]
    Q4KS,
    /// 4-bit blocks.
    Q4_0,
    /// 3-bit k-quants, small.
    #[serde(rename = "q3_k_s")]
    Q3KS,
    /// 2-bit k-quants.
    #[serde(rename = "q2_k")]
    Q2K,
}

/// The T5 encoder's weights: safetensors (`none`, from the `--text-encoders`
/// set) or one of city96's GGUF files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum T5Quant {
    /// The safetensors of `--text-encoders`.
    None,
    /// 8-bit blocks.
    Q8_0,
    /// 6-bit k-quants.
    #[serde(rename = "q6_k")]
    Q6K,
    /// 5-bit k-quants, medium.
    #[serde(rename = "q5_k_m")]
    Q5KM,
    /// 5-bit k-quants, small.
    #[serde(rename = "q5_k_s")]
    Q5KS,
    /// 4-bit k-quants, medium.
    #[serde(rename = "q4_k_m")]
    Q4KM,
    /// 4-bit k-quants, small.
    #[serde(rename = "q4_k_s")]
    Q4KS,
    /// 3-bit k-quants, large.
    #[serde(rename = "q3_k_l")]
    Q3KL,
    /// 3-bit k-quants, medium.
    #[serde(rename = "q3_k_m")]
    Q3KM,
    /// 3-bit k-quants, small.
    #[serde(rename = "q3_k_s")]
    Q3KS,
}

impl Quant {
    /// Every GGUF type, largest file first (`auto` tries them in this order).
    pub const GGUF: [Quant; 10] = [
        Quant::Q8_0,
        Quant::Q6K,
        Quant::Q5_1,
        Quant::Q5KS,
        Quant::Q5_0,
        Quant::Q4_1,
        Quant::Q4KS,
        Quant::Q4_0,
        Quant::Q3KS,
        Quant::Q2K,
    ];

    /// The command-line name: `none`, `q8_0`, `q4_k_s`, …
    pub fn name(self) -> &'static str {
        match self {
            Quant::None => "none",
            Quant::Q8_0 => "q8_0",
            Quant::Q6K => "q6_k",
            Quant::Q5KS => "q5_k_s",
            Quant::Q5_1 => "q5_1",
            Quant::Q5_0 => "q5_0",
            Quant::Q4_1 => "q4_1",
            Quant::Q4KS => "q4_k_s",
            Quant::Q4_0 => "q4_0",
            Quant::Q3KS => "q3_k_s",
            Quant::Q2K => "q2_k",
        }
    }

    /// The block type of the transformer's matrices; `None` for safetensors.
    pub fn ggml(self) -> Option<GgmlDType> {
        Some(match self {
            Quant::None => return None,
            Quant::Q8_0 => GgmlDType::Q8_0,
            Quant::Q6K => GgmlDType::Q6K,
            Quant::Q5KS => GgmlDType::Q5K,
            Quant::Q5_1 => GgmlDType::Q5_1,
            Quant::Q5_0 => GgmlDType::Q5_0,
            Quant::Q4_1 => GgmlDType::Q4_1,
            Quant::Q4KS => GgmlDType::Q4K,
            Quant::Q4_0 => GgmlDType::Q4_0,
            Quant::Q3KS => GgmlDType::Q3K,
            Quant::Q2K => GgmlDType::Q2K,
        })
    }

    /// Bits per weight of the quantized matrices.
    pub fn bits_per_weight(self) -> Option<f64> {
        self.ggml().map(bits_per_weight)
    }

    /// The transformer's file: city96's GGUF, or `None` for safetensors.
    pub fn file(self) -> Option<HubFile> {
        (self != Quant::None).then(|| {
            HubFile::new(
                FLUX_GGUF_REPO,
                format!("flux1-schnell-{}.gguf", self.name().to_uppercase()),
            )
        })
    }
}

impl T5Quant {
    /// Every GGUF type city96 publishes that candle reads (not f16/f32, which
    /// candle widens to F32: safetensors in bf16 is smaller), largest first.
    pub const GGUF: [T5Quant; 9] = [
        T5Quant::Q8_0,
        T5Quant::Q6K,
        T5Quant::Q5KM,
        T5Quant::Q5KS,
        T5Quant::Q4KM,
        T5Quant::Q4KS,
        T5Quant::Q3KL,
        T5Quant::Q3KM,
        T5Quant::Q3KS,
    ];

    /// The name `--quant` takes, lower case (`q4_k_s`).
    pub fn name(self) -> &'static str {
        match self {
            T5Quant::None => "none",
            T5Quant::Q8_0 => "q8_0",
            T5Quant::Q6K => "q6_k",
            T5Quant::Q5KM => "q5_k_m",
            T5Quant::Q5KS => "q5_k_s",
            T5Quant::Q4KM => "q4_k_m",
            T5Quant::Q4KS => "q4_k_s",
            T5Quant::Q3KL => "q3_k_l",
            T5Quant::Q3KM => "q3_k_m",
            T5Quant::Q3KS => "q3_k_s",
        }
    }

    /// The block type of most of the encoder's matrices (llama.cpp's `_M` and
    /// `_L` mixes give some tensors a larger K type).
    pub fn ggml(self) -> Option<GgmlDType> {
        Some(match self {
            T5Quant::None => return None,
            T5Quant::Q8_0 => GgmlDType::Q8_0,
            T5Quant::Q6K => GgmlDType::Q6K,
            T5Quant::Q5KM | T5Quant::Q5KS => GgmlDType::Q5K,
            T5Quant::Q4KM | T5Quant::Q4KS => GgmlDType::Q4K,
            T5Quant::Q3KL | T5Quant::Q3KM | T5Quant::Q3KS => GgmlDType::Q3K,
        })
    }

    /// The size of city96's file for T5-XXL, in bytes: exact where known,
    /// else the Hub's rounded display (shared/reference/gguf.md §2.1).
    pub fn real_file_bytes(self) -> Option<u64> {
        Some(match self {
            T5Quant::None => return None,
            T5Quant::Q8_0 => 5_061_584_064,
            T5Quant::Q6K => 3_908_261_056,
            T5Quant::Q5KM => 3_386_856_640,
            T5Quant::Q5KS => 3_290_000_000,
            T5Quant::Q4KM => 2_896_123_072,
            T5Quant::Q4KS => 2_740_000_000,
            T5Quant::Q3KL => 2_460_000_000,
            T5Quant::Q3KM => 2_300_000_000,
            T5Quant::Q3KS => 2_099_467_456,
        })
    }

    /// Effective bits per weight over the whole encoder, mixes included:
    /// the real file's size over T5-XXL's 4,762,107,904 matrix weights.
    pub fn bits_per_weight(self) -> Option<f64> {
        self.real_file_bytes()
            .map(|bytes| bytes as f64 * 8.0 / 4_762_107_904.0)
    }

    /// The type nearest in bits per weight to the transformer's (ties go to
    /// the larger); `none` for `none`.
    pub fn nearest(quant: Quant) -> T5Quant {
        let Some(target) = quant.bits_per_weight() else {
            return T5Quant::None;
        };
        let distance = |q: &T5Quant| (q.bits_per_weight().expect("GGUF type") - target).abs();
        T5Quant::GGUF
            .into_iter()
            .min_by(|a, b| distance(a).total_cmp(&distance(b)))
            .expect("not empty")
    }

    /// The GGUF file that holds these weights; `None` for `none`.
    pub fn file(self) -> Option<HubFile> {
        (self != T5Quant::None).then(|| {
            HubFile::new(
                T5_GGUF_REPO,
                format!("t5-v1_1-xxl-encoder-{}.gguf", self.name().to_uppercase()),
            )
        })
    }
}

/// Bits per weight of a GGML block type.
pub fn bits_per_weight(dtype: GgmlDType) -> f64 {
    dtype.type_size() as f64 * 8.0 / dtype.block_size() as f64
}

macro_rules! named_enum {
    ($ty:ident, $what:literal) => {
        impl $ty {
            /// `none`, then every GGUF type, largest first.
            pub fn all() -> impl Iterator<Item = $ty> {
                std::iter::once($ty::None).chain($ty::GGUF)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let s = s.to_ascii_lowercase();
                <$ty>::all().find(|q| q.name() == s).ok_or_else(|| {
                    let names: Vec<&str> = <$ty>::all().map(|q| q.name()).collect();
                    format!("unknown {} {s:?}: use {}", $what, names.join(", "))
                })
            }
        }
    };
}

named_enum!(Quant, "quant type");
named_enum!(T5Quant, "T5 quant type");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_files_are_city96s() {
        for q in Quant::all() {
            assert_eq!(q.name().parse::<Quant>().unwrap(), q);
            assert_eq!(
                serde_json::to_value(q).unwrap(),
                serde_json::json!(q.name())
            );
        }
        for q in T5Quant::all() {
            assert_eq!(q.name().parse::<T5Quant>().unwrap(), q);
        }
        assert_eq!(
            Quant::Q4KS.file().unwrap().path,
            "flux1-schnell-Q4_K_S.gguf"
        );
        assert_eq!(
            T5Quant::Q5KM.file().unwrap().path,
            "t5-v1_1-xxl-encoder-Q5_K_M.gguf"
        );
        assert!(Quant::None.file().is_none());
    }

    #[test]
    fn t5_defaults_to_the_nearest_published_type() {
        let nearest = |q| T5Quant::nearest(q);
        assert_eq!(nearest(Quant::None), T5Quant::None);
        assert_eq!(nearest(Quant::Q8_0), T5Quant::Q8_0);
        assert_eq!(nearest(Quant::Q6K), T5Quant::Q6K);
        assert_eq!(nearest(Quant::Q5_1), T5Quant::Q5KM);
        assert_eq!(nearest(Quant::Q5KS), T5Quant::Q5KS);
        assert_eq!(nearest(Quant::Q5_0), T5Quant::Q5KS);
        assert_eq!(nearest(Quant::Q4_1), T5Quant::Q4KM);
        assert_eq!(nearest(Quant::Q4KS), T5Quant::Q4KS);
        assert_eq!(nearest(Quant::Q4_0), T5Quant::Q4KS);
        assert_eq!(nearest(Quant::Q3KS), T5Quant::Q3KS);
        // city96 has no 2-bit T5: the smallest there is.
        assert_eq!(nearest(Quant::Q2K), T5Quant::Q3KS);
    }
}
