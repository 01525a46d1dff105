//! The networks: the FLUX transformer, the text encoders, the VAE, the
//! bounded attention they share, and the owned CPU layers (`cpu_ops`) that
//! replace candle's where they are faster.

pub mod attention;
pub mod cpu_ops;
pub mod linear;
pub mod t5_encoder;
pub mod text;
pub mod transformer;
pub mod vae;
