"""
Every named study, defined once: its config, variants and seeds, where its report goes, and the
commands that regenerate it. `python -m study NAME` runs them; the Makefile's targets call that.

A command is a module of this package and its flags. Runs land in out/<config name>/ and are
shared between studies (a run asked for twice is trained once, then reused).
"""

from dataclasses import dataclass, field

CPU, MID, GPU = "config/shakespeare_char_cpu.toml", "config/shakespeare_char_mid.toml", "config/shakespeare_char.toml"
SEEDS, MORE_SEEDS = "1337,1338,1339", "1340,1341"  # three seeds; two more where three do not rank a pair
DESIGNS = "rope:nope_every=2,rope:nope_every=4,fire:fire_L=16"  # the RoPE/NoPE hybrids and FIRE from L = 16
SWEEP = "all,sinusoidal:sinusoidal_scale=false," + DESIGNS  # and the seven encodings, sinusoidal without sqrt(d)
ALL = SWEEP + ",rope:rope_fraction=0.5"
ROPE_LR = "rope:learning_rate=0.004:min_lr=0.0004"  # RoPE at its best rate in the sweep
FRACTIONS = ",".join(f"{ROPE_LR}:rope_fraction={p}" for p in (0.25, 0.5, 0.75))
BASES = ",".join(f"{ROPE_LR}:rope_theta={b}" for b in (100, 1000, 100000))
# Why RoPE breaks past 64: the encodings read with the ablations, and the designs current models use instead
BREAK = "rope,rope:rope_fraction=0.25,none,t5,fire," + DESIGNS
ABLATIONS = "log-scale,clamp-32,clamp-63,yarn-no-temperature"
# What the ablations can say, fixed before their numbers existed, and what "repairs" means: study/ablations.py
# (PREDICTIONS, REPAIR, JUDGED_CLAMP), which judges them

# The tasks (tasks.py): the CPU model at batch 32 and lr 1e-3, one number of steps per task for every encoding,
# raised until RoPE and one of ALiBi, T5, FIRE copy >= 95% at 64 (the positive control) with room to hold over
# three seeds. Val exact match of RoPE, seed 1337: the passkey 90% at step 750 of 2000 and 100% at 2000 (its
# record); the copy 99% at step 1250 of 2000. But at 2000 steps ALiBi copies 64% and T5 61% of the strings at
# 64, and at 4000 steps T5 96% (its 32-character strings 87%, too near 95% to count on for three seeds) while
# ALiBi copies no string of 32 at either budget: so the copy trains 6000 steps, whose control the study's own
# runs test (records/pilots/ holds the 2000- and 4000-step runs with their counts). Recall is not a second task:
# at 10,000 steps its lookup forms at a step that varies with the seed, or not within them (exact match at 64: RoPE
# 100/100/69%, FIRE 100/99/12%; records/pilots/recall-10000-steps)
TASK_ENCODINGS = "all," + DESIGNS
# Why RoPE cannot use what lies past its training length (study.mechanism; the predictions in study/ablations.py):
# the passkey runs of RoPE, both hybrids, none and T5 read with every reading that separates the explanations
# (where it applies: none has no distance to clamp) and their far-key attention mass; the windowed hybrid current
# models use (RoPE layers in a sliding window of 32, NoPE layers global: RNoPE-SWA) with NoPE every 2 and every 4
# layers, and RoPE windowed alone (the control without NoPE layers), trained on the passkey and read plainly beside
# RoPE and the plain hybrid, the hybrids also with their NoPE layers' far keys masked (nope-mask); the Shakespeare
# loss read likewise (truncation is the sliding-window row every run gets); the copy task's own runs read likewise
# (all of one run's readings at 64, 128 and 256 together: 15-25 min on one AVX2 core, about 6 on an AVX-512 one),
# and the windowed variants trained on the copy beside RoPE only: the plain hybrid k = 2's seed 1337 was trained on
# another CPU and its checkpoint was gone before it could be read with nope-mask.
# The copy runs cannot be rebuilt from their records on every CPU: retrained on an AVX2 CPU at the recorded thread
# count, the copy study's RoPE seed 1337 differs from its record from step 0 (train loss 4.3154358 against
# 4.3154359; final val loss 0.00023 against 0.00005). So the mechanism study trains its own copy runs, in
# out/mechanism (records/mechanism/), and reads them plainly and with every reading, never against the copy
# study's plain readings; the passkey runs retrained bit-exact and are reused.
MECHANISM_OUT = {"copy": "out/mechanism"}
MECHANISM = ("truncate,mask,mask-sink,rope-mask,count-1,count-8,clamp-16,clamp-32,clamp-48,clamp-56,clamp-63,"
             "offset-2,offset-8,temp-1.5,temp-2")
WINDOWED = "rope:nope_every=2:rope_window=32,rope:nope_every=4:rope_window=32,rope:rope_window=32"
MECHANISM_RUNS = "rope,rope:nope_every=2,rope:nope_every=4,none,t5"
WINDOWED_RUNS = {"passkey": "rope,rope:nope_every=2," + WINDOWED, "copy": "rope," + WINDOWED}
BEST = "learning_rate=0.004:min_lr=0.0004"  # rope_break's best rate for RoPE, both hybrids and T5 (none: 0.002)
LOSS_RUNS = ",".join(f"{v}:{BEST}" for v in ("rope", "rope:nope_every=2", "rope:nope_every=4", "t5", *WINDOWED.split(",")))
LOSS_RUNS += ",none:learning_rate=0.002:min_lr=0.0002"
LOSS_READINGS = "clamp-16,clamp-32,clamp-48,clamp-56,clamp-63,mask,mask-sink,rope-mask"  # on seed 1337 only
RATE_CHECK = ",".join(f"rope:nope_every=2:rope_window=32:learning_rate={r}:min_lr={r / 10:g}" for r in (0.002, 0.004, 0.008))
TASK_STEPS = {"passkey": 2000, "copy": 6000}
# Do the task findings survive a longer training length? Each task and length trains every encoding and seed at
# one budget, chosen on seed 1337 by study.train_length's ladder (plots/train_length/budgets.md, from the pilots in
# records/pilots/). Only the lengths whose runs are all trained are here; the passkey at 128 (budget 4000) joins
# when its runs are, 256 and the copy at 128 once their budgets are decided.
LENGTH_ENCODINGS = "rope,alibi,none,t5,fire,rope:nope_every=2"
LENGTH_BUDGETS = {("passkey", 32): 2000}


def task_budget(task, steps=None):
    """A task's training flags: batch 32 and its steps (default: its budget at 64), the schedule following them."""
    steps = str(steps or TASK_STEPS[task])
    return "--batch-size", "32", "--max-iters", steps, "--lr-decay-iters", steps


@dataclass(frozen=True)
class Study:
    about: str  # one line for `python -m study --help`
    plots_dir: str  # where its report goes
    seeds: str  # the seeds its main command trains ("": it trains nothing)
    main: tuple  # the module that trains and reports, and its flags (--seeds and --plots-dir are added where
    # they are not among them: a main that writes to a folder inside plots_dir names it)
    after: tuple = field(default=())  # more commands that add to plots_dir: (module, flags...), where a flag
    # may be {plots_dir} (or start with it), {seeds}, {first_seed} or {more_seeds} (the seeds after the first)

    def commands(self, seeds=None, jobs=1, plots_dir=None):
        """The commands, each a list of arguments after `python -m`."""
        plots_dir, seeds = plots_dir or self.plots_dir, seeds or self.seeds
        first, *more = seeds.split(",")
        values = {"{seeds}": seeds, "{first_seed}": first, "{more_seeds}": ",".join(more)}

        def command(module, *flags, extra=()):
            # (fine-tunes train one at a time; a lease trains a seed's variants at once)
            jobs_flag = ["--jobs", str(jobs)] if module in ("compare", "sweep") else []
            return [f"study.{module}", *(values.get(a, a.replace("{plots_dir}", plots_dir)) for a in flags), *extra,
                    *jobs_flag]

        main = command(*self.main, extra=[] if "--seeds" in self.main or not self.seeds else ["--seeds", seeds])
        main += [] if "--plots-dir" in self.main else ["--plots-dir", plots_dir]
        return [main] + [command(*step) for step in self.after]


def mechanism_out(task):
    """The --out-dir flag of the mechanism study's runs on `task` (none where they are the task study's)."""
    return ("--out-dir", MECHANISM_OUT[task]) if task in MECHANISM_OUT else ()


def mechanism_task(task):
    """The mechanism study's command on one task: its runs trained as the task study trains them (the
    passkey's reused from it; the copy's its own, in MECHANISM_OUT), read at 64 to 512 plainly and to 256 with
    every reading, with their far-key attention mass, into plots_dir/task."""
    return ("compare", CPU, "--task", task, "--pos-encodings", MECHANISM_RUNS, *task_budget(task), "--extrapolate",
            "--extrapolate-methods", "none", "--ablations", MECHANISM, "--far-mass",
            "--readings-up-to", "4", *mechanism_out(task), "--seeds", "{seeds}", "--plots-dir", "{plots_dir}/" + task)


def windowed_task(task):
    """The mechanism study's windowed variants on one task, beside runs of mechanism_task (WINDOWED_RUNS), read
    plainly and with nope-mask, into plots_dir/windowed (the passkey) or windowed_<task>."""
    return ("compare", CPU, "--task", task, "--pos-encodings", WINDOWED_RUNS[task], *task_budget(task), "--extrapolate",
            "--extrapolate-methods", "none", "--ablations", "nope-mask", *mechanism_out(task), "--seeds", "{seeds}",
            "--plots-dir", "{plots_dir}/windowed" + ("" if task == "passkey" else f"_{task}"))


def length_task(task, length, steps):
    """The train_length study's command for one task and training length: its runs read at 1x to 8x."""
    return ("compare", CPU, "--task", task, "--block-size", str(length), "--pos-encodings",
            f"{LENGTH_ENCODINGS},rope:nope_every=2:rope_window={length // 2}", *task_budget(task, steps),
            "--extrapolate", "--extrapolate-methods", "none,ntk,yarn",
            "--seeds", "{seeds}", "--plots-dir", f"{{plots_dir}}/{task}-L{length}")


# Each length trains its own budget, so what changes between two lengths may come from the steps: a variant also
# trained at one length for another's budget tells the two apart ((task, length, steps): encodings; the passkey at
# 128 trains 4000 steps, twice 64's, and ALiBi's reach past 64 is the finding in question)
STEPS_CHECKS = {("passkey", 64, 4000): "alibi"}


def steps_check(task, length, steps, encodings):
    """The train_length study's command for encodings trained at `length` for `steps` steps (another length's
    budget), read at 1x to 8x. Its flags keep the task's budget at 64 and each variant sets the steps, so that
    they name its runs (alibi-max_iters=4000-lr_decay_iters=4000_seed1337, not the budget's alibi_seed1337)."""
    variants = ",".join(f"{e}:max_iters={steps}:lr_decay_iters={steps}" for e in encodings.split(","))
    return ("compare", CPU, "--task", task, "--block-size", str(length), "--pos-encodings", variants,
            *task_budget(task), "--extrapolate", "--extrapolate-methods", "none", "--seeds", "{seeds}",
            "--plots-dir", f"{{plots_dir}}/{task}-L{length}-{steps}-steps")


LENGTH_TASKS = [length_task(task, length, steps) for (task, length), steps in LENGTH_BUDGETS.items()]
LENGTH_TASKS += [steps_check(*check, encodings) for check, encodings in STEPS_CHECKS.items()]


def task_study(task, what, cells):
    """A study of tasks.py's `task`: every encoding trained on it from scratch at 64, then read to 512."""
    return Study(
        f"the {task} task ({what}): every encoding, the RoPE/NoPE hybrids and FIRE from L = 16 trained from scratch"
        f" at 64, 3 seeds; exact match at 64 to 512 {cells}, RoPE also read with PI, NTK and YaRN, and the ablations;"
        f" then RoPE fine-tuned at 256 for 200 steps with each method, 1 seed, 3 for the two best",
        f"plots/{task}", SEEDS,
        ("compare", CPU, "--task", task, "--pos-encodings", TASK_ENCODINGS, *task_budget(task), "--extrapolate",
         "--extrapolate-methods", "none,linear,ntk,yarn", "--ablations", ABLATIONS),
        (("finetune", CPU, "--task", task, *task_budget(task), "--seeds", "{first_seed}", "--more-seeds", "{more_seeds}",
          "--scratch-seeds", "", "--plots-dir", "{plots_dir}/finetune"),))


STUDIES = {
    "baseline": Study(
        "RoPE, learned and none on the CPU config, 3 seeds, and how each reads past its training length",
        "plots/baseline", SEEDS, ("compare", CPU, "--extrapolate")),
    "encodings": Study(
        "all seven encodings, sinusoidal without its sqrt(d) scale, the RoPE/NoPE hybrids, FIRE from L = 16 and"
        " RoPE rotating half its pairs, 3 seeds (5 where 3 do not rank a pair), the length study, and the biases"
        " T5 and FIRE learned",
        "plots/encodings", SEEDS,
        ("compare", CPU, "--pos-encodings", ALL, "--seeds-if-undecided", MORE_SEEDS, "--extrapolate"),
        (("plot_bias", "--plots-dir", "{plots_dir}"),)),
    "lr_sweep": Study(
        "each encoding's learning rate swept on seed 1337, then 3 seeds at its best rate",
        "plots/lr_sweep", SEEDS, ("sweep", CPU, "--pos-encodings", SWEEP)),
    "rope_study": Study(
        "RoPE at its best rate with 25/50/75% of its pairs rotating (p-RoPE) and with the base 100, 1000,"
        " 100000, one seed, and the length study",
        "plots/rope_study", "1337",
        ("compare", CPU, "--pos-encodings", f"{ROPE_LR},{FRACTIONS},{BASES}", "--extrapolate",
         "--extrapolate-methods", "none,ntk"),
        (("plot_rope", "--bases", "100,1000,10000,100000", "--plots-dir", "{plots_dir}"),)),
    "finetune": Study(
        "short fine-tunes of the RoPE runs at 4x their length (PI, NTK, YaRN, plain), 1 seed, then 3 for the"
        " two best, and RoPE trained from scratch at 256",
        "plots/finetune", "1337", ("finetune", CPU, "--more-seeds", "1338,1339", "--scratch-seeds", "1337")),
    "mid": Study(
        "RoPE, learned and none on the mid CPU config (4.7M parameters, 18 passes over the data, long enough for"
        " the val loss to turn up; about 80 minutes a run), 1 seed",
        "plots/mid", "1337", ("compare", MID)),
    "rope_break": Study(
        "why RoPE breaks past its training length: RoPE, 25% p-RoPE, none and T5 read with log scaling, a"
        " distance clamp at 32 and 63 and YaRN without temperature, beside RoPE/NoPE hybrids and FIRE with L"
        " starting at 16 (and at 512); each swept on seed 1337, then 3 seeds at its best rate",
        "plots/rope_break", SEEDS,
        ("sweep", CPU, "--pos-encodings", BREAK, "--extrapolate", "--extrapolate-methods", "none,yarn",
         "--ablations", ABLATIONS),
        (("ablations", "--plots-dir", "{plots_dir}"),
         ("plot_bias", "--best-of", "{plots_dir}/lr_sweep.json", "--plots-dir", "{plots_dir}"))),
    "passkey": task_study("passkey", "five digits hidden at a depth of Shakespeare text, said after '='",
                          "by depth"),
    "copy": task_study("copy", "a random string of letters, a separator, the string again", "by length"),
    "mechanism": Study(
        "why RoPE cannot use what lies past its training length: the passkey runs of RoPE, both hybrids, none and"
        " T5 read with the readings that separate the explanations (truncation, far keys masked, the clamp at 16-63,"
        " count controls, logit offsets, a temperature) and their far-key attention mass, beside the windowed hybrid"
        " (RoPE layers in a window of 32, NoPE every 2 or 4 layers) and RoPE windowed alone; the copy task's own"
        " runs read likewise, and the windowed variants trained on it; the Shakespeare loss read likewise (1 seed)"
        " and the windowed variants' val loss; 3 seeds",
        "plots/mechanism", SEEDS, mechanism_task("passkey"),
        (windowed_task("passkey"),
         ("compare", CPU, "--pos-encodings", LOSS_RUNS, "--seeds", "{seeds}", "--plots-dir", "{plots_dir}/loss"),
         ("compare", CPU, "--pos-encodings", LOSS_RUNS, "--seeds", "{first_seed}", "--extrapolate",
          "--extrapolate-methods", "none", "--ablations", LOSS_READINGS, "--plots-dir", "{plots_dir}/loss_readings"),
         ("compare", CPU, "--pos-encodings", RATE_CHECK, "--seeds", "{first_seed}", "--plots-dir", "{plots_dir}/rates"),
         mechanism_task("copy"),
         windowed_task("copy"),
         ("mechanism", "--plots-dir", "{plots_dir}"))),
    "train_length": Study(
        "do the task findings survive a longer training length? each task trained at other lengths (the passkey at"
        " 32 so far) at the budget its seed-1337 pilots chose, 3 seeds, read at 1x to 8x, by absolute length and"
        " by ratio, with each run's effective context; ALiBi also at 64 for 4000 steps, to tell the steps from the"
        " length",
        "plots/train_length", SEEDS, LENGTH_TASKS[0],
        (*LENGTH_TASKS[1:], ("train_length", "--plots-dir", "{plots_dir}"))),
    "summary": Study(
        "the README's summary figure and its numbers, from committed files only (the lr_sweep and passkey studies'"
        " records and results); trains nothing",
        "plots/summary", "", ("summary",)),
    "gpu": Study(
        "RoPE, learned and none at nanoGPT's GPU setting (10.7M parameters, block 256, dropout 0.2, 5000 steps),"
        " 3 seeds, seed by seed with a timing probe first, within a 520-second budget (study.lease)",
        "plots/gpu", SEEDS, ("lease", GPU, "--device", "cuda", "--budget-s", "520")),
}
