//! Chat templates: turning a conversation into the prompt text a model was trained on.
//!
//! Only ChatML (the Llama/SmolLM/Qwen family) is known. The family is detected from the GGUF's
//! `tokenizer.chat_template` metadata rather than assumed, so a model with another template is
//! refused with a clear error instead of being fed a prompt format it never saw.

use offswitch_core::{Message, Role};

/// A chat template the embedded backend can render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n`, then `<|im_start|>assistant\n` to generate.
    ChatMl {
        /// The system prompt the template inserts when the conversation has none.
        default_system: Option<String>,
    },
}

/// Why a template could not be recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateProblem {
    Missing,
    Unknown(String),
}

/// The token text that ends an assistant turn in ChatML.
pub const CHATML_END: &str = "<|im_end|>";

impl ChatTemplate {
    /// Recognise the family of a Jinja chat template from the model's metadata.
    pub fn detect(template: Option<&str>) -> Result<ChatTemplate, TemplateProblem> {
        let template = template.ok_or(TemplateProblem::Missing)?;
        if template.contains("<|im_start|>") && template.contains("<|im_end|>") {
            return Ok(ChatTemplate::ChatMl {
                default_system: chatml_default_system(template),
            });
        }
        Err(TemplateProblem::Unknown(
            template.chars().take(200).collect(),
        ))
    }

    /// The prompt for `messages`, ending with the header of the assistant turn to generate.
    /// Tool calls and tool results are rendered as text tags (the embedded model has no
    /// native tool calling).
    pub fn render(&self, messages: &[Message]) -> String {
        self.render_segments(messages)
            .into_iter()
            .map(|segment| segment.text)
            .collect()
    }

    /// [`ChatTemplate::render`] split into the template's own markers (to be tokenized as
    /// special tokens) and everything else (tokenized as plain text, so that a message that
    /// contains `<|im_end|>` cannot end its turn early).
    pub fn render_segments(&self, messages: &[Message]) -> Vec<Segment> {
        let ChatTemplate::ChatMl { default_system } = self;
        let messages = offswitch_core::tags::to_text_messages(messages);
        let mut out = Vec::new();
        if messages.first().is_none_or(|m| m.role != Role::System)
            && let Some(system) = default_system
        {
            push_turn(&mut out, "system", system);
        }
        for message in &messages {
            let role = match message.role {
                Role::System => "system",
                Role::User | Role::Tool => "user",
                Role::Assistant => "assistant",
            };
            push_turn(&mut out, role, &message.content);
        }
        out.push(Segment::special("<|im_start|>"));
        out.push(Segment::text("assistant\n"));
        out
    }

    /// The text of the token that ends the assistant's turn.
    pub fn end_of_turn(&self) -> &'static str {
        CHATML_END
    }
}

/// A piece of a rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    /// A marker of the template, to be tokenized as a special token.
    pub special: bool,
}

impl Segment {
    fn special(text: &str) -> Segment {
        Segment {
            text: text.to_owned(),
            special: true,
        }
    }
    fn text(text: &str) -> Segment {
        Segment {
            text: text.to_owned(),
            special: false,
        }
    }
}

fn push_turn(out: &mut Vec<Segment>, role: &str, content: &str) {
    out.push(Segment::special("<|im_start|>"));
    out.push(Segment::text(&format!("{role}\n{content}")));
    out.push(Segment::special(CHATML_END));
    out.push(Segment::text("\n"));
}

/// The default system prompt of a ChatML template, if it inserts one when the conversation
/// starts without a system message (SmolLM2 does: "You are a helpful AI assistant named SmolLM").
fn chatml_default_system(template: &str) -> Option<String> {
    if !template.contains("!= 'system'") && !template.contains("!= \"system\"") {
        return None;
    }
    let marker = "<|im_start|>system";
    let start = template.find(marker)? + marker.len();
    let rest = &template[start..];
    // The newline after the role is either a real newline or a Jinja `\n` escape.
    let rest = rest
        .strip_prefix('\n')
        .or_else(|| rest.strip_prefix("\\n"))?;
    let end = rest.find(CHATML_END)?;
    let system = rest[..end].replace("\\n", "\n");
    // A template that splices in a variable here has no fixed default to extract.
    (!system.contains("{{") && !system.contains("{%")).then_some(system)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_default_system_only_when_missing() {
        let template = ChatTemplate::detect(Some(SMOLLM2)).unwrap();
        expect![[r#"
            <|im_start|>system
            You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
            <|im_start|>user
            hi<|im_end|>
            <|im_start|>assistant
        "#]]
        .assert_eq(&template.render(&[Message::user("hi")]));
        expect![[r#"
            <|im_start|>system
            Be brief.<|im_end|>
            <|im_start|>user
            hi<|im_end|>
            <|im_start|>assistant
            hello<|im_end|>
            <|im_start|>user
            <tool_result>
            ok
            </tool_result><|im_end|>
            <|im_start|>assistant
        "#]]
        .assert_eq(&template.render(&[
            Message::system("Be brief."),
            Message::user("hi"),
            Message::assistant("hello"),
            Message::tool_result("c", "ok"),
        ]));
    }

    #[test]
    fn refuses_unknown_templates() {
        assert_eq!(ChatTemplate::detect(None), Err(TemplateProblem::Missing));
        assert!(matches!(
            ChatTemplate::detect(Some("[INST] {{ message }} [/INST]")),
            Err(TemplateProblem::Unknown(_))
        ));
    }
}
