"""The prepared (memory-mapped) data path against the in-memory one, on a real corpus.

Loads the corpus both ways (``data.prepared = always`` and ``never``) through a fresh cache
folder that links to the corpus (so the data directory itself is not written), compares the
vocabularies and every split's ids, then evaluates a trained run on valid and test both ways.

    python benchmarks/prepared_equality.py RUN --corpus ptb --data-dir ../shared/data

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

import torch

from rnnlab.config_resolve import resolve_config
from rnnlab.data.corpora import corpus_folder
from rnnlab.lm.data import load_lm_data
from rnnlab.lm.inference import LanguageModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--corpus", default="ptb")
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = tempfile.mkdtemp()
    folder = corpus_folder(args.corpus, cache)
    try:
        os.symlink(os.path.abspath(os.path.join(args.data_dir, folder.name)), folder)
        loaded = {}
        for mode in ("always", "never"):
            config = resolve_config(preset="word-fast", overrides={
                "data.corpus": args.corpus, "data.data_dir": cache, "data.prepared": mode})
            loaded[mode] = load_lm_data(config.data)
        mapped, held = loaded["always"], loaded["never"]
        result = {"corpus": args.corpus, "vocab": len(held.vocab),
                  "vocab_equal": mapped.vocab.itos == held.vocab.itos}
        for split in held.splits:
            result[f"{split}_ids_equal"] = bool(
                torch.equal(mapped.splits[split].long(), held.splits[split].long()))
            result[f"{split}_mapped_dtype"] = str(mapped.splits[split].dtype)
        lm = LanguageModel.load(args.run)
        for mode in ("always", "never"):
            lm.config.data.prepared = mode
            for split in ("valid", "test"):
                result[f"{split}_ppl_{mode}"] = lm.evaluate(split, data_dir=cache)["ppl"]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
