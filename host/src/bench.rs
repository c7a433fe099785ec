//! `pigeon bench delivery`: how fast the delivery engine drains an outbox.
//!
//! Two nodes in this process, on 127.0.0.1, in temporary homes. The sender queues N messages for the
//! receiver while the receiver is offline; then the receiver starts, and the clock runs until the
//! sender has an ack for every message. Repeated for each batch size asked for, so batching can be
//! compared with one message per batch in the same run. After each run, the rate at which one core
//! opens envelopes of the same size (HPKE alone) is measured, and the drain given as a multiple
//! of it: the receive path opens a batch's envelopes across the cores.

pub mod keys;
pub mod rules;
pub mod search;

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use serde::Serialize;

use crate::config::Config;
use crate::control::api::{Request, Response};
use crate::demo::{PASSPHRASE, introduce, loopback, new_home, start_node};
use crate::error::{Error, Result, RunError};
use crate::keys::keystore;
use crate::node::Node;
use crate::store::Store;

/// Longest a run may take before it is reported as failed.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRun {
    /// Messages delivered.
    pub messages: usize,
    /// Body size in bytes.
    pub size: usize,
    /// `delivery.batch_max_messages` for the run.
    pub batch_max_messages: usize,
    /// `delivery.batches_in_flight` for the run.
    pub batches_in_flight: usize,
    /// Seconds from the receiver's start to the last ack.
    pub seconds: f64,
    /// Messages per second.
    pub messages_per_second: f64,
    /// Envelopes of the same size one core opens per second (HPKE open alone), measured in the
    /// same run.
    pub open_per_second_one_core: f64,
    /// The drain rate as a multiple of that.
    pub drain_vs_one_core_open: f64,
    /// Whether every message was sealed to a one-time key of the receiver (forward secret).
    pub forward_secret: bool,
    /// Peak resident memory of this process (both nodes) during the drain, in bytes; 0 where
    /// the platform does not say.
    pub peak_rss_bytes: u64,
    /// Where the drain's CPU went (both nodes).
    pub cpu: DrainCpu,
}

/// The CPU a drain used, in this process (both nodes), and what share of it went where.
#[derive(Debug, Clone, Serialize)]
pub struct DrainCpu {
    /// CPU seconds used during the drain.
    pub seconds: f64,
    /// Cores busy on average: CPU seconds over the drain's seconds.
    pub cores_busy: f64,
    /// Cores the machine has.
    pub cores: usize,
    /// Share of the CPU seconds spent opening envelopes (HPKE, on the receiver's blocking pool).
    pub opening_share: f64,
    /// Share spent on the two nodes' store threads (SQLite, sealing rows at rest, commits).
    pub stores_share: f64,
    /// Messages per second the opens alone would allow with every core opening and nothing
    /// else running, at the CPU an open took in this drain: the ceiling of this machine.
    pub opens_alone_per_second: f64,
}

/// Counters read before a drain, to take the drain's CPU from.
struct CpuMark {
    process: Duration,
    open_micros: u64,
    store_micros: u64,
}

impl CpuMark {
    fn now() -> CpuMark {
        CpuMark {
            process: crate::clock::process_cpu(),
            open_micros: crate::metrics::METRICS.open_cpu_micros.get(),
            store_micros: crate::metrics::METRICS.store_cpu_micros.get(),
        }
    }

    /// The CPU used since the mark, over a drain of `messages` that took `seconds`.
    fn since(&self, seconds: f64, messages: usize) -> DrainCpu {
        let now = CpuMark::now();
        let used = now.process.saturating_sub(self.process).as_secs_f64();
        let opening = now.open_micros.saturating_sub(self.open_micros) as f64 / 1e6;
        let stores = now.store_micros.saturating_sub(self.store_micros) as f64 / 1e6;
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let share = |part: f64| if used > 0.0 { part / used } else { 0.0 };
        let per_open = opening / messages.max(1) as f64;
        DrainCpu {
            seconds: used,
            cores_busy: used / seconds.max(1e-9),
            cores,
            opening_share: share(opening),
            stores_share: share(stores),
            opens_alone_per_second: if per_open > 0.0 {
                cores as f64 / per_open
            } else {
                0.0
            },
        }
    }
}

/// Envelopes sealed and opened to measure the single-core open rate.
const OPEN_SAMPLE: usize = 2000;

/// How many envelopes with a body of `size` bytes one core opens per second: HPKE open (and the
/// payload's decoding) alone, on this thread.
pub fn open_rate(size: usize) -> Result<f64> {
    let (alice, bob) = (crate::keys::Keys::generate(), crate::keys::Keys::generate());
    let body = "x".repeat(size);
    let envelopes = (0..OPEN_SAMPLE)
        .map(|_| {
            let payload = bench_payload(&body);
            crate::envelope::seal(&alice, &bob.peer_id(), bob.enc_public(), &payload)
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Run(RunError::Bench(e.to_string())))?;
    let started = Instant::now();
    for env in &envelopes {
        crate::envelope::open(&bob, &alice.peer_id(), alice.enc_public(), env)
            .map_err(|e| Error::Run(RunError::Bench(e.to_string())))?;
    }
    Ok(OPEN_SAMPLE as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// A message with text `body`, sent now.
fn bench_payload(body: &str) -> crate::envelope::Payload {
    crate::envelope::Payload {
        id: crate::envelope::MessageId::random(),
        sent_at_ms: crate::store::now_ms(),
        subject: None,
        body: body.to_owned(),
        attachments: Vec::new(),
    }
}

/// Runs the delivery benchmark once with `batch_max_messages` and `batches_in_flight`.
/// With `forward_secret`, the receiver holds a one-time key for every message (made for the run,
/// past the bound a contact may hold), and each message is sealed to one of them.
pub async fn delivery(
    messages: usize,
    size: usize,
    batch_max_messages: usize,
    batches_in_flight: usize,
    forward_secret: bool,
) -> Result<DeliveryRun> {
    let dir = tempfile::tempdir().map_err(io)?;
    let alice_home = new_home(dir.path(), "alice").await?;
    let bob_home = new_home(dir.path(), "bob").await?;
    let bob_keys = keystore::unlock(&bob_home.keystore(), PASSPHRASE)?;
    let bob_listen = free_tcp_addr()?;

    let mut config = Config::default();
    config.delivery.batch_max_messages = batch_max_messages;
    config.delivery.batches_in_flight = batches_in_flight;
    let alice = start_node(&alice_home, &config).await?;
    let alice_addrs: Vec<String> = alice
        .listen_addrs()
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    let alice_id = match alice.ops().handle(Request::Id).await? {
        Response::Id(info) => info,
        other => return Err(other.unexpected().into()),
    };
    let bob_address = bob_keys.address().to_string();
    let (secrets, signed): (Vec<_>, Vec<_>) = if forward_secret {
        let alice_peer: libp2p::PeerId = alice_id
            .peer_id
            .parse()
            .map_err(|_| Error::Run(RunError::Bench("peer id".into())))?;
        let expires = crate::store::now_ms() + 24 * 3600 * 1000;
        let bob = keystore::unlock(&bob_home.keystore(), PASSPHRASE)?;
        tokio::task::spawn_blocking(move || {
            (0..messages)
                .map(|_| crate::keys::one_time::make(&bob, &alice_peer, expires))
                .unzip()
        })
        .await
        .map_err(|e| Error::Run(RunError::Bench(e.to_string())))?
    } else {
        (Vec::new(), Vec::new())
    };
    alice
        .ops()
        .handle(Request::ContactsAdd {
            name: "bob".into(),
            address: bob_address,
            addrs: vec![bob_listen.to_string()],
        })
        .await?;
    // Bob knows Alice before he starts, as a real contact would.
    {
        let db_keys = std::sync::Arc::new(keystore::unlock(&bob_home.keystore(), PASSPHRASE)?);
        let store = Store::open(&bob_home.database(), db_keys).await?;
        let addrs = alice_addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect::<Vec<Multiaddr>>();
        let address = alice_id.address.parse()?;
        let alice_peer = alice_id.peer_id.clone();
        let added = store
            .call(move |db| {
                db.add_contact("alice", &address, &addrs)?;
                let alice_peer = alice_peer
                    .parse()
                    .map_err(|_| crate::store::StoreError::Corrupt("peer id"))?;
                db.store_one_time_secrets_within(
                    &alice_peer,
                    &secrets,
                    crate::store::now_ms(),
                    u64::MAX,
                )?;
                Ok(())
            })
            .await;
        store.close().await;
        added?;
    }
    let body = "x".repeat(size);
    if forward_secret {
        let alice_keys = keystore::unlock(&alice_home.keystore(), PASSPHRASE)?;
        let bob_peer = bob_keys.peer_id();
        for keys in signed.chunks(1000) {
            let items = keys
                .iter()
                .map(|k| {
                    use hpke::Deserializable;
                    let payload = bench_payload(&body);
                    let public = crate::keys::EncPublic::from_bytes(&k.public)
                        .map_err(|e| Error::Run(RunError::Bench(e.to_string())))?;
                    let env = crate::envelope::seal_forward_secret(
                        &alice_keys,
                        &bob_peer,
                        &k.id,
                        &public,
                        &payload,
                    )
                    .map_err(|e| Error::Run(RunError::Bench(e.to_string())))?;
                    Ok((payload.id, env))
                })
                .collect::<Result<Vec<_>>>()?;
            alice.ops().queue_sealed(bob_peer, items).await?;
        }
    } else {
        for chunk in (0..messages).collect::<Vec<_>>().chunks(1000) {
            alice
                .ops()
                .queue_bulk("bob", vec![body.clone(); chunk.len()])
                .await?;
        }
    }
    drop(signed);
    reset_peak_rss();

    // Acks are counted as they come back (a process-wide counter: only the sender sends here);
    // once all are in, the sender's outbox is asked until it records every message delivered.
    // Asking it all along would cost the sender's store a count of its outbox every few ms.
    let acked_before = crate::metrics::METRICS.sent.get();
    let cpu = CpuMark::now();
    let bob = Node::start(&bob_home, bob_keys, &Config::default(), &[bob_listen]).await?;
    let started = Instant::now();
    let late = |delivered| -> Error {
        RunError::Undelivered {
            delivered,
            messages,
            after: RUN_LIMIT,
        }
        .into()
    };
    while crate::metrics::METRICS.sent.get() - acked_before < messages as u64 {
        if started.elapsed() > RUN_LIMIT {
            return Err(late(crate::metrics::METRICS.sent.get() - acked_before));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    loop {
        let status = match alice.ops().handle(Request::Status).await? {
            Response::Status(status) => status,
            other => return Err(other.unexpected().into()),
        };
        if status.outbox.delivered as usize >= messages {
            break;
        }
        if started.elapsed() > RUN_LIMIT {
            return Err(late(status.outbox.delivered));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.since(seconds, messages);
    let peak_rss_bytes = peak_rss();
    alice.shutdown().await;
    bob.shutdown().await;
    let open_per_second_one_core = tokio::task::spawn_blocking(move || open_rate(size))
        .await
        .map_err(|e| Error::Run(RunError::Bench(e.to_string())))??;
    let messages_per_second = messages as f64 / seconds;
    Ok(DeliveryRun {
        messages,
        size,
        batch_max_messages,
        batches_in_flight,
        seconds,
        messages_per_second,
        open_per_second_one_core,
        drain_vs_one_core_open: messages_per_second / open_per_second_one_core,
        forward_secret,
        peak_rss_bytes,
        cpu,
    })
}

/// Starts the process's peak resident memory afresh (Linux: `/proc/self/clear_refs`), so that
/// [`peak_rss`] tells the peak of what follows.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory since the last [`reset_peak_rss`], in bytes (Linux:
/// `VmHWM`); 0 where unknown.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A TCP address on 127.0.0.1 that is free now, for a node that starts later.
fn free_tcp_addr() -> Result<Multiaddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let port = listener.local_addr().map_err(io)?.port();
    Ok(loopback(port))
}

/// One measured attachment transfer, beside a raw TCP copy of the same bytes.
#[derive(Debug, Clone, Serialize)]
pub struct AttachmentRun {
    /// File size in bytes.
    pub bytes: u64,
    /// Seconds from the message being queued to the last chunk verified and written.
    pub seconds: f64,
    /// Megabytes (10^6) per second through pigeon.
    pub mb_per_second: f64,
    /// Seconds for a plain TCP copy of the same file on 127.0.0.1, file to file: the faster of
    /// one made before the transfer and one after it.
    pub tcp_seconds: f64,
    /// Megabytes per second for the plain copy.
    pub tcp_mb_per_second: f64,
    /// pigeon's rate as a share of the plain copy's.
    pub share_of_tcp: f64,
}

/// Sends a file of `bytes` random bytes from one node to another on 127.0.0.1 and times it until
/// the receiver holds every chunk; then copies the same file over a plain TCP socket.
/// The receiver fetches `window` chunks at a time (`attachments.window`).
pub async fn attachment(bytes: u64, window: usize) -> Result<AttachmentRun> {
    let dir = tempfile::tempdir().map_err(io)?;
    let source = dir.path().join("payload.bin");
    write_random(&source, bytes).map_err(io)?;
    // A copy before and one after: on a virtual machine, memory the guest has not touched lately
    // is slow to fill the first time (the host hands it back page by page), which would favour
    // whichever run comes second.
    let copy = dir.path().join("copy.bin");
    let tcp_before = tcp_copy(&source, &copy).map_err(io)?;
    let alice_home = new_home(dir.path(), "alice").await?;
    let bob_home = new_home(dir.path(), "bob").await?;
    let alice = start_node(&alice_home, &Config::default()).await?;
    let mut config = Config::default();
    config.attachments.window = window;
    // Whatever size is asked for (up to 4 GB) is accepted.
    let hard = crate::attachments::HARD_MAX_SIZE;
    config.attachments.max_size = hard;
    config.attachments.max_message_bytes = hard;
    config.attachments.max_peer_bytes = hard;
    let bob = start_node(&bob_home, &config).await?;
    introduce(&alice, &bob, "bob").await?;
    introduce(&bob, &alice, "alice").await?;
    let staged = crate::attachments::stage(alice_home.root(), &source, u64::MAX, |_| {})?;

    let started = Instant::now();
    let request = Request::Send {
        to: "bob".into(),
        subject: None,
        body: "bench".into(),
        attachments: vec![staged],
        forward_secrecy: None,
    };
    let id = match alice.ops().handle(request).await? {
        Response::Queued { id, .. } => id,
        other => return Err(other.unexpected().into()),
    };
    loop {
        if let Ok(Response::Message(m)) = bob
            .ops()
            .handle(Request::InboxRead { id: id.clone() })
            .await
            && m.attachments.iter().all(|a| a.state == "complete")
        {
            break;
        }
        if started.elapsed() > RUN_LIMIT {
            return Err(RunError::AttachmentLate.into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    alice.shutdown().await;
    bob.shutdown().await;
    let tcp_seconds = tcp_copy(&source, &copy).map_err(io)?.min(tcp_before);
    let mb = bytes as f64 / 1e6;
    Ok(AttachmentRun {
        bytes,
        seconds,
        mb_per_second: mb / seconds,
        tcp_seconds,
        tcp_mb_per_second: mb / tcp_seconds,
        share_of_tcp: tcp_seconds / seconds,
    })
}

/// An I/O failure of the benchmark's own files and sockets.
fn io(source: std::io::Error) -> Error {
    Error::Io {
        what: "bench".into(),
        source,
    }
}

fn write_random(path: &std::path::Path, bytes: u64) -> std::io::Result<()> {
    use rand::RngCore;
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        rand::thread_rng().fill_bytes(&mut block[..n]);
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    // On disk before the clock starts, so that its writeback does not compete with what is
    // timed.
    file.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Copies `source` to `target` through a TCP connection on 127.0.0.1; returns the seconds taken.
fn tcp_copy(source: &std::path::Path, target: &std::path::Path) -> std::io::Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let target = target.to_owned();
    let started = Instant::now();
    let receiver = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        let mut out = std::fs::File::create(&target)?;
        std::io::copy(&mut stream, &mut out)?;
        out.sync_all()
    });
    let mut stream = std::net::TcpStream::connect(addr)?;
    std::io::copy(&mut std::fs::File::open(source)?, &mut stream)?;
    drop(stream);
    receiver
        .join()
        .map_err(|_| std::io::Error::other("copy thread panicked"))??;
    Ok(started.elapsed().as_secs_f64())
}
