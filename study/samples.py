"""
Samples of a study's runs, as the reference write-up draws them (20 of 500 characters from a
single newline), and how many of their words are real: words of the train split.
"""

from pathlib import Path

from tqdm import tqdm

from common import announce_dtype, autocast, load_meta, load_tokens, read_json, write_json
from sample import load_model, sample
from study.analysis import mean_std, real_word_shares, words
from study.runs import run_dtype

SAMPLING = dict(prompt="\n", num_samples=20, temperature=0.8, top_k=None)  # the article's prompt


def run_samples(run_dir, seed, tokens, device="cpu"):
    """SAMPLING's samples of `tokens` characters from a run's best checkpoint (the sliding-window
    sampler), without the prompt; kept in the run's samples.json and reused while SAMPLING holds.
    Off the CPU (a GPU's numbers differ in the last bits) the device is part of the settings."""
    dtype = run_dtype(run_dir)
    settings = {**SAMPLING, "max_new_tokens": tokens, "seed": seed, **({"dtype": dtype} if dtype != "float32" else {}),
                **({"device": device.split(":")[0]} if device != "cpu" else {})}
    path = Path(run_dir) / "samples.json"
    if path.exists():
        kept = read_json(path, "delete it")
        if kept.get("settings") == settings:
            return kept["samples"]
    model, vocab = load_model(run_dir, device)
    announce_dtype(dtype, device)
    with autocast(dtype, device):  # sampled in the precision it was trained in
        texts = sample(model, vocab, SAMPLING["prompt"], SAMPLING["num_samples"], tokens, SAMPLING["temperature"],
                       SAMPLING["top_k"], seed)
    texts = [t[len(SAMPLING["prompt"]):] for t in texts]  # the generated part only
    write_json(path, {"settings": settings, "samples": texts})
    return texts


def train_vocabulary(data_dir):
    """The set of lower-cased words of the train split (analysis.words)."""
    chars = load_meta(data_dir)["chars"]
    return set(words("".join(chars[i] for i in load_tokens(data_dir, "train").tolist())))


def collect_samples(study, tokens, data_dir, progress=True, device="cpu"):
    """Every run's samples (run_samples: sampled once, then kept) and their real-word shares against
    the train split in data_dir (the study's own: a run's recorded data_dir may lie elsewhere)."""
    vocabulary = train_vocabulary(data_dir)
    texts = {i: run_samples(run_dir, study.configs[i]["seed"], tokens, device)
             for i, run_dir in enumerate(tqdm(study.run_dirs, desc="samples", disable=not progress, dynamic_ncols=True))}
    return {"texts": texts, "shares": {i: real_word_shares(t, vocabulary) for i, t in texts.items()},
            "vocabulary": len(vocabulary)}


def samples_report(study, samples, tokens):
    """samples.md (one sample per variant, its first seed) and a markdown table of real-word shares,
    from collect_samples."""
    texts, metrics = samples["texts"], samples["shares"]
    n = SAMPLING["num_samples"]
    lines = ["| variant | real words, all | real words, 5+ letters | words per run | seeds |", "|---|---:|---:|---:|---:|"]
    parts = [f"# One sample per variant ({tokens} characters from a single newline; temperature "
             f"{SAMPLING['temperature']}, no top-k, sliding {study.configs[0]['block_size']}-character context)\n"]
    for key, idx in study.groups.items():
        col = lambda field: mean_std([metrics[i][field] for i in idx], "{:.3f}")  # noqa: E731
        lines.append(f"| {study.labels[key]} | {col('real')} | {col('real_long')} "
                     f"| {mean_std([metrics[i]['words'] for i in idx], '{:.0f}')} | {len(idx)} |")
        first = idx[0]
        parts.append(f"## {study.labels[key]} (seed {study.configs[first]['seed']})\n\n"
                     f"```text\n{texts[first][0].strip()}\n```\n")
    note = (f"Share of generated words found in the train split's vocabulary ({samples['vocabulary']:,} words; a word is"
            f" a maximal run of letters and apostrophes, lower-cased; every occurrence counts). {n} samples of"
            f" {tokens} characters per run from its best checkpoint, from a single newline, temperature"
            f" {SAMPLING['temperature']}, no top-k, each character predicted from the last block_size characters;"
            f" mean ± std over seeds.")
    return "\n".join(lines) + "\n\n" + note, "\n".join(parts)
