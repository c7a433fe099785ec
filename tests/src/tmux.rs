//! A terminal for tests that need one: tmux on a socket of the test's own, driven with keys and
//! read back from the pane, as a user at a terminal would see it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{OutputBounded, system_tool, wait_for};

/// A tmux server of the test's own (its socket in a temporary directory), killed on drop.
pub struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// Starts a session 100x24 running `bash --norc` with `env` set.
    pub fn start(env: &[(&str, &str)]) -> Tmux {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmux = Tmux {
            socket: dir.path().join("tmux.sock"),
            _dir: dir,
        };
        let mut args = vec!["new-session", "-d", "-x", "100", "-y", "24"];
        let pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for p in &pairs {
            args.extend(["-e", p.as_str()]);
        }
        args.extend(["bash", "--norc", "--noprofile"]);
        tmux.run(&args);
        tmux
    }

    /// Runs tmux `args` against this server; returns what it printed.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new(system_tool("tmux"))
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output_bounded();
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` literally.
    pub fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-l", text]);
    }

    /// Presses `keys` (tmux key names: Enter, Escape, C-c, M-Enter).
    pub fn press(&self, keys: &str) {
        self.run(&["send-keys", keys]);
    }

    /// What the pane shows now.
    pub fn pane(&self) -> String {
        self.run(&["capture-pane", "-p"])
    }

    /// Whether the program in the pane has the alternate screen (a full-screen view) up.
    pub fn alternate(&self) -> bool {
        self.run(&["display", "-p", "#{alternate_on}"]).trim() == "1"
    }

    /// Waits (at most 30 s) for the pane to show `what`; returns the pane.
    pub fn wait_shown(&self, what: &str) -> String {
        wait_for(
            &format!("the pane to show {what:?}"),
            Duration::from_secs(30),
            || {
                let pane = self.pane();
                pane.contains(what).then_some(pane)
            },
        )
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new(system_tool("tmux"))
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stdin(Stdio::null())
            .output_bounded();
    }
}
