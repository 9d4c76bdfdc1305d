"""Train the embedded demo model with ESPnet's own trainer (`espnet2` STTask) on the CPU.

Steps: dump the MuST-C-layout train/dev segments into ESPnet data directories, train
sentencepiece BPE models, collect feature statistics, train, then export a standard
experiment directory (config.yaml with paths relative to it, averaged model, BPE models,
token lists, feature stats) to data/model.

espnet 202511's multi-decoder training crashes: `ESPnetSTModel._calc_asr_att_loss` unpacks
`decoder_out, _, hs = extra_asr_decoder(..., return_hs=True)`, but `TransformerDecoder.forward`
returns `((x, hidden), olens)`. `_decoder_adapter` reshapes that one return value, in this
process only, while training; ESPnet's installed source is not edited, and inference, which
does not take that path, runs on unpatched ESPnet.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Iterator
from pathlib import Path

import soundfile
import torch
import yaml

from runner import _espnet
from runner.audio import read_audio
from runner.data import read_mustc
from runner.errors import RunnerError
from runner.metrics.wer import normalize

SPLITS = {"train": "train", "valid": "dev"}


def lc_rm(text: str) -> str:
    """ESPnet MuST-C recipe's `lc.rm` source text: lower case, punctuation removed."""
    return " ".join(normalize(text))


def dump_split(corpus: Path, split: str, out: Path) -> int:
    """Cut every segment to its own 16-bit WAV and write wav.scp, text.tc.de, text.lc.rm.en."""
    test_set = read_mustc(corpus, split)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    scp, targets, sources = [], [], []
    for segment in test_set.segments:
        waveform, rate = read_audio(segment.audio_path, segment.start, segment.frames)
        path = (out / "wav" / f"{segment.id}.wav").resolve()
        soundfile.write(str(path), waveform, rate, subtype="PCM_16")
        scp.append(f"{segment.id} {path}")
        targets.append(f"{segment.id} {segment.reference}")
        sources.append(f"{segment.id} {lc_rm(segment.source or '')}")
    for name, lines in (("wav.scp", scp), ("text.tc.de", targets), ("text.lc.rm.en", sources)):
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(scp)


def train_bpe(text_file: Path, out_dir: Path, vocab_size: int) -> tuple[Path, Path]:
    """A sentencepiece unigram model and the ESPnet token list that goes with it."""
    import sentencepiece

    out_dir.mkdir(parents=True, exist_ok=True)
    sentences = out_dir / "train.txt"
    sentences.write_text(
        "\n".join(line.split(" ", 1)[1] for line in text_file.read_text(encoding="utf-8").splitlines()) + "\n",
        encoding="utf-8",
    )
    prefix = out_dir / "bpe"
    sentencepiece.SentencePieceTrainer.train(
        input=str(sentences), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, input_sentence_size=100000000, minloglevel=2,
        hard_vocab_limit=False,  # a closed grammar may have fewer pieces than asked for
    )
    processor = sentencepiece.SentencePieceProcessor(model_file=f"{prefix}.model")
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    tokens = ["<blank>", "<unk>"] + [p for p in pieces if p not in ("<unk>", "<s>", "</s>")] + ["<sos/eos>"]
    token_list = out_dir / "tokens.txt"
    token_list.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return Path(f"{prefix}.model"), token_list


@contextlib.contextmanager
def _decoder_adapter() -> Iterator[None]:
    from espnet2.asr.decoder.transformer_decoder import BaseTransformerDecoder

    original = BaseTransformerDecoder.forward

    @functools.wraps(original)
    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        output = original(self, *args, **kwargs)
        if kwargs.get("return_hs") and isinstance(output[0], tuple):
            (x, hidden), olens = output
            return x, olens, hidden
        return output

    BaseTransformerDecoder.forward = forward
    try:
        yield
    finally:
        BaseTransformerDecoder.forward = original


def _st_main(arguments: list[str]) -> None:
    task = _espnet.st_task()
    with _decoder_adapter():
        task.main(cmd=arguments)


def reuse_units(model_dir: Path, work: Path) -> tuple[Path, Path, Path, Path]:
    """The BPE models and token lists of an exported model, so its weights can initialize a new run.

    Returns:
        (German BPE model, German token list, English BPE model, English token list).
    """
    config_path = model_dir / "config.yaml"
    if not config_path.is_file():
        raise RunnerError(f"{config_path}: no such file; --init takes an exported model directory (config.yaml + .pth)")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    files = []
    for bpe_key, tokens_key, name in (("bpemodel", "token_list", "de"), ("src_bpemodel", "src_token_list", "en")):
        out = work / f"bpe_{name}"
        out.mkdir(parents=True, exist_ok=True)
        bpe = model_dir / str(config[bpe_key])
        if not bpe.is_file():
            raise RunnerError(f"{config_path}: {bpe_key} {config[bpe_key]} is not in {model_dir}")
        shutil.copyfile(bpe, out / "bpe.model")
        (out / "tokens.txt").write_text("\n".join(config[tokens_key]) + "\n", encoding="utf-8")
        files += [out / "bpe.model", out / "tokens.txt"]
    return files[0], files[1], files[2], files[3]


def train(corpus: Path, work: Path, export_to: Path, config: Path, max_epoch: int | None = None,
          src_vocab: int = 250, tgt_vocab: int = 300, init: Path | None = None) -> Path:
    """Train the demo model with ESPnet's trainer and export it.

    Args:
        corpus: a MuST-C-layout root with train and dev splits.
        work: scratch directory (dumps, BPE, stats, checkpoints); a run there resumes.
        export_to: where the exported experiment directory goes.
        config: ESPnet training config.
        max_epoch: overrides the config's max_epoch.
        src_vocab, tgt_vocab: BPE vocabulary sizes (ignored with `init`, whose units are kept).
        init: an exported model directory whose weights start the run (ESPnet's --init_param) and whose
            BPE models and token lists it keeps; None trains from random weights.

    Returns:
        The exported directory.
    """
    init_weights = _model_file(init) if init is not None else None  # a bad --init fails before any work
    work.mkdir(parents=True, exist_ok=True)
    dumps = {}
    for role, split in SPLITS.items():
        dumps[role] = work / "dump" / split
        if not (dumps[role] / "wav.scp").is_file():
            dump_split(corpus, split, dumps[role])
    if init is not None:
        tgt_bpe, tgt_tokens, src_bpe, src_tokens = reuse_units(init, work)
    else:
        tgt_bpe, tgt_tokens = train_bpe(dumps["train"] / "text.tc.de", work / "bpe_de", tgt_vocab)
        src_bpe, src_tokens = train_bpe(dumps["train"] / "text.lc.rm.en", work / "bpe_en", src_vocab)

    def data_args(role: str) -> list[str]:
        d = dumps[role]
        return [f"--{role}_data_path_and_name_and_type", f"{d}/wav.scp,speech,sound",
                f"--{role}_data_path_and_name_and_type", f"{d}/text.tc.de,text,text",
                f"--{role}_data_path_and_name_and_type", f"{d}/text.lc.rm.en,src_text,text"]

    common = [
        "--config", str(config), "--use_preprocessor", "true",
        "--token_type", "bpe", "--bpemodel", str(tgt_bpe), "--token_list", str(tgt_tokens),
        "--src_token_type", "bpe", "--src_bpemodel", str(src_bpe), "--src_token_list", str(src_tokens),
        "--ngpu", "0", "--use_tensorboard", "false", "--use_matplotlib", "false",
        *data_args("train"), *data_args("valid"),
    ]
    stats = work / "stats"
    if not (stats / "train" / "feats_stats.npz").is_file():
        _st_main([*common, "--collect_stats", "true", "--normalize", "none", "--output_dir", str(stats),
                  "--train_shape_file", str(dumps["train"] / "wav.scp"),
                  "--valid_shape_file", str(dumps["valid"] / "wav.scp")])
    exp = work / "exp"
    _st_main([
        *common, "--normalize", "global_mvn", "--normalize_conf", f"stats_file={stats / 'train' / 'feats_stats.npz'}",
        "--output_dir", str(exp), "--resume", "true",
        "--train_shape_file", str(stats / "train" / "speech_shape"),
        "--train_shape_file", str(stats / "train" / "text_shape"),
        "--train_shape_file", str(stats / "train" / "src_text_shape"),
        "--valid_shape_file", str(stats / "valid" / "speech_shape"),
        "--valid_shape_file", str(stats / "valid" / "text_shape"),
        "--valid_shape_file", str(stats / "valid" / "src_text_shape"),
        "--fold_length", "80000", "--fold_length", "150", "--fold_length", "150",
        *(["--max_epoch", str(max_epoch)] if max_epoch else []),
        *(["--init_param", str(init_weights)] if init_weights is not None else []),
    ])
    return export(exp, export_to)


def _model_file(model_dir: Path) -> Path:
    weights = model_dir / "valid.acc.ave.pth"
    if not weights.is_file():
        raise RunnerError(f"{weights}: no such file; --init takes an exported model directory")
    return weights.resolve()


def export(exp: Path, out: Path) -> Path:
    """Copy the averaged model and everything its config names into `out`, with relative paths."""
    out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((exp / "config.yaml").read_text(encoding="utf-8"))
    for key, name in (("bpemodel", "bpe_de.model"), ("src_bpemodel", "bpe_en.model")):
        shutil.copyfile(config[key], out / name)
        config[key] = name
    stats_file = Path(config["normalize_conf"]["stats_file"])
    shutil.copyfile(stats_file, out / "feats_stats.npz")
    config["normalize_conf"]["stats_file"] = "feats_stats.npz"
    for key in ("train_data_path_and_name_and_type", "valid_data_path_and_name_and_type",
                "train_shape_file", "valid_shape_file", "output_dir", "config"):
        config.pop(key, None)
    config["init_param"] = []  # training-only, and a path on the training machine: never needed to load the model
    (out / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    averaged = exp / "valid.acc.ave.pth"
    if averaged.exists():
        shutil.copyfile(averaged.resolve(), out / "valid.acc.ave.pth")
    else:  # training stopped early: average the kept (n-best by valid acc) epoch snapshots ourselves
        torch.save(average_snapshots(sorted(exp.glob("*epoch.pth"))), out / "valid.acc.ave.pth")
    return out


def average_snapshots(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of state_dicts, as ESPnet's average_nbest_models does (integer buffers summed as ints)."""
    if not paths:
        raise RunnerError("no epoch snapshots (*epoch.pth) to average")
    states = [torch.load(p, map_location="cpu") for p in paths]
    averaged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            averaged[key] = sum(s[key] for s in states) / len(states)
        else:
            averaged[key] = value  # e.g. num_batches_tracked
    return averaged
