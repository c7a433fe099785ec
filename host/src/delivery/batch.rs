//! Cutting a peer's due messages into batches that respect both the message and the byte limit.

use crate::store::DueMessage;

/// Splits `messages` (oldest first) into batches of at most `max_messages` messages and
/// `max_bytes` bytes; a message larger than `max_bytes` travels alone.
pub fn split(
    messages: Vec<DueMessage>,
    max_messages: usize,
    max_bytes: usize,
) -> Vec<Vec<DueMessage>> {
    let mut batches: Vec<Vec<DueMessage>> = Vec::new();
    let mut bytes = 0;
    for message in messages {
        let fits = batches
            .last()
            .is_some_and(|b| b.len() < max_messages && bytes + message.size <= max_bytes);
        if !fits {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += message.size;
        if let Some(last) = batches.last_mut() {
            last.push(message);
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, MessageId};

    fn message(size: usize) -> DueMessage {
        DueMessage {
            id: MessageId::random(),
            envelope: Envelope {
                v: 1,
                sender: vec![],
                enc: vec![],
                ct: vec![],
                otk: None,
            },
            attempts: 0,
            created_at: 0,
            size,
        }
    }

    fn shape(batches: &[Vec<DueMessage>]) -> Vec<usize> {
        batches.iter().map(Vec::len).collect()
    }

    #[test]
    fn splits_by_count_and_by_bytes_keeping_order() {
        let messages: Vec<_> = (0..10).map(|_| message(100)).collect();
        let ids: Vec<_> = messages.iter().map(|m| m.id).collect();
        let batches = split(messages, 4, 10_000);
        assert_eq!(shape(&batches), vec![4, 4, 2]);
        let again: Vec<_> = batches.iter().flatten().map(|m| m.id).collect();
        assert_eq!(again, ids, "order kept");
        assert_eq!(
            shape(&split((0..10).map(|_| message(100)).collect(), 64, 350)),
            vec![3, 3, 3, 1]
        );
    }

    #[test]
    fn an_oversized_message_travels_alone() {
        let batches = split(vec![message(10), message(1_000), message(10)], 64, 100);
        assert_eq!(shape(&batches), vec![1, 1, 1]);
        assert!(split(vec![], 64, 100).is_empty());
    }
}
