"""Peak resident memory of each stage of evaluating one SAE, in a fresh process.

Usage: python benchmarks/wide/stages.py SAE CACHE STAGE [TOKENS]

SAE is a folder any loader reads (e.g. one written by make.py), CACHE an activation cache folder of
the same hook point, STAGE one of sparsity, reconstruction, records (records of 100 sampled latents,
as the n2g scorer uses; the special positions are Gemma's token ids 0, 1 and 2). TOKENS caps the
evaluated tokens (records: whole contexts, about TOKENS tokens). Prints RSS after and peak during
each phase (load, plan, STAGE) in GiB: the peak of a phase is reset through /proc/self/clear_refs
before it starts, so it is the phase's own high-water mark.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import saebench
from saebench import kernel, plugin_manager
from saebench.interfaces import EvalInputs
from saebench.interp.records import Corpus, RecordConfig, build_records
from saebench.run.activations import ActivationCache

GEMMA_SPECIAL = (0, 1, 2)  # pad, eos, bos


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


class Phases:
    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        self.t = time.perf_counter()

    def end(self, name: str) -> None:
        rss, peak = _kib("VmRSS:") / 2**20, _kib("VmHWM:") / 2**20
        print(f"{name:15s} rss {rss:6.2f} GiB  peak {peak:6.2f} GiB  {time.perf_counter() - self.t:7.1f} s", flush=True)
        self.start()


def records(sae: saebench.SAE, cache: ActivationCache, tokens: int | None) -> str:
    ids = cache.tokens()
    special = torch.isin(ids, torch.tensor(GEMMA_SPECIAL))
    if tokens is not None:
        keep = int(((~special).sum(dim=1).cumsum(0) <= tokens).sum())
        ids, special = ids[:keep], special[:keep]
    n_rows = int((~special).sum())

    def batches(n: int):
        return cache.batches(n, max_tokens=n_rows)

    corpus = Corpus(ids, special, lambda t: [str(i) for i in t])
    built = build_records(sae, batches, corpus, 100, RecordConfig())
    return f"{len(built.records)} records over {built.n_tokens} tokens, {built.passes} passes"


def main() -> None:
    if len(sys.argv) < 4:
        raise SystemExit(__doc__.split("\n\n")[1])
    folder, cache, stage = Path(sys.argv[1]), ActivationCache(Path(sys.argv[2])), sys.argv[3]
    tokens = int(sys.argv[4]) if len(sys.argv) > 4 else None
    torch.set_grad_enabled(False)
    phases = Phases()
    sae = saebench.load_sae(folder)
    phases.end("load")
    kernel.plan_for(sae)
    phases.end("plan")
    if stage == "records":
        summary = records(sae, cache, tokens)
    else:
        scorer = plugin_manager.get("scorer", stage)(max_tokens=tokens)
        contexts = cache.token_contexts()
        inputs = EvalInputs("layers.6", cache.batches, cache.tokens(), token_contexts=contexts)
        summary = str({k: v for k, v in scorer.score(sae, inputs).metrics.items() if v is not None})
    phases.end(stage)
    print(summary)


if __name__ == "__main__":
    main()
