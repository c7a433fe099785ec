//! `pigeon bench delivery|attachment|rules|search|keys`

use super::print_json;
use crate::error::{Result, UsageError};

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Time the inbox search: indexing rate, time from opening to the first answer, and p50/p99
    /// for a mix of queries (one word, AND, OR, phrase, prefix, filter + word).
    ///
    /// Fills a temporary inbox with MESSAGES generated messages (Zipf vocabulary, sizes from a
    /// line to a few pages, eight senders, six labels) through the store, sealed like real ones.
    /// Build with --release for meaningful figures.
    Search {
        /// Messages in the inbox.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time a rekey (items/s and MB/s of sealed data) and a backup's writing and verifying.
    ///
    /// Fills a temporary home with MESSAGES generated messages (as `bench search` does) and
    /// builds its index, then in this process re-wraps the keystore with a fresh data key and
    /// times the rekey to the old key's destruction, then `backup create` to an age recipient and
    /// `backup verify` of that file. Build with --release for meaningful figures.
    Keys {
        /// Messages in the inbox.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time the rules pipeline per incoming message: built-in rules only, with keyword-labeler,
    /// and with three plugins; prints the cost per message and per plugin per message.
    ///
    /// Runs in this process, through the same plugin thread the node uses, 64 messages per round
    /// trip. Build with --release for meaningful figures.
    Rules {
        /// Messages to run through the pipeline.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time attachments between two nodes on 127.0.0.1, beside a plain TCP copy of the same file.
    Attachment {
        /// File sizes in megabytes (repeatable).
        #[arg(long = "mb", default_values_t = [10, 200])]
        sizes: Vec<u64>,
        /// attachments.window (chunks in flight) for the receiver.
        #[arg(long, default_value_t = crate::config::AttachmentsConfig::default().window)]
        window: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time the delivery of queued messages to a peer that comes online.
    ///
    /// Two nodes on 127.0.0.1 in temporary homes: the sender queues MESSAGES messages of SIZE bytes
    /// while the receiver is offline, then the receiver starts and the time to the last ack is
    /// measured, once per --batch value (and with --forward-secrecy once more, every message
    /// sealed to a one-time key of the receiver). Each run also gives one core's HPKE open rate
    /// and the peak resident memory during the drain. Build with --release for meaningful
    /// figures.
    Delivery {
        /// Messages to queue.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// batch_max_messages for a run (repeatable).
        #[arg(long = "batch", default_values_t = [64, 1])]
        batches: Vec<usize>,
        /// batches_in_flight for every run.
        #[arg(long, default_value_t = crate::config::DeliveryConfig::default().batches_in_flight)]
        in_flight: usize,
        /// Also run each batch size with every message forward secret, and compare the times.
        #[arg(long)]
        forward_secrecy: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Attachment {
            sizes,
            window,
            json,
        } => attachment(sizes, window, json).await,
        Command::Rules {
            messages,
            size,
            json,
        } => rules(messages, size, json).await,
        delivery @ Command::Delivery { .. } => run_delivery(delivery).await,
        Command::Search { messages, json } => search(messages, json).await,
        Command::Keys { messages, json } => keys(messages, json).await,
    }
}

async fn keys(messages: usize, json: bool) -> Result<()> {
    if messages == 0 || messages > 10_000_000 {
        return Err(
            UsageError::OutOfRange("--messages must be between 1 and 10000000".into()).into(),
        );
    }
    let run = crate::bench::keys::keys(messages).await?;
    if json {
        return print_json(&run);
    }
    println!(
        "{} messages: rekey moved {} items ({:.1} MB sealed) in {:.2} s: {:.0} items/s, {:.1} MB/s",
        run.messages,
        run.rekey_items,
        run.rekey_bytes as f64 / 1e6,
        run.rekey_seconds,
        run.rekey_items_per_second,
        run.rekey_mb_per_second
    );
    println!(
        "backup: {:.1} MB written in {:.2} s ({:.1} MB/s); verified in {:.2} s ({:.1} MB/s)",
        run.backup_bytes as f64 / 1e6,
        run.backup_seconds,
        run.backup_mb_per_second,
        run.verify_seconds,
        run.verify_mb_per_second
    );
    Ok(())
}

async fn search(messages: usize, json: bool) -> Result<()> {
    if messages == 0 || messages > 10_000_000 {
        return Err(
            UsageError::OutOfRange("--messages must be between 1 and 10000000".into()).into(),
        );
    }
    let run = crate::bench::search::search(messages).await?;
    if json {
        return print_json(&run);
    }
    println!(
        "{} messages: filled in {:.1} s; indexed in {:.1} s ({:.0} messages/s); index {:.1} MB, database {:.1} MB",
        run.messages,
        run.fill_seconds,
        run.index_seconds,
        run.index_per_second,
        run.index_bytes as f64 / 1e6,
        run.database_bytes as f64 / 1e6
    );
    println!("first query after opening: {:.0} ms", run.first_query_ms);
    for q in &run.queries {
        println!(
            "{:<18} p50 {:>7.2} ms   p99 {:>7.2} ms   {:>5.1} hits   e.g. {}",
            q.kind, q.p50_ms, q.p99_ms, q.mean_hits, q.example
        );
    }
    println!(
        "{:<18} p50 {:>7.2} ms   p99 {:>7.2} ms",
        "all", run.all_p50_ms, run.all_p99_ms
    );
    Ok(())
}

async fn rules(messages: usize, size: usize, json: bool) -> Result<()> {
    if messages == 0 || messages > 10_000_000 || size > crate::envelope::MAX_BODY {
        return Err(UsageError::OutOfRange(format!(
            "--messages must be between 1 and 10000000 and --size at most {}",
            crate::envelope::MAX_BODY
        ))
        .into());
    }
    let runs = crate::bench::rules::rules(messages, size).await?;
    if json {
        return print_json(&runs);
    }
    for r in &runs {
        let per_plugin = r
            .micros_per_plugin
            .map_or_else(String::new, |p| format!("   {p:>7.2} µs per plugin"));
        println!(
            "{:<20} {:>8.2} µs per message{per_plugin}   ({} messages of {size} B)",
            r.setup, r.micros_per_message, r.messages
        );
    }
    Ok(())
}

async fn attachment(sizes: Vec<u64>, window: usize, json: bool) -> Result<()> {
    if window == 0 || window > 64 {
        return Err(UsageError::OutOfRange("--window must be between 1 and 64".into()).into());
    }
    let mut runs = Vec::new();
    for mb in sizes {
        if mb == 0 || mb > 4096 {
            return Err(UsageError::OutOfRange("--mb must be between 1 and 4096".into()).into());
        }
        let run = crate::bench::attachment(mb * 1_000_000, window).await?;
        if !json {
            println!(
                "{:>5} MB attachment: {:>7.3} s {:>7.1} MB/s   (plain TCP copy, the faster of one before and one after: {:>6.3} s {:>7.1} MB/s; pigeon at {:.0} % of it)",
                mb,
                run.seconds,
                run.mb_per_second,
                run.tcp_seconds,
                run.tcp_mb_per_second,
                run.share_of_tcp * 100.0
            );
        }
        runs.push(run);
    }
    if json {
        return print_json(&runs);
    }
    Ok(())
}

async fn run_delivery(cmd: Command) -> Result<()> {
    let Command::Delivery {
        messages,
        size,
        batches,
        in_flight,
        forward_secrecy,
        json,
    } = cmd
    else {
        return Ok(());
    };
    if messages == 0 || size > crate::envelope::MAX_BODY {
        return Err(UsageError::OutOfRange(format!(
            "--messages must be above 0 and --size at most {}",
            crate::envelope::MAX_BODY
        ))
        .into());
    }
    if batches
        .iter()
        .any(|&b| b == 0 || b > crate::net::protocol::MAX_BATCH)
    {
        return Err(UsageError::OutOfRange(format!(
            "--batch must be between 1 and {}",
            crate::net::protocol::MAX_BATCH
        ))
        .into());
    }
    let mut runs = Vec::new();
    let modes: &[bool] = if forward_secrecy {
        &[false, true]
    } else {
        &[false]
    };
    for &batch in &batches {
        for &fs in modes {
            let run = crate::bench::delivery(messages, size, batch, in_flight, fs).await?;
            if !json {
                println!(
                    "{} messages of {} B{}, batch_max_messages={:>4}, batches_in_flight={}: {:>8.3} s  {:>9.0} msg/s  ({:.2}x one core's HPKE open rate, {:.0}/s; peak RSS {:.0} MiB)",
                    run.messages,
                    run.size,
                    if fs { " (forward secret)" } else { "" },
                    run.batch_max_messages,
                    run.batches_in_flight,
                    run.seconds,
                    run.messages_per_second,
                    run.drain_vs_one_core_open,
                    run.open_per_second_one_core,
                    run.peak_rss_bytes as f64 / (1024.0 * 1024.0)
                );
                println!(
                    "  CPU: {:.2} of {} cores busy; {:.0} % of it opening envelopes, {:.0} % on the two stores; opens alone would allow {:.0} msg/s",
                    run.cpu.cores_busy,
                    run.cpu.cores,
                    run.cpu.opening_share * 100.0,
                    run.cpu.stores_share * 100.0,
                    run.cpu.opens_alone_per_second
                );
                if fs && let Some(plain) = runs.last() {
                    let plain: &crate::bench::DeliveryRun = plain;
                    println!(
                        "  forward secret drain takes {:.2}x the time of the plain one",
                        run.seconds / plain.seconds
                    );
                }
            }
            runs.push(run);
        }
    }
    if json {
        return print_json(&runs);
    }
    let plain: Vec<_> = runs.iter().filter(|r| !r.forward_secret).collect();
    if let (Some(first), Some(last)) = (plain.first(), plain.last())
        && plain.len() > 1
    {
        let (fast, slow) = if first.seconds <= last.seconds {
            (first, last)
        } else {
            (last, first)
        };
        println!(
            "batch_max_messages={} is {:.1}x faster than batch_max_messages={}",
            fast.batch_max_messages,
            slow.seconds / fast.seconds.max(1e-9),
            slow.batch_max_messages
        );
    }
    Ok(())
}
