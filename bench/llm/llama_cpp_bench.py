"""llama.cpp side of bench/llm/bench.sh: the same measurements as offswitch-llm's llm_bench example.

Usage: python3 llama_cpp_bench.py <model.gguf> <prompt file> <decode tokens> <threads>
Prints one JSON line. Prefill is one eval of the whole prompt; decode feeds one greedy token at a time.
"""

import json
import resource
import sys
import time

import llama_cpp
import numpy as np


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    model_path, prompt_path, decode, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    prompt = open(prompt_path, encoding="utf-8").read()
    started = time.perf_counter()
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                          n_batch=2048, n_ubatch=512, verbose=False)
    load_s = time.perf_counter() - started
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    cpu0, started = cpu_seconds(), time.perf_counter()
    llm.eval(tokens)
    prefill_s, prefill_cpu = time.perf_counter() - started, cpu_seconds() - cpu0
    cpu0, started = cpu_seconds(), time.perf_counter()
    for _ in range(decode):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        llm.eval([int(np.argmax(logits))])
    decode_s, decode_cpu = time.perf_counter() - started, cpu_seconds() - cpu0
    print(json.dumps({
        "engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})",
        "threads": threads,
        "load_s": load_s,
        "prompt_tokens": len(tokens),
        "prefill_tok_s": len(tokens) / prefill_s,
        "prefill_cpu_s": prefill_cpu,
        "decode_cpu_s": decode_cpu,
        "decode_tokens": decode,
        "decode_tok_s": decode / decode_s,
    }))


if __name__ == "__main__":
    main()
