//! `pigeon inbox search` and `pigeon inbox reindex`

use std::time::Duration;

use super::{Global, line, print_json, unexpected};
use crate::control::api::{Request, Response};
use crate::error::Result;
use crate::inbox::search::{IndexStatus, Sort};
use crate::store::Listed;
use crate::terminal::one_line;

/// `--sort`.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub(in crate::cli) enum SortBy {
    /// Newest first.
    #[default]
    Date,
    /// Best match first.
    Relevance,
}

pub(super) async fn search(
    g: &Global,
    words: Vec<String>,
    limit: u32,
    sort: SortBy,
    json: bool,
) -> Result<()> {
    let request = Request::InboxSearch {
        query: words.join(" "),
        limit,
        sort: match sort {
            SortBy::Date => Sort::Date,
            SortBy::Relevance => Sort::Relevance,
        },
    };
    let hits = match g.call(request).await? {
        Response::Hits(hits) => hits,
        other => return Err(unexpected(other)),
    };
    if json {
        return print_json(&hits);
    }
    super::super::say_if_empty(&hits, "no messages match");
    for hit in &hits {
        let listed = match &hit.item {
            Listed::Received(item) => line(item),
            Listed::Sent(item) => format!("sent\t{}", super::super::sent::line(item)),
        };
        println!("{listed}\t{}", one_line(&hit.snippet));
    }
    Ok(())
}

pub(super) async fn reindex(g: &Global, json: bool) -> Result<()> {
    let bar = super::super::count_bar("indexing");
    let show = |s: &IndexStatus| {
        if let Some(bar) = &bar {
            bar.set_length(s.total);
            bar.set_position(s.indexed.min(s.total));
        }
    };
    // Without a node the request runs here, and the bar follows the index of this process; with
    // one, the node starts the work and answers at once, and the bar asks it how far it got.
    let call = g.call(Request::InboxReindex);
    tokio::pin!(call);
    let mut status = loop {
        tokio::select! {
            answer = &mut call => break index_status(answer?)?,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(s) = crate::inbox::search::status_here() {
                    show(&s);
                }
            }
        }
    };
    while status.rebuilding {
        show(&status);
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = index_status(g.call(Request::IndexStatus).await?)?;
    }
    if let Some(bar) = &bar {
        show(&status);
        bar.finish_and_clear();
    }
    if json {
        return print_json(&status);
    }
    println!("indexed {}", super::super::count(status.indexed, "message"));
    Ok(())
}

fn index_status(response: Response) -> Result<IndexStatus> {
    match response {
        Response::Index(s) => Ok(s),
        other => Err(unexpected(other)),
    }
}
