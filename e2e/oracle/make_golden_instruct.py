#!/usr/bin/env python3
"""Writes a golden file for an instruct model from llama.cpp (llama-cpp-python).

Usage: make_golden_instruct.py MODEL.gguf OUT.json
Needs: what make_golden.py needs (llama-cpp-python 0.3.36, gguf, numpy).

Records the token ids of make_golden's texts; conversations rendered with
the model's own chat template (by llama-cpp-python's Jinja2 formatter, as
its chat API renders them) and their token ids; and llama.cpp's greedy
answer to each, with its five best logits at every step. There is no exact
float64 reference here (make_golden.py has one for Gemma 3 only): the tests
accept a different token only where llama.cpp's own top two nearly tie.
"""
import hashlib
import json
import sys

from gguf import GGUFReader
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from make_golden import TEXTS, greedy, top5

CHATS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Say hello in three words."}],
    [{"role": "user", "content": "Write a Python function that adds two numbers."}],
    [{"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "And another one?"}],
]


def field(reader, key):
    f = reader.fields[key]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def main():
    model, out = sys.argv[1], sys.argv[2]
    sha = hashlib.sha256(open(model, "rb").read()).hexdigest()
    reader = GGUFReader(model)
    template = field(reader, "tokenizer.chat_template")
    llm = Llama(model_path=model, n_ctx=2048, n_threads=2, n_batch=512, logits_all=True, verbose=False)
    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8") if llm.token_bos() >= 0 else ""
    eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8")
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
    tokenize = [{"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)} for t in TEXTS]
    chats = []
    for messages in CHATS:
        prompt = formatter(messages=messages).prompt
        prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        ids = greedy(llm, prompt_ids, 24)
        text = llm.detokenize(ids).decode("utf-8", errors="replace")
        top = top5(llm, prompt_ids, ids)
        chats.append({"messages": messages, "prompt": prompt, "prompt_ids": prompt_ids, "ids": ids, "text": text, "top": top})
        print(f"{len(prompt_ids):4d} prompt tokens -> {text!r}", file=sys.stderr)
    with open(out, "w") as f:
        json.dump({"model_sha256": sha, "llama_cpp_python": __import__("llama_cpp").__version__,
                   "tokenize": tokenize, "chats": chats}, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
