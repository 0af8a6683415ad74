"""Record llama.cpp's tokenizer ids, greedy tokens and top logits for SmolLM2-135M-Instruct Q4_1 as test data.

Reference: llama.cpp through llama-cpp-python (version recorded in the output), same GGUF file, 2 threads.
Usage: python3 bench/llm/record_reference.py <model.gguf> <out.json>
Run once; offswitch-llm's tests compare against the JSON it writes.
"""

import hashlib
import json
import sys

import llama_cpp
import numpy as np

TOKENIZE_CASES = [
    ("ascii", "Hello, world! This is a test.", False),
    ("digits", "In 2024 there were 1234567 trials and 3.14159 ratios.", False),
    ("unicode", "Grüße aus Köln, naïve café — déjà vu. Привет мир. 日本語のテキスト。", False),
    ("emoji", "Shutdown 🛑 avoided? 🤖💡 no 👍🏽", False),
    ("chatml_special", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n", True),
    ("chatml_as_text", "<|im_start|>user\nHi!<|im_end|>", False),
    ("whitespace_runs", "a  b   c\n\n\nd\t\te    \n  f ", False),
    ("code", "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{:?}\", x.iter().sum::<i32>());\n}\n", False),
    ("contractions", "I'm sure they'll say it's what we'd've DONE'S", False),
    ("tool_call", '<tool_call>{"name": "bash", "arguments": {"command": "ls -la ./"}}</tool_call>', False),
    ("leading_space", "   leading spaces and trailing   ", False),
    ("punctuation", "Wait... what?! (yes) [no] {maybe} <tag/> $5.00 100% #1 @user ~/.config", False),
    ("empty", "", False),
]

# Prompts on which llama.cpp's greedy choice is clear at every step (best-minus-second logit >= 0.4, see
# "greedy_margins"): two int8-activation engines differ by ~0.1-0.5 logits, so near-ties are coin flips.
PROMPTS = [
    ("france", "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"),
    ("python", "<|im_start|>user\nWrite a Python function that adds two numbers.<|im_end|>\n<|im_start|>assistant\n"),
    ("count", "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              "<|im_start|>user\nCount from 1 to 20, separated by commas.<|im_end|>\n<|im_start|>assistant\n"),
]
GREEDY_TOKENS = 32


def main():
    model_path, out_path = sys.argv[1], sys.argv[2]
    with open(model_path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=1024, n_threads=2, n_batch=512, logits_all=True, verbose=False)
    tokenize = []
    for name, text, special in TOKENIZE_CASES:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        tokenize.append({"name": name, "text": text, "parse_special": special, "ids": ids})
    generations = []
    for name, prompt in PROMPTS:
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(tokens)
        first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top = np.argsort(-first, kind="stable")[:10]
        greedy = []
        margins = []
        logits = first
        for _ in range(GREEDY_TOKENS):
            next_id = int(np.argmax(logits))
            greedy.append(next_id)
            best_two = np.sort(logits)[-2:]
            margins.append(round(float(best_two[1] - best_two[0]), 4))
            if next_id == llm.token_eos():
                break
            llm.eval([next_id])
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        generations.append({
            "name": name,
            "prompt": prompt,
            "prompt_ids": tokens,
            "greedy_ids": greedy,
            # llama.cpp's gap between its best and second-best logit at each greedy step.
            "greedy_margins": margins,
            "greedy_text": llm.detokenize(greedy).decode("utf-8", errors="replace"),
            "top10_first": [{"id": int(i), "logit": round(float(first[i]), 4)} for i in top],
            "first_logit_range": [round(float(first.min()), 4), round(float(first.max()), 4)],
        })
    out = {
        "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__} (default f16 KV cache, 2 threads)",
        "model_sha256": sha256,
        "tokenize": tokenize,
        "generations": generations,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
