"""A registered model is one prediction task: the input contract its callers rely on, the name
derived from its data, and the one-line refusal when a model of another task would take it.

No MLflow here: pipeline/registry/gate.py reads and writes contracts in the registry; predict
imports this module before its arguments are checked, so it stays light.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import PurePath

from pipeline.core.errors import ConfigError, PipelineError

AUTO = "auto"  # register.model_name: derive the name from the data (see model_name)
MAX_NAME = 200  # characters; MLflow stores up to 256, and the lock file name adds a prefix
SHOWN = 3  # column names the short form lists before "…"
# What every image model takes (pipeline/registry/signature.py input_schema; a test keeps the two
# equal).
IMAGE_INPUTS = (("image", "binary"), ("pixels", "any"))
# Past this many characters a contract's tag keeps the hash of its columns, not their list
# (version tags hold 100,000; a CSV that wide is thousands of columns).
MAX_TAG = 50_000


class ContractError(PipelineError):
    """A model of another prediction task than the one its registered name serves."""


@dataclass(frozen=True)
class Contract:
    """What a registered model's callers rely on: input kind, input columns and labels.

    Image size and channels are not part of it: the pyfunc resizes and converts any image it
    is sent, so a challenger with another data.image_size serves the same requests."""

    kind: str
    """image (encoded bytes or pixel arrays) or table (CSV columns)."""
    classes: tuple[str, str]
    """[negative, positive] labels the model answers with."""
    inputs_sha256: str
    """Hash of the (column, signature type) pairs, in any order: what tables compare."""
    inputs: tuple[tuple[str, str], ...] | None = None
    """The pairs in signature order; None when a tag kept only their hash (MAX_TAG)."""

    @classmethod
    def of(cls, kind: str, classes: tuple[str, str], inputs: list[tuple[str, str]]) -> Contract:
        """The contract of a model taking `inputs` (column, MLflow type) and answering `classes`."""
        if kind == "image":
            # Every image pyfunc takes the same requests; what its signature logged for them
            # changed (pixels was `array` before commit ddf4dc0, `any` since) while callers did
            # not, so an image contract never rests on the logged types.
            inputs = list(IMAGE_INPUTS)
        # Columns are matched by name, so their order is not part of the contract.
        canonical = json.dumps(sorted([name, kind_] for name, kind_ in inputs))
        return cls(kind, (str(classes[0]), str(classes[1])),
                   hashlib.sha256(canonical.encode()).hexdigest(), tuple(inputs))

    def matches(self, other: Contract) -> bool:
        """Same task: same input kind, the same labels, and for tables the same typed columns."""
        # Defined by what a refusal can name, so no refusal says "another task" without a why.
        return not self.differences(other)

    def fingerprint(self) -> str:
        """Short hash of the whole contract, for a name no other contract takes."""
        whole = json.dumps([self.kind, list(self.classes), self.inputs_sha256])
        return hashlib.sha256(whole.encode()).hexdigest()[:8]

    def to_tag(self) -> str:
        """Canonical JSON for a version tag (the column list dropped past MAX_TAG)."""
        raw = {"kind": self.kind, "classes": list(self.classes),
               "inputs_sha256": self.inputs_sha256,
               "inputs": None if self.inputs is None else [list(i) for i in self.inputs]}
        text = json.dumps(raw, separators=(",", ":"), ensure_ascii=False)
        return text if len(text) <= MAX_TAG else json.dumps({**raw, "inputs": None})

    @classmethod
    def from_tag(cls, text: str) -> Contract:
        """Inverse of to_tag."""
        raw = json.loads(text)
        inputs, classes = raw.get("inputs"), (str(raw["classes"][0]), str(raw["classes"][1]))
        if raw["kind"] == "image":
            return cls.of("image", classes, [])  # fixed inputs, whatever the tag kept
        return cls(raw["kind"], classes, raw["inputs_sha256"],
                   None if inputs is None else tuple((str(n), str(t)) for n, t in inputs))

    def describe(self) -> str:
        """Short human form, e.g. "images → 'odd' vs 'even'"."""
        labels = f"{self.classes[1]!r} vs {self.classes[0]!r}"
        if self.kind == "image":
            return f"images → {labels}"
        if self.inputs is None:
            return f"table (columns hashed {self.inputs_sha256[:8]}) → {labels}"
        names = [n for n, _ in self.inputs]
        shown = ", ".join(names[:SHOWN]) + (", …" if len(names) > SHOWN else "")
        return f"table of {columns(len(names))} ({shown}) → {labels}"

    def differences(self, other: Contract) -> str:
        """How a caller sees this contract differ from `other`, in one clause; "" for none."""
        said = []
        if self.kind != other.kind:
            said.append(f"{self.kind} input, not {other.kind}")
        if self.classes != other.classes:
            said.append(f"labels {'/'.join(self.classes)}, not {'/'.join(other.classes)}")
        # Image inputs are fixed (IMAGE_INPUTS): image size and channels never differ to callers.
        if self.kind == other.kind != "image" and self.inputs_sha256 != other.inputs_sha256:
            said.append(column_changes(self.inputs, other.inputs))
        return "; ".join(s for s in said if s)


def column_changes(mine: tuple[tuple[str, str], ...] | None,
                   theirs: tuple[tuple[str, str], ...] | None) -> str:
    """Which columns one table contract has that the other lacks, or types differently."""
    if mine is None or theirs is None:
        return "other columns"
    a, b = dict(mine), dict(theirs)

    def some(names: list[str]) -> str:
        return ", ".join(names[:SHOWN]) + (", …" if len(names) > SHOWN else "")

    parts = [f"{columns(len(names))} {where} ({some(names)})" for where, names in (
        ("only here", [n for n in a if n not in b]), ("only there", [n for n in b if n not in a]))
        if names]
    retyped = [f"{n}: {a[n]}, not {b[n]}" for n in a if n in b and a[n] != b[n]]
    if retyped:
        parts.append(f"{len(retyped)} retyped ({some(retyped)})")
    return ", ".join(parts)


def columns(n: int) -> str:
    """'1 column', '3 columns'."""
    return f"{n} column" + ("" if n == 1 else "s")


def model_name(setting: str, data_path: str, positive: str) -> tuple[str, str]:
    """The registered model name register.model_name stands for, and why it is that name."""
    if setting != AUTO:
        # MLflow refuses '/' and ':', a name is part of a models:/ URI and a lock file, and
        # the registry is searched with `name = '…'`, which a quote would break.
        if (not setting.strip() or len(setting) > MAX_NAME
                or any(c in setting for c in "/:'\"\\")):
            shown = setting if len(setting) <= 80 else setting[:80] + "…"
            raise ConfigError(f"register.model_name = {shown!r}: must be auto or a name of at "
                              f"most {MAX_NAME} characters without '/', ':', quotes or '\\'")
        return setting, "register.model_name"
    # The data's own name: the folder or CSV file (digits, breast_cancer), not the source
    # kind, so two users' CSVs do not meet under one name.
    stem = re.sub(r"\.(csv|tsv|txt)$", "", PurePath(data_path).name, flags=re.IGNORECASE)
    name = sanitize(f"{stem or 'data'}-{positive}")
    return name, (f"register.model_name: auto, from data.path's name {stem or 'data'!r} and the "
                  f"positive class {positive!r}")


def sanitize(text: str) -> str:
    """Letters, digits, '.', '_' and '-' only: a name that is safe in URIs, files and filters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:MAX_NAME] or "model"


def refusal(name: str, served: Contract, served_by: str, mine: Contract,
            suggestion: str, auto_name: str) -> str:
    """The one line that refuses to register `mine` under `name`, and names the fix."""
    why = " (what register.model_name: auto names it)" if suggestion == auto_name else ""
    return (f"registered model {name!r} serves {served.describe()} ({served_by}); this model "
            f"takes {mine.describe()}: another prediction task ({mine.differences(served)}), "
            f"so it is not registered there and {name!r} keeps its champion. Register it under "
            f"its own name: set register.model_name to {suggestion!r}{why}, e.g. "
            f"`dvc exp run -S register.model_name={suggestion}`")
