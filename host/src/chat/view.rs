//! Draws a [`Chat`]: the messages (wrapped, newest at the bottom, scrolled back on demand), the
//! line being typed, and a status line with the contact's connection.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use unicode_width::UnicodeWidthChar;

use super::{Chat, Entry};
use crate::store::OutboxState;
use crate::terminal::{one_line, shown};

/// Most lines the editor grows to.
const EDITOR_LINES: u16 = 5;

/// Draws `chat` on `frame`.
pub fn render(frame: &mut Frame<'_>, chat: &Chat) {
    let area = frame.area();
    let typed = chat.editor.text.split('\n').count() as u16;
    let [messages, editor, status] = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(typed.clamp(1, EDITOR_LINES) + 2),
        Constraint::Length(1),
    ])
    .areas(area);
    render_messages(frame, chat, messages);
    render_editor(frame, chat, editor);
    let status_text = match &chat.notice {
        Some(notice) => notice.clone(),
        None => format!(
            "{} · {} · {}",
            one_line(&chat.contact),
            chat.link.as_str(),
            "Enter sends · Alt-Enter new line · PgUp/PgDn scroll · /help · Esc quits"
        ),
    };
    frame.render_widget(
        Paragraph::new(status_text).style(Style::new().add_modifier(Modifier::REVERSED)),
        status,
    );
}

/// How many lines the message area shows: for a page of scrolling.
pub fn page(area: Rect) -> usize {
    usize::from(area.height.saturating_sub(EDITOR_LINES + 3)).max(1)
}

fn render_messages(frame: &mut Frame<'_>, chat: &Chat, area: Rect) {
    let width = usize::from(area.width).max(1);
    let mut lines: Vec<Line<'static>> = Vec::new();
    for entry in chat.entries() {
        entry_lines(chat, entry, width, &mut lines);
    }
    if lines.is_empty() {
        lines.push(Line::from(
            format!("No messages with {} yet.", one_line(&chat.contact)).dim(),
        ));
    }
    let height = usize::from(area.height);
    let newest_top = lines.len().saturating_sub(height);
    let top = newest_top.saturating_sub(chat.scroll);
    let shown_lines: Vec<Line<'static>> = lines.into_iter().skip(top).take(height).collect();
    frame.render_widget(Paragraph::new(shown_lines), area);
}

/// The lines of one message: a header (who, when, its delivery), its text wrapped at `width`,
/// its files.
fn entry_lines(chat: &Chat, e: &Entry, width: usize, out: &mut Vec<Line<'static>>) {
    let when = short_time(&e.at);
    let mut header = if e.mine {
        vec![Span::from(format!("{when} you")).bold()]
    } else {
        vec![
            Span::from(format!("{when} {}", one_line(&chat.contact)))
                .bold()
                .cyan(),
        ]
    };
    if let Some((state, error)) = &e.state {
        let (text, style) = match state {
            OutboxState::Queued => ("queued".to_owned(), Style::new().yellow()),
            OutboxState::Waiting => (
                "waiting for a one-time key".to_owned(),
                Style::new().yellow(),
            ),
            OutboxState::Delivered => ("delivered".to_owned(), Style::new().green()),
            OutboxState::Failed => (
                match error {
                    Some(error) => format!("failed: {}", one_line(error)),
                    None => "failed".to_owned(),
                },
                Style::new().red(),
            ),
        };
        header.push(Span::from(" · "));
        header.push(Span::styled(text, style));
    }
    if let Some(subject) = &e.subject {
        header.push(Span::from(format!(" · {}", one_line(subject))).italic());
    }
    out.push(Line::from(header));
    if e.redacted {
        out.push(Line::from("  (redacted)".dim()));
    } else {
        for line in shown(&e.body).split('\n') {
            for piece in wrap(line, width.saturating_sub(2).max(1)) {
                out.push(Line::from(format!("  {piece}")));
            }
        }
    }
    for f in &e.files {
        let how = if e.mine {
            if f.complete() {
                "taken by the recipient".to_owned()
            } else {
                "not taken yet".to_owned()
            }
        } else if f.complete() {
            "complete: /save to keep it".to_owned()
        } else {
            format!("{}/{} chunks", f.done, f.total)
        };
        out.push(Line::from(
            format!("  [file] {} ({} bytes) {how}", one_line(&f.name), f.size).dim(),
        ));
    }
}

/// `2026-12-06T17:49:45.123Z` as `12-06 17:49`.
fn short_time(at: &str) -> String {
    match (at.get(5..10), at.get(11..16)) {
        (Some(day), Some(time)) => format!("{day} {time}"),
        _ => one_line(at),
    }
}

/// `text` cut into pieces at most `width` columns wide.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut piece = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width && !piece.is_empty() {
            out.push(std::mem::take(&mut piece));
            used = 0;
        }
        piece.push(c);
        used += w;
    }
    out.push(piece);
    out
}

fn render_editor(frame: &mut Frame<'_>, chat: &Chat, area: Rect) {
    let block = Block::new()
        .borders(Borders::TOP | Borders::BOTTOM)
        .title(" message ");
    let inner = block.inner(area);
    let text = chat.editor.text.replace('\t', " ");
    // The cursor's line and column; the view keeps it in sight.
    let before: String = text.chars().take(chat.editor.cursor).collect();
    let row = before.matches('\n').count() as u16;
    let column = before.rsplit('\n').next().map_or(0, |l| {
        l.chars().map(|c| c.width().unwrap_or(0)).sum::<usize>()
    }) as u16;
    let skip = row.saturating_sub(inner.height.saturating_sub(1));
    let lines: Vec<Line<'static>> = text.split('\n').map(|l| Line::from(one_line(l))).collect();
    frame.render_widget(
        Paragraph::new(lines)
            .block(block)
            .scroll((skip, column.saturating_sub(inner.width.saturating_sub(1)))),
        area,
    );
    frame.set_cursor_position(Position::new(
        inner.x + column.min(inner.width.saturating_sub(1)),
        inner.y + (row - skip).min(inner.height.saturating_sub(1)),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    #[test]
    fn wrapping_counts_columns_and_keeps_every_char() {
        assert_eq!(wrap("abcdef", 4), ["abcd", "ef"]);
        assert_eq!(wrap("", 4), [""]);
        // Wide characters take two columns.
        assert_eq!(wrap("日本語です", 4), ["日本", "語で", "す"]);
        assert_eq!(short_time("2026-12-06T17:49:45.123Z"), "12-06 17:49");
    }

    #[test]
    fn a_peer_escape_is_drawn_as_text_and_the_newest_line_is_at_the_bottom() {
        let said = serde_json::from_value(serde_json::json!({
            "kind": "received", "id": "m1", "from": "bob", "from_peer_id": "P",
            "sent_at": "2026-12-06T10:00:00.000Z", "received_at": "2026-12-06T10:00:01.000Z",
            "subject": null, "labels": [], "body": "one\u{1b}[2Jtwo\nlast line",
            "attachments": [],
        }))
        .expect("said");
        let chat = Chat::new("bob".into(), "P".into(), vec![said]);
        let mut terminal = Terminal::new(TestBackend::new(40, 12)).expect("terminal");
        terminal.draw(|f| render(f, &chat)).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        let rows: Vec<String> = (0..12)
            .map(|y| {
                (0..40)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect()
            })
            .collect();
        let text = rows.join("\n");
        assert!(text.contains(r"one\u{1b}[2Jtwo"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        let last = rows
            .iter()
            .rposition(|r| r.contains("last line"))
            .expect("shown");
        let status = rows
            .iter()
            .position(|r| r.starts_with("bob ·"))
            .expect("status");
        assert!(last < status, "{text}");
    }
}
