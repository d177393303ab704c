"""DVC stage: training split → augmented training set in data/augmented/."""

from __future__ import annotations

from dataclasses import asdict

from pipeline.augment import augment_split
from pipeline.config import load_params
from pipeline.data import load_splits, save_splits, split_counts
from pipeline.stages._common import parse_stage_args, stage_entry


@stage_entry
def main(argv: list[str] | None = None) -> None:
    """Run the augment stage."""
    args = parse_stage_args(argv, __doc__, {"data_dir": "data/processed",
                                            "out": "data/augmented"})
    params = load_params(args.params)
    splits, meta = load_splits(args.data_dir, names=("train",))
    train = augment_split(splits["train"], meta, params.augment, params.seed)
    meta = {**meta, "augment": asdict(params.augment),
            "counts": split_counts({"train": train}, meta["classes"])}
    save_splits(args.out, {"train": train}, meta)


if __name__ == "__main__":
    main()
