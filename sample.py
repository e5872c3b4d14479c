"""
Sample text from a trained run.

  python sample.py --out-dir out/rope_seed1337
  python sample.py --out-dir out/rope_seed1337 --start "ROMEO:" --num-samples 3 --temperature 0.9
  python sample.py --out-dir out/rope_seed1337 --start FILE:prompt.txt

Backslash escapes in --start are interpreted, so --start "\\n" is a single newline (the
default, as in the reference article). Samples are printed and written to <out-dir>/samples.txt.
"""

import argparse
from pathlib import Path

import torch

from common import (DTYPES, ArgumentParser, UserError, Vocab, announce_dtype, autocast, build_model, load_checkpoint,
                    pick_device, positive, resolve_dtype, run_cli, write_text)

SEPARATOR = "\n" + "-" * 40 + "\n"


def load_model(run_dir, device="cpu"):
    """The best checkpoint of a run as (model in eval mode, vocabulary)."""
    ckpt = load_checkpoint(Path(run_dir) / "ckpt.pt", device)
    return build_model(ckpt, device), Vocab(ckpt["vocab"])


def read_prompt(start):
    """--start value -> prompt text: FILE:path reads a file, anything else has its escapes decoded."""
    if start.startswith("FILE:"):
        path = Path(start[len("FILE:"):])
        if not path.is_file():
            raise UserError(f"prompt file {path} not found")
        text = path.read_text(encoding="utf-8")
    else:
        # "\n" typed in a shell arrives as backslash + n; decode escapes but keep non-ASCII as is
        try:
            text = start.encode("latin-1", "backslashreplace").decode("unicode_escape")
        except UnicodeDecodeError:
            raise UserError(f"cannot read the escapes in --start {start!r}; write a lone backslash as \\\\") from None
    if not text:
        raise UserError("the prompt is empty; give at least one character with --start (default: a newline)")
    return text


def sample(model, vocab, prompt, num_samples, max_new_tokens, temperature, top_k, seed, use_cache=False):
    """num_samples continuations of prompt, generated as one batch with a seeded generator
    (model.generate: a sliding window of block_size characters, or with use_cache the KV cache)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([vocab.encode(prompt)], dtype=torch.long, device=device).repeat(num_samples, 1)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator,
                         use_cache=use_cache)
    return [vocab.decode(row.tolist()) for row in out]


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, help="run directory holding ckpt.pt (e.g. out/rope_seed1337)")
    parser.add_argument("--start", default="\n", help='prompt text, or FILE:path (default: "\\n")')
    parser.add_argument("--num-samples", type=positive(int), default=3, help="number of samples (default: 3)")
    parser.add_argument("--max-new-tokens", type=positive(int), default=500, help="characters per sample (default: 500)")
    parser.add_argument("--temperature", type=positive(float), default=0.8,
                        help="<1 sharper, >1 more random (default: 0.8)")
    parser.add_argument("--top-k", type=positive(int), default=None,
                        help="sample only from the k likeliest characters (default: all of them)")
    parser.add_argument("--kv-cache", action="store_true",
                        help="keep keys and values instead of re-reading the context: several times faster, but the"
                             " context is cut back to block_size/2 characters whenever it fills, so it swings between"
                             " block_size/2 and block_size (default: off, every character sees the last block_size)")
    parser.add_argument("--seed", type=int, default=1337, help="random seed (default: 1337)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="auto (bfloat16 autocast on CUDA, float32 elsewhere, whatever the run was trained in),"
                             " float32 or bfloat16 (default: auto)")
    args = parser.parse_args()

    prompt = read_prompt(args.start)
    device = pick_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    announce_dtype(dtype, device)
    model, vocab = load_model(args.out_dir, device)
    with autocast(dtype, device):
        samples = sample(model, vocab, prompt, args.num_samples, args.max_new_tokens, args.temperature, args.top_k,
                         args.seed, args.kv_cache)
    text = SEPARATOR.join(samples)
    print(text)
    write_text(Path(args.out_dir) / "samples.txt", text + "\n")


if __name__ == "__main__":
    run_cli(main)
