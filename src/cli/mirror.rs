//! `schnell mirror`: a folder of model files over the Hub's resolve protocol.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use schnell::mirror::Mirror;

// `schnell mirror`'s flags (a doc comment here would change clap's help text).
#[derive(Args)]
pub struct MirrorArgs {
    /// `DIR/<org>/<name>/<path>`, or a Hugging Face cache folder.
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: SocketAddr,
}

/// Serves the folder until SIGINT or SIGTERM.
pub async fn run(args: MirrorArgs) -> Result<()> {
    let mirror = Mirror::open(&args.dir)
        .await
        .with_context(|| format!("cannot serve {}", args.dir.display()))?;
    let (root, layout) = (mirror.root().to_path_buf(), mirror.layout());
    schnell::mirror::serve(mirror, args.addr, |addr| {
        // A closed stdout must not take the server down with it.
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "serving {} ({layout:?} layout) at http://{addr}",
            root.display()
        );
        let _ = writeln!(out, "use it with: HF_ENDPOINT=http://{addr}");
    })
    .await
    .with_context(|| format!("mirror on {}", args.addr))
}
