//! The one-shot commands as a shell uses them.

use std::process::{Command, Stdio};

/// `hexpulse config | head -0`: the reader is gone before the command prints. It stops quietly
/// (as a tool killed by SIGPIPE: 141), where `println!` used to panic.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    for _ in 0..3 {
        let mut child = Command::new(crate::up::bin())
            .arg("config")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hexpulse config");
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        // 0 only when it printed before the pipe closed.
        assert!(
            out.status.success() || out.status.code() == Some(141),
            "{:?}: {stderr}",
            out.status
        );
    }
}
