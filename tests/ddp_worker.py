"""One rank of a tiny training run, launched by torchrun from tests/test_distributed.py (not a test itself).

usage: ddp_worker.py RUN_DIR OUT_DIR (straight | stop:N | resume) SETTING...
Writes OUT_DIR/rank<r>.safetensors (this rank's model and EMA after training) and rank<r>.json (its losses),
so the test can compare what each process holds, which only rank 0 would otherwise save.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from diffkit.distributed import launched_rank
from diffkit.settings import load_settings, parse_overrides
from diffkit.training import train_run


def main() -> None:
    run_dir, out, mode, sets = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
    stop_after = int(mode.split(":")[1]) if mode.startswith("stop:") else None
    trainer, result = train_run(
        load_settings("tiny", parse_overrides(sets)), run_dir, resume=mode == "resume", stop_after=stop_after
    )
    rank = launched_rank()
    out.mkdir(parents=True, exist_ok=True)
    weights = {f"model.{k}": v.contiguous() for k, v in trainer.model.state_dict().items()}
    weights |= {f"ema.{k}": v.contiguous() for k, v in trainer.ema.state_dict().items()}
    save_file(weights, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({"steps": result.steps, "losses": result.losses}))


if __name__ == "__main__":
    main()
