"""`ncn data fetch`: find TinyStories, cap and split it; write train.txt, heldout.txt, valid.txt
and manifest.json.

Where the data comes from, in order (data.source = auto):
  1. the folder in the environment variable NCN_DATA_DIR (an error if it lacks the files),
  2. the folder data.dir (default resources/tinystories/) if it holds the files,
  3. the Hugging Face hub (data.hub_name), streamed with `datasets`, stopping at the train cap.
data.source = local forces 1-2, data.source = hub forces 3.

Two evaluation sets come out of it (see the architecture doc):
  heldout.txt  the last data.heldout_fraction of the (capped) train stories, in the train
               format; train.txt is the stories before them, so training and the tokenizer
               never see them. manifest `train_all` hashes the two together: for an uncapped
               canonical file it is the source's sha256, so the split provably lost nothing.
  valid.txt    data.val_split = official: the dataset's validation file (a local .txt one is
               copied unchanged, hard-linked when big, even without separators); train_tail:
               a copy of heldout.txt (the original's split), and no validation file is read.

The train outputs are in the TinyStories text format (stories separated by a line
`<|endoftext|>`), rewritten story by story.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ncn import progress
from ncn.errors import NCNError
from ncn.fileio import atomic_path, write_json
from ncn.data import textfile
from ncn.data.textfile import StoryWriter, normalize_story, story_file_bytes

SPLITS = ("train", "valid")  # the source's files
OUT_SPLITS = ("train", "heldout", "valid")  # fetch's outputs, {split}.txt
SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation")}
EXTENSIONS = (".txt", ".jsonl", ".parquet")


def three_ways(d: dict) -> str:
    default_dir = "" if d["dir"].rstrip("/") == "resources/tinystories" else "; by default resources/tinystories/"
    return (
        "Provide TinyStories in one of three ways: "
        "(1) set NCN_DATA_DIR to a folder with train.txt and valid.txt (stories separated by a line "
        f"{textfile.EOT}; .jsonl or .parquet files with a 'text' field work too); "
        f"(2) put those files in data.dir (now '{d['dir']}'{default_dir}); "
        f"(3) with network access, let the hub provide them (data.source auto or hub, data.hub_name "
        f"'{d['hub_name']}')."
    )


# ----------------------------------------------------------------------------- where the data is


def _candidates(folder: Path, split: str, d: dict) -> list[Path]:
    names = [f"{n}{ext}" for n in SPLIT_NAMES[split] for ext in EXTENSIONS]
    names.append(d[f"hub_{split}_file"])  # e.g. TinyStoriesV2-GPT4-train.txt downloaded by hand
    return [folder / n for n in names]


def _find(folder: Path, split: str, d: dict) -> Path | None:
    return next((p for p in _candidates(folder, split, d) if p.is_file()), None)


def local_files(folder: Path, d: dict, origin: str) -> dict[str, Path]:
    """{split: file} of a local folder; NCNError naming what is missing."""
    splits = SPLITS if d["val_split"] == "official" else ("train",)
    if not folder.is_dir():
        raise NCNError(f"data folder {folder} (from {origin}) does not exist. " + three_ways(d))
    files = {}
    for split in splits:
        path = _find(folder, split, d)
        if path is None:
            looked = ", ".join(p.name for p in _candidates(folder, split, d))
            raise NCNError(f"no {split} file in {folder} (from {origin}; looked for {looked}). " + three_ways(d))
        files[split] = path
    return files


def resolve_source(d: dict) -> tuple[str, Path | None, dict[str, Path] | None]:
    """("local", folder, files) or ("hub", None, None), following the order in the module doc."""
    if d["source"] == "hub":
        return "hub", None, None
    env = os.environ.get("NCN_DATA_DIR")
    if env:
        folder = Path(env).expanduser()
        return "local", folder, local_files(folder, d, "NCN_DATA_DIR")
    folder = Path(d["dir"]).expanduser()
    has_any = folder.is_dir() and any(_find(folder, s, d) for s in SPLITS)
    if d["source"] == "local" or has_any:
        return "local", folder, local_files(folder, d, "data.dir")
    return "hub", None, None


# ----------------------------------------------------------------------------- reading stories


def local_stories(path: Path, require_separator: bool) -> Iterator[str]:
    """The stories of a local .txt / .jsonl / .parquet file, ready for the text format."""
    textfile.check_nonempty(path)
    if path.suffix == ".jsonl":
        yield from _jsonl_stories(path)
    elif path.suffix == ".parquet":
        yield from _parquet_stories(path)
    else:
        for story in textfile.iter_stories(path, require_separator=require_separator):
            yield normalize_story(story)


def _jsonl_stories(path: Path) -> Iterator[str]:
    for lineno, (line, _) in enumerate(textfile.iter_lines(path), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise NCNError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise NCNError(f"{path}:{lineno}: expected an object with a string field 'text'")
        if rec["text"].strip():
            yield normalize_story(rec["text"])


def _parquet_stories(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise NCNError(f"{path}: not a readable parquet file ({e})") from None
    if "text" not in pf.schema_arrow.names:
        raise NCNError(f"{path}: no column 'text' (columns: {', '.join(pf.schema_arrow.names)})")
    row = 0
    for batch in pf.iter_batches(columns=["text"], batch_size=1024):
        try:
            texts = batch.column(0).to_pylist()
        except UnicodeDecodeError as e:
            raise NCNError(f"{path}: invalid UTF-8 in the 'text' column near row {row} ({e.reason})") from None
        for t in texts:
            if isinstance(t, str) and t.strip():
                yield normalize_story(t)
        row += len(texts)


def hub_lines_or_records(d: dict, file: str) -> Iterator[str]:
    """Rows of one file of the hub dataset, streamed: lines (newline kept) of a .txt file,
    else the 'text' field of each record. `data.hub_name` may also be a local dataset folder,
    which `datasets` reads the same way (that is how the tests exercise this path offline)."""
    name = d["hub_name"]
    try:
        import datasets

        kwargs = {"keep_linebreaks": True} if file.endswith(".txt") else {}
        ds = datasets.load_dataset(name, data_files={"train": file}, split="train", streaming=True, **kwargs)
        for batch in ds.iter(batch_size=1000):
            if "text" not in batch:
                raise NCNError(f"hub dataset {name}, file {file}: no field 'text' (fields: {', '.join(batch)})")
            yield from batch["text"]
    except NCNError:
        raise
    except Exception as e:  # no network, offline mode, unknown repo or file, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise NCNError(
            f"could not read '{file}' of the dataset '{name}' from the Hugging Face hub "
            f"({type(e).__name__}: {msg}). " + three_ways(d)
        ) from None


def hub_stories(d: dict, file: str, require_separator: bool) -> Iterator[str]:
    rows = hub_lines_or_records(d, file)
    if file.endswith(".txt"):
        stories = textfile.stories_from_lines(rows, f"hub file {d['hub_name']}/{file}", require_separator)
    else:
        stories = (r for r in rows if isinstance(r, str) and r.strip())
    for story in stories:
        yield normalize_story(story)


def capped(stories: Iterable[str], max_bytes: int | None, max_stories: int | None) -> Iterator[str]:
    """The first stories within both caps (bytes counted in the text format, separators
    included); stops reading there, which is what keeps a hub download small."""
    total = 0
    for i, story in enumerate(stories):
        if max_stories is not None and i >= max_stories:
            return
        n = story_file_bytes(story)
        if max_bytes is not None and total + n > max_bytes:
            if i == 0:
                raise NCNError(f"data.max_train_bytes={max_bytes} is smaller than the first story ({n} bytes)")
            return
        total += n
        yield story


# ----------------------------------------------------------------------------- writing
# Every writer fills a temporary path; fetch() gives train.txt, heldout.txt and valid.txt their
# names together, and only when all are complete, then writes manifest.json last.


# Files at least this big are hard-linked rather than copied (a full validation split is big).
# Smaller ones are copied, so that nothing that writes into results/ by mistake can reach the
# user's (or a shared) data folder through the link.
LINK_MIN_BYTES = 256 << 20


def _place_verbatim(src: Path, tmp: Path) -> None:
    """Put `src` unchanged at the temporary path `tmp`: a hard link for a big file, else a copy."""
    if src.stat().st_size >= LINK_MIN_BYTES:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
            return
        except OSError:  # another file system, or a file we may not link (protected_hardlinks)
            pass
    shutil.copyfile(src, tmp)


def _write_stories(tmp: Path, stories: Iterable[str], desc: str, total: int | None = None) -> dict:
    with open(tmp, "wb") as f:
        w = StoryWriter(f)
        with progress.bar(total=total, unit="B", unit_scale=True, desc=desc, mininterval=1.0) as bar:
            for story in stories:
                w.write(story)
                bar.update(story_file_bytes(story))
    if w.stories == 0:
        raise NCNError(f"the {desc} data holds no stories (every record is empty)")
    return w.stats()


def n_heldout(n: int, fraction: float, where: str = "the train data") -> int:
    """Stories held out of n: n·fraction rounded half up, at least 1 and at most n - 1."""
    if n == 0:
        raise NCNError(f"{where} holds no text (only blank lines and {textfile.EOT} separators)")
    if n < 2:
        raise NCNError(f"{where} has 1 story; holding out its tail (data.heldout_fraction) needs at least 2")
    return min(n - 1, max(1, math.floor(n * fraction + 0.5)))


def _split_heldout(stories: Callable[[], Iterable[str]], tmp: dict[str, Path], fraction: float,
                   where: str) -> dict[str, dict]:
    """All but the last n_heldout stories -> tmp["train"], those -> tmp["heldout"]. `stories` is
    called twice (count, then write). Stats of train, heldout and the two in order (train_all)."""
    n = sum(1 for _ in stories())
    k = n_heldout(n, fraction, where)
    with open(tmp["train"], "wb") as ft, open(tmp["heldout"], "wb") as fh, open(os.devnull, "wb") as fa:
        wt, wh, wa = StoryWriter(ft), StoryWriter(fh), StoryWriter(fa)
        for i, story in enumerate(progress.bar(stories(), total=n, desc="train | heldout", unit="story", mininterval=1.0)):
            (wt if i < n - k else wh).write(story)
            wa.write(story)
    if wa.stories != n:
        raise NCNError(f"the train data changed while it was read ({n} stories, then {wa.stories}); fetch again")
    return {"train": wt.stats(), "heldout": wh.stats(), "train_all": wa.stats()}


def _write_valid(d: dict, kind: str, files: dict[str, Path] | None, tmp: dict[str, Path], heldout: dict) -> dict:
    """valid.txt: the held-out tail again (train_tail), or the dataset's validation file."""
    if d["val_split"] == "train_tail":
        shutil.copyfile(tmp["heldout"], tmp["valid"])
        return dict(heldout)
    if kind == "local" and files["valid"].suffix == ".txt":
        # Kept as it is: a validation file without separators is one stream (stories: null).
        st = dict(textfile.scan(files["valid"]), verbatim=True)
        _place_verbatim(files["valid"], tmp["valid"])
        return st
    if kind == "local":
        return _write_stories(tmp["valid"], local_stories(files["valid"], False), "valid")
    return _write_hub_valid(d, tmp["valid"])


def _write_hub_valid(d: dict, tmp: Path) -> dict:
    """The hub's validation file: a .txt is kept as streamed (lines in order, so a file without
    separators stays one stream); records are written as stories."""
    file = d["hub_valid_file"]
    if not file.endswith(".txt"):
        return _write_stories(tmp, hub_stories(d, file, require_separator=False), "valid")
    with open(tmp, "wb") as f, progress.bar(unit="B", unit_scale=True, desc="valid", mininterval=1.0) as bar:
        for line in hub_lines_or_records(d, file):
            data = line.encode("utf-8")
            f.write(data)
            bar.update(len(data))
    try:  # validate it (not empty, holds text) before it gets its name
        return textfile.scan(tmp)
    except NCNError:
        raise NCNError(f"hub file {d['hub_name']}/{file} holds no text") from None


def fetch(cfg: dict, out: str | os.PathLike) -> dict:
    """Run the fetch stage; returns the manifest it wrote."""
    d = cfg["data"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind, folder, files = resolve_source(d)
    cap = (d["max_train_bytes"], d["max_train_stories"])
    if kind == "local":
        source = f"local:{folder}"
        origin = {s: str(p) for s, p in files.items()}
        raw = lambda: local_stories(files["train"], require_separator=True)  # noqa: E731
    else:
        source = f"hub:{d['hub_name']}"
        origin = {"train": d["hub_train_file"], "valid": d["hub_valid_file"]}
        raw = lambda: hub_stories(d, d["hub_train_file"], require_separator=True)  # noqa: E731
    origin["heldout"] = f"the last {d['heldout_fraction']:g} of the train stories"
    if d["val_split"] == "train_tail":
        origin["valid"] = origin["heldout"] + " (val_split train_tail)"

    # An older manifest must not describe the new files while they are being replaced.
    (out / "manifest.json").unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:
        tmp = {s: stack.enter_context(atomic_path(out / f"{s}.txt")) for s in OUT_SPLITS}
        if kind == "local":
            stories = lambda: capped(raw(), *cap)  # noqa: E731  (read twice: count, then split)
        else:  # stream the hub once, into a scratch file that is read twice
            scratch = stack.enter_context(tempfile.TemporaryDirectory(dir=out, prefix=".fetch."))
            all_path = Path(scratch) / "all.txt"
            _write_stories(all_path, capped(raw(), *cap), "train", cap[0])
            stories = lambda: textfile.iter_stories(all_path)  # noqa: E731
        st = _split_heldout(stories, tmp, d["heldout_fraction"], origin["train"])
        st["valid"] = _write_valid(d, kind, files, tmp, st["heldout"])

    manifest = {
        "source": source,
        "val_split": d["val_split"],
        "heldout_fraction": d["heldout_fraction"],
        "max_train_bytes": d["max_train_bytes"],
        "max_train_stories": d["max_train_stories"],
        "train_all": {"from": origin["train"], **st["train_all"]},  # train + heldout, before the split
    }
    for split in OUT_SPLITS:
        manifest[split] = {"file": f"{split}.txt", "from": origin[split], "verbatim": False, **st[split]}
    write_json(out / "manifest.json", manifest)
    return manifest
