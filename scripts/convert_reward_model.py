"""Rewrite a reward model saved in pfkit's old layout (config.json + reward_model.pt + reward_meta.json)
into the Hugging Face layout that ``ScalarHeadModel.save`` writes now, in place (one copy).

    python scripts/convert_reward_model.py [FOLDER ...]    # default: pfkit/assets/reward
"""

import sys
from pathlib import Path

from transformers import AutoTokenizer

from pfkit.models import EMBEDDED_RM, ScalarHeadModel


def main(folders: list[str]) -> None:
    for folder in map(Path, folders or [EMBEDDED_RM]):
        if not (folder / "reward_model.pt").is_file():
            print(f"{folder}: no reward_model.pt, nothing to convert")
            continue
        rm = ScalarHeadModel._load_old(folder)
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        shipped = folder.resolve() == EMBEDDED_RM.resolve()
        rm.save(folder, tok, policy="embedded" if shipped else None,
                recipe={"config": "reward_codegen"} if shipped else None)
        print(f"{folder}: converted to the Hugging Face layout (pfkit.json, model.safetensors)")


if __name__ == "__main__":
    main(sys.argv[1:])
