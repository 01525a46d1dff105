//! What a caller asks for and gets back: the request, its input image for
//! edits, and the events and images a generation yields. Plain data; nothing
//! here touches a model.

pub mod generate;
pub mod init_image;
pub mod output;
