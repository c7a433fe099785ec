//! Shared helpers for the end-to-end tests: a temporary home per node, the real `pigeon` binary,
//! and a node process that can be started, SIGKILLed and restarted.
//!
//! Every wait is bounded: a helper that runs out of time panics with what it was waiting for.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod tmux;

/// The longest a single CLI command may take in a test.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// [`Command::output`] with a bound: the command is killed and the test fails after
/// [`COMMAND_TIMEOUT`].
pub trait OutputBounded {
    /// Runs the command to the end, within [`COMMAND_TIMEOUT`].
    fn output_bounded(&mut self) -> Output;
}

impl OutputBounded for Command {
    fn output_bounded(&mut self) -> Output {
        let what = format!("{:?}", self.get_program());
        output_within(self, COMMAND_TIMEOUT, &what)
    }
}

/// Runs `cmd` to the end like [`Command::output`], but kills it and fails the test if it is still
/// running after `timeout`.
pub fn output_within(cmd: &mut Command, timeout: Duration, what: &str) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Read both pipes on threads, so that a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} still ran after {timeout:?}; killed");
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// The passphrase every test home uses.
pub const PASSPHRASE: &str = "e2e test passphrase";

/// The `pigeon` binary under test: `PIGEON_BIN`, or the one cargo built next to this test.
pub fn pigeon_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("PIGEON_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/pigeon
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("pigeon"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace` (it builds the binary)",
        bin.display()
    );
    bin
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pigeon home in a temporary directory.
pub struct TestHome {
    dir: tempfile::TempDir,
    /// A label for messages.
    pub name: String,
    /// The passphrase its commands are given ([`PASSPHRASE`] until a test changes it).
    passphrase: std::sync::Mutex<String>,
}

impl TestHome {
    /// A new, initialised home.
    pub fn init(name: &str) -> TestHome {
        let home = TestHome::empty(name);
        home.ok(&["init"]);
        home
    }

    /// A directory with nothing in it yet.
    pub fn empty(name: &str) -> TestHome {
        TestHome {
            dir: tempfile::Builder::new()
                .prefix(&format!("pigeon-{name}-"))
                .tempdir()
                .expect("tempdir"),
            name: name.into(),
            passphrase: std::sync::Mutex::new(PASSPHRASE.to_owned()),
        }
    }

    /// The passphrase its commands are given.
    pub fn passphrase(&self) -> String {
        self.passphrase
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Gives its commands `passphrase` from now on (after a `keys passwd`).
    pub fn set_passphrase(&self, passphrase: &str) {
        if let Ok(mut p) = self.passphrase.lock() {
            *p = passphrase.to_owned();
        }
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `pigeon` command for this home, with the passphrase in the environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(pigeon_bin());
        cmd.arg("--home").arg(self.path()).args(args);
        cmd.env("PIGEON_PASSPHRASE", self.passphrase())
            .env_remove("PIGEON_HOME")
            .env_remove("PIGEON_LOG");
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs a command and returns its output, whatever its exit status. A command still running
    /// after [`COMMAND_TIMEOUT`] is killed and the test fails, rather than hanging the suite.
    pub fn run(&self, args: &[&str]) -> Output {
        output_within(
            &mut self.cmd(args),
            COMMAND_TIMEOUT,
            &format!("pigeon {args:?}"),
        )
    }

    /// Runs `pigeon ARGS` with a pseudo-terminal as its stdin and stderr (stdout stays a pipe),
    /// waits for its question (a line ending in `[y/N] `), types `answer` and Enter, and returns
    /// what the terminal showed and the output. Bounded by [`COMMAND_TIMEOUT`].
    pub fn answer_on_terminal(&self, args: &[&str], answer: &str) -> (String, Output) {
        self.on_terminal(args, Some(answer))
    }

    /// Runs `pigeon ARGS` with a pseudo-terminal as stdin, stdout and stderr; returns what the
    /// terminal showed (`\r\n` line ends, as a terminal gets them) and the exit status.
    pub fn show_on_terminal(&self, args: &[&str]) -> (String, std::process::ExitStatus) {
        let (shown, out) = self.on_terminal(args, None);
        (shown, out.status)
    }

    fn on_terminal(&self, args: &[&str], answer: Option<&str>) -> (String, Output) {
        use std::io::{Read, Write};
        use std::os::fd::{FromRawFd, OwnedFd};

        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two descriptors into the given ints; the other pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened by openpty and are owned here alone.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut cmd = self.cmd(args);
        cmd.stdin(Stdio::from(slave.try_clone().expect("dup")));
        if answer.is_some() {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(Stdio::from(slave.try_clone().expect("dup")));
        }
        cmd.stderr(Stdio::from(slave));
        let mut child = cmd.spawn().expect("spawn pigeon");
        // `cmd` holds the parent's copies of the slave: drop them, so the master reads EOF (EIO)
        // once the child is gone.
        drop(cmd);
        let mut reader = std::fs::File::from(master.try_clone().expect("dup"));
        let mut writer = std::fs::File::from(master);
        let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = shown.clone();
        let pump = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        let text = |shown: &std::sync::Mutex<Vec<u8>>| {
            String::from_utf8_lossy(&shown.lock().expect("lock")).into_owned()
        };
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        if let Some(answer) = answer {
            while !text(&shown).contains("[y/N] ") {
                if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                    let _ = child.kill();
                    panic!(
                        "pigeon {args:?} asked nothing; the terminal showed: {:?}",
                        text(&shown)
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            writer
                .write_all(format!("{answer}\n").as_bytes())
                .expect("type the answer");
        }
        let mut stdout = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            out.read_to_end(&mut stdout).expect("read stdout");
        }
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("pigeon {args:?} did not end in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(writer);
        let _ = pump.join();
        let output = Output {
            status,
            stdout,
            stderr: Vec::new(),
        };
        (text(&shown), output)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{}: pigeon {args:?} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs a `--json` command that must succeed; returns the parsed JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("pigeon {args:?} printed bad JSON ({e}): {text}"))
    }

    /// This node's address string.
    pub fn address(&self) -> String {
        self.json(&["id", "--json"])["address"]
            .as_str()
            .expect("address")
            .to_owned()
    }

    /// Adds `other` as contact `name`, reachable at `addrs`.
    pub fn add_contact(&self, name: &str, other: &TestHome, addrs: &[String]) {
        let address = other.address();
        let mut args = vec!["contacts", "add", name, address.as_str()];
        for a in addrs {
            args.push("--addr");
            args.push(a);
        }
        self.ok(&args);
    }

    /// Sends `body` to `contact`; returns the message id.
    pub fn send(&self, contact: &str, body: &str) -> String {
        self.ok(&["send", contact, body]).trim().to_owned()
    }

    /// Sends `body` to `contact` with the file `attach`; returns the message id.
    pub fn send_attached(&self, contact: &str, body: &str, attach: &Path) -> String {
        let path = attach.to_str().expect("a UTF-8 path");
        self.ok(&["send", contact, body, "--attach", path])
            .trim()
            .to_owned()
    }

    /// The labels of message `id`, as `inbox read` shows them.
    pub fn labels(&self, id: &str) -> Vec<String> {
        let m = self.json(&["inbox", "read", id, "--json"]);
        m["labels"]
            .as_array()
            .expect("labels")
            .iter()
            .map(|l| l.as_str().expect("label").to_owned())
            .collect()
    }

    /// Waits (at most 60 s) for message `id` to be in the inbox.
    pub fn wait_arrival(&self, id: &str) {
        wait_for(
            &format!("{}: message {id} to arrive", self.name),
            Duration::from_secs(60),
            || self.inbox().iter().any(|i| i["id"] == id).then_some(()),
        );
    }

    /// Sets `key` to `value` in the home's config.toml.
    pub fn config_set(&self, key: &str, value: &str) {
        self.ok(&["config", "set", key, value]);
    }

    /// The whole inbox (archived messages too) as JSON items.
    pub fn inbox(&self) -> Vec<Value> {
        self.json(&["inbox", "list", "--all", "--json"])
            .as_array()
            .expect("inbox array")
            .clone()
    }

    /// The outbox as JSON entries.
    pub fn outbox(&self) -> Vec<Value> {
        self.json(&["outbox", "list", "--json"])
            .as_array()
            .expect("outbox array")
            .clone()
    }

    /// The outbox entry of message `id`, once it is in `state`; waits at most `timeout`.
    pub fn wait_outbox_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        wait_for(&format!("message {id} to be {state}"), timeout, || {
            self.outbox()
                .into_iter()
                .find(|e| e["id"] == id && e["state"] == state)
        })
    }

    /// What the node has logged so far (`<home>/node.log`, see [`TestHome::start_node`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("node.log")).unwrap_or_default()
    }

    /// Starts `pigeon node run` on `listen`; its log (debug level) goes to `<home>/node.log`.
    pub fn start_node(&self, listen: &str) -> NodeProc {
        self.start_node_with(listen, &[])
    }

    /// Like [`TestHome::start_node`], with more arguments for `node run` (e.g. `--metrics-addr`)
    /// or global ones (e.g. `--log-format json`).
    pub fn start_node_with(&self, listen: &str, extra: &[&str]) -> NodeProc {
        // 0600, as everything in a home is (`ops check` holds the home to it).
        let log = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().create(true).append(true),
            0o600,
        )
        .open(self.path().join("node.log"))
        .expect("open node log");
        let mut args = vec!["node", "run", "--listen", listen, "-v"];
        args.extend_from_slice(extra);
        let mut child = self
            .cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("node stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let wants_metrics = extra.contains(&"--metrics-addr");
        let (mut addr, mut metrics) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while addr.is_none() || (wants_metrics && metrics.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    // Plain lines, or with --log-format json, {"event": ..., "addr"|"url": ...}.
                    let json: Option<Value> = serde_json::from_str(&line).ok();
                    let field = |event: &str, key: &str| {
                        json.as_ref()
                            .filter(|j| j["event"] == event)
                            .and_then(|j| j[key].as_str().map(str::to_owned))
                    };
                    if let Some(a) = line
                        .strip_prefix("listening on ")
                        .map(str::to_owned)
                        .or_else(|| field("listening", "addr"))
                    {
                        addr.get_or_insert(a);
                    } else if let Some(m) = line
                        .strip_prefix("metrics on ")
                        .map(str::to_owned)
                        .or_else(|| field("metrics", "url"))
                    {
                        metrics = Some(m);
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log =
                        std::fs::read_to_string(self.path().join("node.log")).unwrap_or_default();
                    panic!(
                        "{}: node did not report its addresses; log:\n{log}",
                        self.name
                    );
                }
            }
        }
        NodeProc {
            child,
            addr: addr.expect("listen address"),
            metrics,
        }
    }
}

/// `GET url` (plain `http://host:port/path`) with std only; returns the status code and body.
pub fn http_get(url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(host).expect("connect to metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The value of a Prometheus sample line `name value` in `text`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A running `pigeon node run` process; SIGKILLed on drop if still running.
pub struct NodeProc {
    child: Child,
    /// Its first listen address, with `/p2p/<id>`.
    pub addr: String,
    /// Its metrics URL, when started with `--metrics-addr`.
    pub metrics: Option<String>,
}

impl NodeProc {
    /// The listen address without `/p2p/<id>`, to listen on again after a restart.
    pub fn listen_addr(&self) -> String {
        match self.addr.find("/p2p/") {
            Some(i) => self.addr[..i].to_owned(),
            None => self.addr.clone(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far, in bytes (VmHWM).
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmHWM");
        kb * 1024
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (at most 20 s) for a clean exit; returns the exit status code.
    pub fn stop(mut self) -> Option<i32> {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("node did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two homes that know each other, with nodes running on 127.0.0.1. The nodes are declared first
/// so that they are stopped before their homes' directories are removed (fields drop in order).
pub struct Pair {
    /// Alice's node.
    pub alice_node: Option<NodeProc>,
    /// Bob's node.
    pub bob_node: Option<NodeProc>,
    /// The sender's home.
    pub alice: TestHome,
    /// The receiver's home.
    pub bob: TestHome,
}

impl Pair {
    /// Both nodes started on free TCP ports of 127.0.0.1, each the other's contact.
    pub fn start() -> Pair {
        let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
        let alice_node = alice.start_node("/ip4/127.0.0.1/tcp/0");
        let bob_node = bob.start_node("/ip4/127.0.0.1/tcp/0");
        alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
        bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
        Pair {
            alice,
            bob,
            alice_node: Some(alice_node),
            bob_node: Some(bob_node),
        }
    }
}

/// The `body` field of every message in `home`'s inbox, read one by one.
pub fn bodies(home: &TestHome) -> Vec<String> {
    home.inbox()
        .iter()
        .map(|item| {
            let id = item["id"].as_str().expect("id");
            home.json(&["inbox", "read", id, "--json"])["body"]
                .as_str()
                .expect("body")
                .to_owned()
        })
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)
            .expect("read dir")
            .map_while(Result::ok)
        {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Test-only plugin that misbehaves as its `config.mode` says (see `tests/plugins/misbehave`).
pub const MISBEHAVE_WASM: &str = env!("PIGEON_TEST_PLUGIN_MISBEHAVE");
/// Test-only plugin built against `pigeon:plugin@2.0.0`.
pub const FUTURE_API_WASM: &str = env!("PIGEON_TEST_PLUGIN_FUTURE_API");
/// A discovery plugin built against contract 1.0.0, which logs every event it is sent.
pub const CONTRACT_1_0_WASM: &str = env!("PIGEON_TEST_PLUGIN_CONTRACT_1_0");
/// What the misbehave plugin's `sandbox` mode labels a message with when the
/// sandbox holds: every host file, directory, variable, argument and socket denied.
pub const SANDBOX_SEALED: [&str; 7] = [
    "file:denied",
    "root:denied",
    "cwd:denied",
    "env:0",
    "args:0",
    "socket:denied",
    "udp:denied",
];

/// A program the tests drive (`zsh`, `fish`, `tmux`): from the machine, or installed with apt-get
/// when missing (a fresh Debian has none of them; CI runs as root). One that cannot be had fails the
/// test with the reason.
pub fn system_tool(name: &str) -> PathBuf {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let find = || {
        ["/usr/bin", "/bin", "/usr/local/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
    };
    if let Some(path) = find() {
        return path;
    }
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = find() {
        return path;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null())
            .output()
    };
    let installed = apt(&["install", "-y", "-q", name])
        .ok()
        .filter(|o| o.status.success())
        .or_else(|| {
            apt(&["update", "-q"]).ok()?;
            apt(&["install", "-y", "-q", name]).ok()
        });
    match (installed, find()) {
        (_, Some(path)) => path,
        (out, None) => panic!(
            "{name} is missing and `apt-get install {name}` (as root) did not install it: {}",
            out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_else(|| "apt-get did not run".into())
        ),
    }
}
