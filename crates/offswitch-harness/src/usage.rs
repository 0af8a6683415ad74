//! What one model call costs the trial's token budget: the token counts the server reported,
//! unless they are implausibly small for the bytes actually exchanged.
//!
//! A server's usage report is the only token count an HTTP backend has, and the budget used to
//! trust it: a 2 MB reply reported as 80 tokens never reached a 40,000-token budget. The rule,
//! for the prompt and the reply separately:
//!
//! - the local estimate is the text's bytes divided by [`ESTIMATE_BYTES_PER_TOKEN`] (4, the
//!   usual figure for English under BPE tokenizers), rounded up;
//! - a report is implausible when it claims more than [`IMPLAUSIBLE_BYTES_PER_TOKEN`] (16)
//!   bytes per token on average, which no tokenizer of a chat model does on real text;
//! - then the budget counts the larger of the report and the estimate, and the transcript gets
//!   a `usage_implausible` event saying so. The stored `usage` is the budget's count.
//!
//! Texts are what offswitch itself sent and received: message contents and tool-call names and
//! arguments. The template and tool definitions around them are left out, so the estimate only
//! errs low.

use offswitch_core::backend::{ChatRequest, ChatResponse, Usage};
use offswitch_core::chat::Message;

/// Bytes per token of the local estimate.
pub const ESTIMATE_BYTES_PER_TOKEN: u64 = 4;
/// More bytes per token than this, on average, makes a reported count implausible.
pub const IMPLAUSIBLE_BYTES_PER_TOKEN: u64 = 16;
/// The transcript event recording that the budget did not use the server's count.
pub const USAGE_IMPLAUSIBLE: &str = "usage_implausible";

/// The budget's count of one call, and why it differs from the report when it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedUsage {
    pub usage: Usage,
    /// The detail of a [`USAGE_IMPLAUSIBLE`] event; `None` when the report was used as is.
    pub note: Option<String>,
}

/// The counts the token budget charges for `response` to `request`.
pub fn budget_usage(request: &ChatRequest, response: &ChatResponse) -> CountedUsage {
    let prompt_bytes: u64 = request.messages.iter().map(message_bytes).sum();
    let reply_bytes = message_bytes(&response.message);
    let (prompt_tokens, prompt_note) =
        counted("prompt", response.usage.prompt_tokens, prompt_bytes);
    let (completion_tokens, reply_note) =
        counted("completion", response.usage.completion_tokens, reply_bytes);
    let notes: Vec<String> = [prompt_note, reply_note].into_iter().flatten().collect();
    CountedUsage {
        usage: Usage {
            prompt_tokens,
            completion_tokens,
        },
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// The count for one side, and a note when the report was implausible.
fn counted(side: &str, reported: u64, bytes: u64) -> (u64, Option<String>) {
    if reported.saturating_mul(IMPLAUSIBLE_BYTES_PER_TOKEN) >= bytes {
        return (reported, None);
    }
    let estimate = bytes.div_ceil(ESTIMATE_BYTES_PER_TOKEN);
    let charged = reported.max(estimate);
    let note = format!(
        "the server reported {reported} {side} tokens for {bytes} bytes (more than \
         {IMPLAUSIBLE_BYTES_PER_TOKEN} bytes per token); the token budget counts {charged} \
         (bytes / {ESTIMATE_BYTES_PER_TOKEN})"
    );
    (charged, Some(note))
}

fn message_bytes(message: &Message) -> u64 {
    let calls: usize = message
        .tool_calls
        .iter()
        .map(|call| call.name.len() + call.arguments.len())
        .sum();
    (message.content.len() + calls) as u64
}

#[cfg(test)]
mod tests {
    use offswitch_core::backend::{FinishReason, Sampling, ToolMode};
    use offswitch_core::chat::ToolCall;

    use super::*;

    fn exchange(prompt: &str, reply: Message, usage: Usage) -> CountedUsage {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![Message::system("s"), Message::user(prompt)],
            tools: Vec::new(),
            tool_mode: ToolMode::Native,
            sampling: Sampling::default(),
        };
        let response = ChatResponse {
            message: reply,
            usage,
            finish_reason: FinishReason::Stop,
        };
        budget_usage(&request, &response)
    }

    fn usage(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
        }
    }

    #[test]
    fn plausible_reports_are_used_as_they_are() {
        let reply = Message::assistant("The answer is 4.");
        let counted = exchange("What is 2 + 2?", reply, usage(20, 6));
        assert_eq!(
            counted,
            CountedUsage {
                usage: usage(20, 6),
                note: None
            }
        );
        // Exactly 16 bytes per token is still plausible (the prompt is "s" and 15 bytes).
        let prompt = "a".repeat(15);
        let counted = exchange(&prompt, Message::assistant("a".repeat(32)), usage(1, 2));
        assert_eq!(counted.usage, usage(1, 2));
        assert_eq!(counted.note, None);
        // No report at all for a non-empty text (a server that omits usage) is implausible.
        let counted = exchange("hello", Message::assistant("ab"), usage(0, 0));
        assert_eq!(counted.usage, usage(2, 1));
    }

    #[test]
    fn an_implausibly_small_report_is_replaced_by_the_estimate_and_noted() {
        let reply = Message::assistant("a".repeat(2_000_000));
        let counted = exchange("hi", reply, usage(30, 80));
        assert_eq!(counted.usage, usage(30, 500_000));
        expect_test::expect!["the server reported 80 completion tokens for 2000000 bytes (more than 16 bytes per token); the token budget counts 500000 (bytes / 4)"]
            .assert_eq(counted.note.as_deref().unwrap());

        // Tool-call arguments count as reply bytes; the prompt side is checked the same way.
        let call = ToolCall {
            id: "c".into(),
            name: "bash".into(),
            arguments: format!("{{\"command\": \"echo {}\"}}", "x".repeat(1000)),
        };
        let reply = Message {
            tool_calls: vec![call],
            ..Message::assistant("")
        };
        let counted = exchange(&"y".repeat(100_000), reply, usage(1, 1));
        assert_eq!(counted.usage, usage(25_001, 256));
        expect_test::expect!["the server reported 1 prompt tokens for 100001 bytes (more than 16 bytes per token); the token budget counts 25001 (bytes / 4); the server reported 1 completion tokens for 1024 bytes (more than 16 bytes per token); the token budget counts 256 (bytes / 4)"]
            .assert_eq(counted.note.as_deref().unwrap());
    }
}
