//! A rule plugin that misbehaves on purpose, chosen by `config.mode`:
//!
//! - `loop`: never returns.
//! - `bomb`: allocates until its memory limit stops it.
//! - `panic`: panics on a message whose subject is "panic"; labels others "survived".
//! - `spin`: busy-waits `spin_ms` on every call, then labels "spun".
//! - `sandbox`: tries to reach the host: reads the file named in the body's first line, lists
//!   "/" and ".", reads the environment and connects to the TCP address on the body's second
//!   line; labels what it found, e.g. `file:denied`, `env:0`, `socket:denied`.
//! - `label`: adds `config.label` (a well-behaved plugin, for counting calls).
//! - `sleep`: sleeps an hour on a message whose subject is "sleep"; labels others "awake".
//! - `many`: returns 100 labels (more than a call may return).
//! - `huge`: returns one label of 4 MiB.
//! - `tidy`: marks every message read and archives it.

use pigeon_plugin_sdk::{Action, Level, Message, Rule, export_rule, log};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    spin_ms: u64,
    #[serde(default)]
    label: String,
}

struct Misbehave(Config);

impl Rule for Misbehave {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Misbehave(config))
    }

    fn on_message(&mut self, m: &Message) -> Vec<Action> {
        match self.0.mode.as_str() {
            "loop" => loop {
                std::hint::black_box(0u64);
            },
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" if m.subject == "panic" => panic!("misbehave was told to panic on {}", m.id),
            "panic" => vec![Action::AddLabel("survived".into())],
            "spin" => {
                let start = std::time::Instant::now();
                while start.elapsed().as_millis() < u128::from(self.0.spin_ms) {
                    std::hint::black_box(0u64);
                }
                vec![Action::AddLabel("spun".into())]
            }
            "sandbox" => sandbox(m),
            "label" => vec![Action::AddLabel(self.0.label.clone())],
            "sleep" if m.subject == "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                vec![Action::AddLabel("slept".into())]
            }
            "sleep" => vec![Action::AddLabel("awake".into())],
            "many" => (0..100)
                .map(|i| Action::AddLabel(format!("l{i}")))
                .collect(),
            "huge" => vec![Action::AddLabel("x".repeat(4 << 20))],
            "tidy" => vec![Action::MarkRead, Action::Archive],
            other => {
                log(Level::Error, &format!("unknown mode {other}"));
                Vec::new()
            }
        }
    }
}

fn outcome<T, E: std::fmt::Debug>(what: &str, r: Result<T, E>) -> Action {
    match r {
        Ok(_) => Action::AddLabel(format!("{what}:reached")),
        Err(e) => {
            log(Level::Info, &format!("{what}: {e:?}"));
            Action::AddLabel(format!("{what}:denied"))
        }
    }
}

fn sandbox(m: &Message) -> Vec<Action> {
    let body = m.body.clone().unwrap_or_default();
    let mut lines = body.lines();
    let file = lines.next().unwrap_or("/etc/passwd").to_owned();
    let addr = lines.next().unwrap_or("127.0.0.1:9").to_owned();
    vec![
        outcome("file", std::fs::read(&file)),
        outcome("root", std::fs::read_dir("/")),
        outcome("cwd", std::fs::read_dir(".")),
        Action::AddLabel(format!("env:{}", std::env::vars_os().count())),
        Action::AddLabel(format!("args:{}", std::env::args_os().count())),
        outcome("socket", std::net::TcpStream::connect(addr.as_str())),
        outcome("udp", std::net::UdpSocket::bind("127.0.0.1:0")),
    ]
}

export_rule!(Misbehave);
