"""A run's assembly: everything `charrnn train` (and `charrnn lr-find`) settles before the first
step. FILE resolved to a path (catalogue names fetched or built), the options checked (or, on
--resume, the checkpoint's own with the flags given again), the checkpoints of --resume and
--init-from read and held to the flags, the run directory claimed (charrnn/rundir.py), the model
sized to a time budget (charrnn/budget.py), and the `Trainer` (charrnn/train.py) made.

The loop itself is not imported here at module level: lr-find and the budget probe use these
pieces without loading it.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from charrnn import checkpoint as ckpt
from charrnn.corpus import Corpus, split
from charrnn.errors import InputError
from charrnn.optim import new_optimizer, new_optimizer_slots
from charrnn.options import LN_BETA2, LN_WINDOW, NORM_DEFAULT, TRAIN_OPTION_NAMES, TrainOptions, default_rate

if TYPE_CHECKING:
    from charrnn.train import Trainer


def resume_options(train_args: dict, overrides: dict) -> TrainOptions:
    """The options of a resumed run: the checkpoint's own (nested as saved now, or flat as before),
    then whatever was given on the command line. Architecture options are kept for the record
    only (the checkpoint's config wins). Names this version no longer knows are dropped."""
    known = {k: v for k, v in train_args.items() if k == "model" or k in TRAIN_OPTION_NAMES}
    known.setdefault("average", "off")      # a run from before --average existed kept no average
    try:
        return TrainOptions.from_dict({**known, **overrides})
    except ValueError as e:
        raise ckpt.CheckpointError(f"the checkpoint's training options are malformed ({e})") from None


def resolve_text(text: str, log: Callable[[str], None]) -> tuple[str, str | None]:
    """FILE as `train` and `lr-find` take it: "-", a path, or a catalogue name (resolved, fetched
    or built, which `log` hears of). Returns the path to read and the catalogue name, if any."""
    if text == "-":
        return text, None
    from charrnn import catalog
    path, where = catalog.resolve(text)
    corpus_name = None
    if not Path(text).exists():
        log(where)
        entry = catalog.lookup(text)
        corpus_name = entry["name"] if entry else None
    return str(path), corpus_name


def prepare_run(text: str | Sequence[str], options: dict, given: frozenset[str] | set[str] = frozenset(), *,
                name: str | None = None, encoding: str = "utf-8", byte_mode: bool = False,
                resume: str | None = None, init_from: str | None = None, overwrite: bool = False,
                dist_mode: str = "off", dist_timeout: float = 600.0, glob: Sequence[str] = (),
                exclude: Sequence[str] = (), strict: bool = False,
                log: Callable[[str], None] = lambda m: None) -> "Trainer":
    """Everything `charrnn train` does before the first step, as one call; `run()` the result.

    text: a path, "-" for stdin, or a catalogue name; or several of them, or a folder: then every
    file is a document (charrnn/documents.py; `glob`, `exclude` and `strict` choose and check
    them) and the run's split (options' split_by) is settled by their number. options:
    TrainOptions' fields by name (and `out`, the run directory or None). given: the names among
    them the user set explicitly; on --resume only those override the checkpoint's own options.
    dist_mode "auto" joins the data-parallel job this process was started in, if any. `log`
    hears the progress lines (the root rank's only). The run directory is claimed and locked
    here (charrnn/rundir.py): the trainer holds the claim as `trainer.claim`; `release()` it
    when the run ends (the process's end drops the lock in any case)."""
    from charrnn import dist as distributed
    from charrnn import rundir
    from charrnn.backends import compile_notices, pick_device
    from charrnn.corpus import check_encoding, check_source, load_corpus

    inputs = [text] if isinstance(text, str) else list(text)
    if not inputs:
        raise InputError("name a text to train on: a file, a folder, - for stdin, or a catalogue name")
    many = len(inputs) > 1 or Path(inputs[0]).is_dir()
    text = inputs[0]                     # one text: as before; several: the first names the run
    comm = distributed.start(dist_timeout) if dist_mode == "auto" else None
    tell = log if comm is None or comm.is_root else (lambda m: None)
    if resume and init_from:
        raise InputError("give --resume (continue a run) or --init-from (fine-tune on a new text), not both")
    resume_path = ckpt.resolve(resume) if resume else None
    out, fresh_name = rundir.choose(text, out=options.get("out"), name=name,
                                    resume_dir=resume_path.parent if resume_path else None)
    if overwrite and resume_path and Path(out).resolve() == resume_path.parent.resolve():
        raise InputError("--overwrite starts a new run in place of the old; --resume continues it: not both")
    settings = {k: v for k, v in options.items() if k != "out"}
    if not resume:
        settings.setdefault("norm", NORM_DEFAULT)
    new_options(settings)    # bad values fail before anything is read or written (the defaults are sound)
    check_encoding(encoding)
    if comm is not None and comm.local_rank:   # the node's first rank fetches or unpacks into the cache
        comm.barrier(node_only=True)
    sources = None
    if many:
        from charrnn import documents
        sources = documents.find(inputs, glob, exclude, resolve=lambda a: resolve_text(a, tell)[0])
        source, corpus_name = sources[0].path, None
    else:
        source, corpus_name = resolve_text(text, tell)
    if comm is not None and not comm.local_rank:
        comm.barrier(node_only=True)
    if not many:
        check_source(source)
    base_resume = ckpt.load(resume_path) if resume_path else None
    if init_from:
        from charrnn import zoo
        base_init = ckpt.load(zoo.resolve(init_from)[0])
    else:
        base_init = None
    base = base_resume or base_init
    if base_resume:   # the run's own options, except those given again on this command line
        refuse_weights_only(base_resume, resume)
        keep_to_checkpoint(base_resume, settings, given, byte_mode, "--resume", tell)   # a shape flag first
        opts = resume_options(base_resume.train_args, {k: v for k, v in settings.items() if k in given})
    else:
        standard_split(corpus_name, settings, given, tell)
        opts = new_options(settings)
        settle_rate(opts, base_init.config.cell if base_init else opts.model.cell, given, tell)
        if base_init:
            keep_to_checkpoint(base_init, settings, given, byte_mode, "--init-from", tell)
    if comm is not None and "-" in inputs:
        raise InputError("a data-parallel run reads a file, not stdin: every rank opens it")
    claim = None
    if comm is None or comm.is_root:
        claim = rundir.claim(out, fresh_name=fresh_name, overwrite=overwrite,
                             resume_dir=resume_path.parent if resume_path else None, log=tell)
    if comm is not None:        # every rank writes to the directory the root claimed
        chosen = np.array([claim.n if claim else 0], np.int64)
        comm.bcast_(chosen)
        opts.out = str(rundir.numbered(Path(out), int(chosen[0])))
    else:
        opts.out = str(claim.path)
    try:
        # --device is resolved on this machine, even on resume: a run may move between CPU and GPU
        opts.device = pick_device(settings.get("device", opts.device), log, announce=comm is None or comm.is_root)
        if not base:
            settle_norm(opts, settings.get("norm"), tell)
        if not base_resume:
            settle_average(opts, given, tell)
            settle_ln_defaults(opts, (base_init.config if base_init else opts.model).norm, given)
        if comm is not None:
            if opts.device == "cuda":
                comm.pick_gpu()
            tell(f"data parallel: {comm.size} processes, {opts.batch_size} streams in all")
        run_dir = rundir.prepare_out_dir(opts.out)
        if sources is None:
            data = load_corpus(source, encoding=encoding, byte_mode=byte_mode, vocab=base.vocab if base else None,
                               spill_dir=run_dir)
        else:
            data = documents.load(sources, strict=strict, encoding=encoding, byte_mode=byte_mode,
                                  vocab=base.vocab if base else None, log=tell)
            source = data.documents[0]["path"]       # the one document's, when it comes to one
            split_documents(opts, data.documents, tell)
        if base is None and comm is None and opts.minutes > 0 and not given & SIZED_BY_BUDGET:
            size_to_budget(opts, data, tell)
        from charrnn.memory import check_training
        check_training(base.config if base else opts.model_config(data.vocab.size), opts, new_optimizer_slots(opts),
                       len(data.codes))
        if sources is None or len(data.documents) == 1:
            if opts.split_by == "document":
                raise InputError("--split-by document needs several documents (a folder, or several files)")
            opts.split_by = "position"                  # one text: cut by position, as always
        where_from = {"path": os.path.abspath(source) if source != "-" else "-", "encoding": encoding}
        if corpus_name:       # lets `eval --split` find the text again after the cache is cleared
            where_from["corpus"] = corpus_name
        from charrnn.train import Trainer    # deferred: lr-find and the budget probe never load the loop
        trainer = Trainer(opts, data, run_dir, log=tell, resume=base_resume, init_from=base_init, dist=comm,
                          notify=compile_notices(tell), source=where_from)
    except BaseException:
        if claim is not None:
            claim.abandon()
        raise
    trainer.claim = claim
    if base_resume and "lr" in given:     # a rate given again replaces the run's (decays and halvings)
        trainer.lr = opts.lr
    return trainer


def standard_split(corpus_name: str | None, settings: dict, given, log: Callable[[str], None]) -> None:
    """A catalogue corpus with a split the literature uses (its entry's `split`) takes it, unless
    --val-frac or --test-frac was given."""
    if not corpus_name or given & {"val_frac", "test_frac"}:
        return
    from charrnn import catalog
    entry = catalog.lookup(corpus_name)
    split = entry.get("split") if entry else None
    if split:
        settings["val_frac"], settings["test_frac"] = split["val_frac"], split["test_frac"]
        log(f"corpus '{corpus_name}': its standard split, {split['val_frac']:g} validation and "
            f"{split['test_frac']:g} test by position ({split.get('source', '')})")


def settle_norm(opts: TrainOptions, asked: str | None, log: Callable[[str], None]) -> None:
    """--norm auto on the GPU: the CUDA kernels have no layer normalisation yet, so a new run there
    trains a plain LSTM, and says so; --norm layer there is refused by the backend."""
    if asked == "auto" and opts.device == "cuda" and opts.model.norm == "layer":
        if opts.model.zoned:
            raise InputError("zoneout needs a layer-normalised LSTM, which the CUDA backend does not have yet "
                             "(--device cpu trains with it)")
        if opts.model.recurrent_dropout > 0:
            raise InputError("--recurrent-dropout needs a layer-normalised LSTM, which the CUDA backend does not "
                             "have yet (--device cpu trains with both)")
        opts.model = dataclasses.replace(opts.model, norm="none")
        log("--norm none: the CUDA backend has no layer normalisation yet (--device cpu trains with it)")


def settle_average(opts: TrainOptions, given, log: Callable[[str], None]) -> None:
    """A new run on the GPU keeps no average unless --average is given: it paid with layer
    normalisation only (bench/RESULTS.md), which the GPU trains without, and the CUDA backend
    copies the weights to the host for it every step."""
    if opts.device == "cuda" and opts.average != "off" and "average" not in given:
        opts.average = "off"
        log("--average off: on the GPU the LSTM trains without layer normalisation, where the average did not "
            "pay (give --average ema to keep one)")


def settle_ln_defaults(opts: TrainOptions, norm: str, given) -> None:
    """What a new run of a layer-normalised model (`norm`: the model's, the --init-from
    checkpoint's when there is one) takes where the user chose nothing: Adam's and AdamW's beta2
    options.LN_BETA2 when --beta2 is unset, and options.LN_WINDOW's window length and streams for
    each of their flags not in `given`. Written into its options, so a resume keeps them; runs
    that predate them resume with their own (beta2 unset: the rule's 0.999)."""
    if norm != "layer":
        return
    if opts.optimizer in ("adam", "adamw") and opts.beta2 is None:
        opts.beta2 = LN_BETA2
    for name, value in LN_WINDOW.items():
        if name not in given:
            setattr(opts, name, value)


def settle_rate(opts: TrainOptions, cell: str, given, log: Callable[[str], None]) -> None:
    """A new run given no --lr takes the rate of its rule and cell (options.default_rate; `cell` is
    the model's, the --init-from checkpoint's when there is one), said on `log` where it is not
    Adam's for the LSTM."""
    if "lr" in given:
        return
    rate = default_rate(opts.optimizer, cell)
    if rate != opts.lr:
        opts.lr = rate
        log(f"--lr {rate:g}: the default rate of {opts.optimizer} for the {cell} cell (give --lr to choose)")


def split_documents(opts: TrainOptions, records: list[dict], log: Callable[[str], None]) -> None:
    """Settle a run's split from its documents (--split-by, auto by their number) and mark each
    document's part in its record; `log` hears how they fell."""
    from charrnn import documents
    if len(records) < 2:
        return
    opts.split_by = documents.choose_split(opts.split_by, len(records))
    if opts.split_by == "document":
        for r, which in zip(records, documents.assign([r["name"] for r in records], opts.val_frac,
                                                      opts.test_frac, opts.seed)):
            r["split"] = which
        count = {k: sum(r["split"] == k for r in records) for k in documents.SPLITS}
        log(f"{len(records)} documents, split by document: {count['train']} to train, {count['val']} to "
            f"validation, {count['test']} to test")
    else:
        log(f"{len(records)} documents, split by position (the last {opts.val_frac + opts.test_frac:g} of the "
            f"text is held out)")


def new_options(settings: dict) -> TrainOptions:
    """The options of a new run from the command line's values, each checked (a bad one is a
    usage error naming its flag)."""
    try:
        return TrainOptions.from_dict(settings)
    except ValueError as e:
        raise InputError(str(e)) from None


# the model flags that cannot change a checkpoint's weights: its shape, and how fresh weights are drawn
SHAPE_FLAGS = ("hidden", "layers", "cell", "embed", "activation", "init", "forget_bias", "norm", "zoneout_cell",
               "zoneout_hidden")     # zoneout's rates too: sampling and scoring take its expectation


def refuse_weights_only(ck: ckpt.Checkpoint, arg: str) -> None:
    """--resume needs what only a full checkpoint has: the optimizer's state and the random stream."""
    if ck.optimizer is None or ck.rng is None:
        raise InputError(f"--resume {arg}: a weights-only file (no optimizer state or random stream) cannot "
                         f"continue a run exactly; use --init-from {arg} to train on from its weights")


def keep_to_checkpoint(base: ckpt.Checkpoint, settings: dict, given, byte_mode: bool, how: str,
                       log: Callable[[str], None]) -> None:
    """No flag is silently ignored next to a checkpoint: a shape flag that disagrees with it is an
    error, a --dropout or --recurrent-dropout given takes effect (said on `log`), and text/byte mode
    must match."""
    cfg = base.config
    for k in SHAPE_FLAGS:
        if k in given and settings.get(k) != getattr(cfg, k):
            flag = "--" + k.replace("_", "-")
            raise InputError(f"{flag} {settings[k]} disagrees with the checkpoint's {getattr(cfg, k)}: {how} keeps "
                             f"the checkpoint's model; leave {flag} out, or train a new model without {how}")
    for k in ("dropout", "recurrent_dropout"):          # training-only rates: a new one takes effect
        if k in given and settings.get(k) != getattr(base.config, k):
            flag = "--" + k.replace("_", "-")
            try:
                base.config = dataclasses.replace(base.config, **{k: settings[k]})
            except ValueError as e:                     # recurrent dropout on a model without layer normalisation
                raise InputError(f"{flag} {settings[k]:g} does not fit the checkpoint's model: {e}") from None
            log(f"{flag} {settings[k]:g} replaces the checkpoint's {getattr(cfg, k):g}")
    if byte_mode and not base.vocab.byte_mode:
        raise InputError(f"--bytes: the checkpoint of {how} is a text model; leave --bytes out")
    if how == "--init-from" and base.vocab.byte_mode and not byte_mode:
        raise InputError("--init-from: the checkpoint is a byte model (trained with --bytes); give --bytes to "
                         "fine-tune it on raw bytes")


# architecture flags: giving any of them (or --max-epochs, which may end the run before the budget)
# keeps the defaults as they are instead of sizing the model to the budget
SIZED_BY_BUDGET = frozenset({"hidden", "layers", "cell", "embed", "dropout", "max_epochs"})


def size_to_budget(opts: TrainOptions, data: Corpus, log: Callable[[str], None]) -> None:
    """Set the model's hidden and dropout from the speed of this machine and the length of the
    text (charrnn/budget.py): a fresh run with a time budget and no architecture flags."""
    from charrnn import budget
    cfg = opts.model_config(data.vocab.size)
    train_chars = len(split(data.codes, opts.val_frac, opts.test_frac)[0])
    T, B = min(opts.seq_len, max(1, train_chars - 1)), opts.batch_size
    sizing = budget.measure(cfg, opts.device, T, B, opts.minutes * 60.0, train_chars,
                            lambda n: new_optimizer(opts, n))
    opts.model = dataclasses.replace(opts.model, hidden=sizing.hidden, dropout=sizing.dropout)
    log(sizing.describe(opts.minutes))
