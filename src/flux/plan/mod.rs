//! Before anything loads: which device, which weights fit it
//! (`--quant auto`), and how much memory a request needs.

pub mod choice;
pub mod device;
pub mod memory;
