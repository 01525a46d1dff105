//! A small tmpfs for disk-full tests, in its own user and mount namespaces.

use std::path::Path;

/// A small filesystem for disk-full tests: a tmpfs of a given size, mounted
/// in a child process's own user and mount namespaces (`unshare`, so nothing
/// changes for the rest of the machine) and reached from this process through
/// `/proc/<child>/root`. `None` where the system allows no user namespaces.
pub struct SmallDisk {
    child: std::process::Child,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(bytes: u64) -> Option<Self> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size="$1" tmpfs "$0" && echo mounted && exec sleep 3600"#)
            .arg(dir.path())
            .arg(bytes.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        if line.trim() != "mounted" {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        let path = std::path::Path::new(&format!("/proc/{}/root", child.id()))
            .join(dir.path().strip_prefix("/").unwrap());
        Some(Self {
            child,
            path,
            _dir: dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
