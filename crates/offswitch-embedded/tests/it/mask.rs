//! The token mask on the real vocabulary agrees with walking each token through the grammar.

use offswitch_core::{ToolParam, ToolSpec};
use offswitch_embedded::grammar::{TokenTable, ToolGrammar};
use offswitch_llm::{LoadOptions, Model};

#[test]
fn mask_agrees_with_walking_on_the_real_vocabulary() {
    let Some(path) = crate::model_path("mask_agrees_with_walking_on_the_real_vocabulary") else {
        return;
    };
    let model = Model::load(&path, &LoadOptions { threads: 1 }).unwrap();
    let tokenizer = model.tokenizer();
    let ids = 0..tokenizer.vocab_size() as u32;
    let table = TokenTable::new(
        ids.clone()
            .map(|id| tokenizer.token_bytes(id).to_vec())
            .collect(),
        ids.map(|id| tokenizer.is_control(id)).collect(),
        tokenizer.token_id("<|im_end|>").unwrap(),
    );
    let tools = vec![ToolSpec {
        name: "submit".into(),
        description: String::new(),
        params: vec![ToolParam {
            name: "answer".into(),
            description: String::new(),
            required: true,
        }],
    }];
    let grammar = ToolGrammar::new(&tools, 64);
    let head = "<tool_call>\n{\"name\": \"submit\", \"arguments\": {\"answer\": \"";
    let mut allowed = vec![false; table.len()];
    for value in [
        "",
        "1028",
        "1028}}</tool_call",
        "a <tool",
        "x\\",
        "é",
        "0123456789012345678901234567890123456789012345678901234567890",
    ] {
        let state = grammar
            .advance_bytes(grammar.start(), format!("{head}{value}").as_bytes())
            .unwrap_or_else(|| panic!("{value:?} is a valid prefix"));
        table.mask(&grammar, state, &mut allowed);
        let mut count = 0;
        for token in 0..table.len() as u32 {
            let bytes = table.bytes(token);
            let walks = !bytes.is_empty()
                && !tokenizer.is_control(token)
                && grammar.advance_bytes(state, bytes).is_some();
            assert_eq!(
                allowed[token as usize],
                walks,
                "after {value:?}: token {token} {:?}",
                String::from_utf8_lossy(bytes)
            );
            count += usize::from(walks);
        }
        assert!(count > 0, "after {value:?} no token is allowed");
        let started = std::time::Instant::now();
        for _ in 0..20 {
            table.mask(&grammar, state, &mut allowed);
        }
        eprintln!("mask after {value:?}: {:?} each", started.elapsed() / 20);
    }
}
