"""
Synthetic tasks where position decides: the model must find one thing in its context and repeat it.

  python train.py --task passkey              # train on the passkey task (the CPU model, batch 32)
  python train.py --task copy --pos-encoding alibi

- passkey: filler_a + "#" + ddddd + "#" + filler_b + "=" + ddddd. Five uniform digits (repeats
  allowed) hidden at a depth len(filler_a) / (len(filler_a) + len(filler_b)) of Shakespeare text
  (the train split in training, the val split in evaluation); the model must say them after "=".
- recall: multi-query associative recall as Zoology lays it out (Arora et al. 2023): D pairs of a
  key (a lower-case letter) and its value (a digit; keys and values each all distinct), then noise
  (upper-case letters and digits) in which the D keys are asked again, in random order, each at a
  random even offset. As in Zoology, the value is the query's target but not the next input (noise
  stands there), so no answer shows which values are left: without a lookup, a query is a guess
  among D. (A pilot that did show the values scored 34% by elimination alone; with values that
  repeat, guessing the most frequent one scores 30%.) D = 8; training draws D from 1..8 per example.
  Longer examples spread the same D queries over more noise, so they stand farther from their keys.
  Trained 10,000 steps at batch 32 and lr 1e-3 (records/pilots/recall-10000-steps), a run sits at
  chance until the lookup forms, at a step that varies between seeds at least as much as between
  encodings: RoPE at step 4250, 2000 and 9250 (seeds 1337/1338/1339), FIRE at 5000, 5000 and not
  by step 10,000. So recall misses the positive control at this budget (exact match at 64: RoPE
  100/100/69%, FIRE 100/99/12%), and the task studies' second task is the copy, whose control
  passes in 3 seeds at 6000 steps (study/studies.py).
- copy: a random string of lower-case letters, a separator, the string again (the NoPE study's
  copy task, Kazemnejad et al. 2023). Training draws the string's length from 1..L/2 per example
  (upper-case noise before it fills the window), so that copying is learnt at every distance up to
  L/2 + 1, not at one. Evaluation copies strings of 8, 16, 32, ... letters, each up to L/2, at every
  length L: past the training length a string no longer than training's (a longer context, distances
  seen) is told apart from a longer one (distances never seen).

An example of length L is L + 1 characters: the model reads the first L and predicts the next one
at every position, and only the answer positions are scored (the five digits after "=", each
value after a query key, the repeated string). A unit is what exact match counts: the passkey's
five digits together, each recall query, the whole copied string.
"""

import math
import string
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from common import SPLITS, UserError, digest, load_meta, load_tokens

# tiny Shakespeare's 65 characters, then the nine digits it lacks (it has only "3") and two markers
# it never uses: the tasks' 76 symbols, the same ids for every run whatever data directory it reads
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VOCAB = sorted(set(SHAKESPEARE_CHARS) | set(string.digits) | {"#", "="})
STOI = {c: i for i, c in enumerate(VOCAB)}
DIGITS = np.array([STOI[c] for c in string.digits])
LETTERS = np.array([STOI[c] for c in string.ascii_lowercase])
IGNORE = -100  # F.cross_entropy's ignore_index: a target that is not scored

PASSKEY_DIGITS = 5
RECALL_KEYS = 8  # D
RECALL_NOISE = np.array([STOI[c] for c in string.ascii_uppercase + string.digits])  # between the queries
COPY_SEPARATOR = STOI["="]
COPY_NOISE = np.array([STOI[c] for c in string.ascii_uppercase])  # before a string shorter than L / 2
EVAL_SEED = 20231  # the evaluation set's own generator: the same examples for every run and seed
EVAL_EXAMPLES = 100  # per cell
DEPTHS = tuple(i / 10 for i in range(11))  # the passkey's evaluation depths
COPY_SHORTEST = 8  # the copy is evaluated on strings of 8, 16, 32, ... letters, each up to L / 2


@dataclass
class Examples:
    """A batch of examples of one length L: tokens (N, L + 1); unit (N, L), for every target
    position the index of the answer unit it belongs to, or -1; where (N, units): the depth of the
    passkey or the distance from each recall query back to its key (copy: the string's length);
    answers (N, L): the targets where they are not the next token (recall's values), else None."""
    tokens: torch.Tensor
    unit: torch.Tensor
    where: torch.Tensor
    answers: torch.Tensor | None = None

    def __getitem__(self, rows):
        return Examples(self.tokens[rows], self.unit[rows], self.where[rows],
                        None if self.answers is None else self.answers[rows])

    def targets(self):
        """(N, L): what each position should predict (outside the answers: the next token, unscored)."""
        return self.tokens[:, 1:] if self.answers is None else self.answers

    def inputs_and_targets(self):
        """x (N, L) and y (N, L) with every position outside an answer set to IGNORE."""
        y = self.targets().clone()
        y[self.unit < 0] = IGNORE
        return self.tokens[:, :-1].contiguous(), y


def to_task_ids(corpus_tokens, corpus_chars):
    """The data directory's token ids (its meta.json's chars) as the tasks' ids."""
    missing = sorted(set(corpus_chars) - set(VOCAB))
    if missing:
        raise UserError(f"the tasks' filler is tiny Shakespeare; this corpus has characters they lack: {missing[:5]}")
    table = torch.tensor([STOI[c] for c in corpus_chars])
    return table[corpus_tokens.long()]


def passkey(rng, n, length, filler, depth=None):
    """n passkey examples of `length`; depth None: uniform over the positions a key can take."""
    room = length + 1 - 2 * PASSKEY_DIGITS - 3  # the two fillers' characters together
    if room < 0:
        raise UserError(f"a passkey example needs a length of at least {2 * PASSKEY_DIGITS + 2}, got {length}")
    tokens = torch.empty(n, length + 1, dtype=torch.long)
    unit = torch.full((n, length), -1, dtype=torch.long)
    starts = rng.integers(0, len(filler) - room, n)
    keys = rng.choice(DIGITS, (n, PASSKEY_DIGITS))
    cuts = (rng.integers(0, room + 1, n) if depth is None else np.full(n, round(depth * room)))
    hash_, eq = torch.tensor([STOI["#"]]), torch.tensor([STOI["="]])
    for i in range(n):
        text, key, a = filler[starts[i]:starts[i] + room], torch.from_numpy(keys[i]), cuts[i]
        tokens[i] = torch.cat([text[:a], hash_, key, hash_, text[a:], eq, key])
    unit[:, -PASSKEY_DIGITS:] = 0  # the targets of the last five inputs: the digits after "="
    where = torch.from_numpy(cuts / max(room, 1)).float()[:, None]
    return Examples(tokens, unit, where)


def recall(rng, n, length, keys=RECALL_KEYS, mixed=False):
    """n recall examples of `length`: `keys` key-value pairs, then noise with each key asked again at
    a random even offset after them; mixed: each example draws its own number of pairs from 1..keys
    (its absent units' `where` is NaN)."""
    if length + 1 < 4 * keys:
        raise UserError(f"a recall example with {keys} keys needs a length of at least {4 * keys - 1}, got {length}")
    tokens = torch.from_numpy(rng.choice(RECALL_NOISE, (n, length + 1)))
    unit = torch.full((n, length), -1, dtype=torch.long)
    answers = torch.full((n, length), IGNORE, dtype=torch.long)
    where = torch.full((n, keys), float("nan"))
    counts = rng.integers(1, keys + 1, n) if mixed else np.full(n, keys)
    for i, d in enumerate(counts):
        k, v = rng.choice(LETTERS, d, replace=False), rng.choice(DIGITS, d, replace=False)
        tokens[i, 0:2 * d:2], tokens[i, 1:2 * d:2] = torch.from_numpy(k), torch.from_numpy(v)
        q = 2 * d + 2 * np.sort(rng.choice((length + 1 - 2 * d) // 2, d, replace=False))  # the queries' places
        order = rng.permutation(d)  # which key each one asks
        tokens[i, q] = torch.from_numpy(k[order])  # (the noise after it stays: the value is only the target)
        answers[i, q] = torch.from_numpy(v[order])
        unit[i, q] = torch.arange(d)
        where[i, :d] = torch.from_numpy((q - 2 * order).astype(np.float32))  # query position - key position
    return Examples(tokens, unit, where, answers)


def copy(rng, n, length, mixed=False, size=None):
    """n copy examples of `length`: a random string of `size` letters (default length / 2), the
    separator, the string, upper-case noise before them; mixed: each string's length drawn from
    1..length / 2."""
    if length < 2 or length % 2:
        raise UserError(f"a copy example needs an even length of at least 2, got {length}")
    half = length // 2
    if size is not None and not 1 <= size <= half:
        raise UserError(f"a copy example of length {length} holds strings of 1 to {half} letters, got {size}")
    sizes = rng.integers(1, half + 1, n) if mixed else np.full(n, size or half)
    tokens = torch.from_numpy(rng.choice(COPY_NOISE, (n, length + 1)))
    unit = torch.full((n, length), -1, dtype=torch.long)
    for i, m in enumerate(sizes):
        start = length - 2 * m  # noise before it: the string, "=", the string end the window
        text = torch.from_numpy(rng.choice(LETTERS, m))
        tokens[i, start:] = torch.cat([text, torch.tensor([COPY_SEPARATOR]), text])
        unit[i, start + m:] = 0  # the targets from the separator on: the string again
    return Examples(tokens, unit, torch.from_numpy(sizes.astype(np.float32))[:, None])


def copy_sizes(length):
    """The string lengths the copy is evaluated on at `length`: COPY_SHORTEST and its doublings up to
    length / 2 (a length too short for any: length / 2 alone)."""
    sizes, m = [], COPY_SHORTEST
    while m <= length // 2:
        sizes.append(m)
        m *= 2
    return sizes or [length // 2]


TASKS = ("passkey", "recall", "copy")


def make(task, rng, n, length, filler=None, depth=None, training=False):
    """n examples of a task; training: as training draws them (recall: a mixed number of pairs, copy: of
    string lengths)."""
    if task == "passkey":
        return passkey(rng, n, length, filler, depth)
    if task == "recall":
        return recall(rng, n, length, mixed=training)
    if task == "copy":
        return copy(rng, n, length, mixed=training)
    raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


STREAMS = ("eval", "val", "test", "train")  # the fixed example sets, each from its own generator


def evaluation_set(task, length, filler, examples=EVAL_EXAMPLES, stream="eval"):
    """Fixed examples of a task at one length, from their own seed, never the run's: the passkey at
    each of the 11 depths, the copy at each string length of copy_sizes, `examples` each; recall
    `examples` in all. "eval" is study.retrieval's set (filler: the val split); "val" and "test" are
    the ones training scores and picks its checkpoint by (fillers: the val and the test split), so
    the retrieval set is none of them."""
    rng = np.random.default_rng([EVAL_SEED, TASKS.index(task), length, STREAMS.index(stream)])
    if task == "passkey":
        return [passkey(rng, examples, length, filler, depth) for depth in DEPTHS]
    if task == "copy":
        return [copy(rng, examples, length, size=m) for m in copy_sizes(length)]
    return [make(task, rng, examples, length)]


def unit_correct(logits, examples):
    """(N, units) bool: a unit counts when the argmax at every one of its positions is its target
    (teacher-forced; for exact match the same as greedy decoding, which stops at the first miss)."""
    right = logits.argmax(-1) == examples.targets()
    units = int(examples.unit.max()) + 1
    out = torch.ones(len(right), units, dtype=torch.bool)
    for u in range(units):
        out[:, u] = torch.where(examples.unit == u, right, True).all(1)
    return out


def wilson(successes, trials, z=1.959964):
    """The 95% Wilson score interval of a proportion: (low, high); it stays inside [0, 1] and does
    not collapse at 0 or at 1, where the normal one does."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


class TaskBatches:
    """train.py's data for a task, with Batches' interface: each optimizer step's examples drawn
    from a numpy generator seeded by the run's seed (the same for every encoding), and fixed
    evaluation examples at the training length: val (the passkey at the 11 depths, filler from the
    val split), test (the same construction from its own seed, filler from the test split) and train (as
    many examples made as the others are, recall's with all D pairs, the copy's strings of val's
    lengths, filler from the train split). None of them is study.retrieval's set."""

    def __init__(self, task, data_dir, block_size, batch_size, seed, device):
        if task not in TASKS:
            raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        self.task, self.block_size, self.batch_size, self.device = task, block_size, batch_size, device
        self.filler = {}
        if task == "passkey":
            chars = load_meta(data_dir)["chars"]
            self.filler = {s: to_task_ids(load_tokens(data_dir, s), chars) for s in ("train", "val", "test")}
        self.rng = np.random.default_rng(seed)
        self.sets = {s: evaluation_set(task, block_size, self.filler.get(s), stream=s) for s in ("val", "test")}
        if task == "copy":  # the strings of val's lengths
            self.sets["train"] = evaluation_set(task, block_size, None, stream="train")
        else:
            rng = np.random.default_rng([EVAL_SEED, TASKS.index(task), block_size, STREAMS.index("train")])
            count = sum(len(e.tokens) for e in self.sets["val"])
            self.sets["train"] = [make(task, rng, count, block_size, self.filler.get("train"))]
        # what provenance() fingerprints, as it does the Shakespeare runs' EvalText: the evaluation examples and
        # a sample of what training draws, so that a run trained from another generator is never reused
        drawn = make(task, np.random.default_rng([EVAL_SEED, TASKS.index(task), block_size, len(STREAMS)]), 64,
                     block_size, self.filler.get("train"), training=True)
        fingerprinted = [*(e for s in SPLITS for e in self.sets[s]), drawn]
        tensors = (t for e in fingerprinted for t in (e.tokens, e.targets()))
        self.eval_text = SimpleNamespace(fingerprint=digest(*tensors))

    def _to_device(self, examples):
        x, y = examples.inputs_and_targets()
        return x.to(self.device), y.to(self.device)

    def step_batches(self, micro_steps, rank=0, world_size=1):
        """This rank's micro-batches (x, y) of one optimizer step: all the step's examples are drawn,
        then shared out, so any number of processes sees the same examples."""
        examples = make(self.task, self.rng, micro_steps * self.batch_size, self.block_size, self.filler.get("train"),
                        training=True)
        share = micro_steps // world_size
        size = self.batch_size
        return [self._to_device(examples[i * size:(i + 1) * size]) for i in range(rank * share, (rank + 1) * share)]

    def chunks(self, split, rows=None):
        """The fixed examples of a split, `rows` at a time (default batch_size)."""
        rows = rows or self.batch_size
        for examples in self.sets[split]:
            for i in range(0, len(examples.tokens), rows):
                yield examples[i:i + rows]

    def eval_batches(self, split, rows=None):
        """(x, y) of the split's fixed examples, with only the answers scored."""
        yield from (self._to_device(part) for part in self.chunks(split, rows))

    @torch.inference_mode()
    def evaluate(self, model, autocast, split):
        """(the mean loss over the split's answer characters, the share of its answer units exactly
        right), in one pass."""
        model.eval()
        loss_sum, scored, right, units = 0.0, 0, 0, 0
        for part in self.chunks(split):
            x, y = self._to_device(part)
            with autocast:
                logits, loss = model(x, y)
            n = int((y != IGNORE).sum())
            loss_sum, scored = loss_sum + loss.float().item() * n, scored + n
            correct = unit_correct(logits.float().cpu(), part)
            right, units = right + int(correct.sum()), units + correct.numel()
        model.train()
        return loss_sum / scored, right / units
