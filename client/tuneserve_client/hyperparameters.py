"""The training hyperparameters, described once: read from the proto `Hyperparameters` message.

Each leaf field of `tuneserve.v1.Hyperparameters` (its sections lora / optimizer / evaluation /
causal_lm / preference / search and their fields) becomes one `Hyperparameter`: its path, its `Client.train` keyword,
its `tuneserve train` flag and a help line. `Client.train` and the CLI are built from
`HYPERPARAMETERS`, so a field added to the proto gets a keyword and a flag without more code;
`_NOTES` gives it a help line (the tests fail until it has one). The server's conversion walks
the same descriptor (api/convert.py).

An option left as None is not set: the server takes its default for it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from tuneserve.v1 import common_pb2


@dataclass(frozen=True)
class _Note:
    help: str
    kwarg: str = ""  # the Client.train keyword when it is not the field's name
    minimum: float | None = 0  # the least value the CLI takes (the server checks the ranges)
    exclusive: bool = False  # the minimum itself is refused
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # older flag names that still work


# path -> what the generated code cannot say (proto comments do not reach it)
_NOTES: dict[str, _Note] = {
    "lora.rank": _Note("LoRA rank (server limit: max_lora_rank)", kwarg="lora_rank", minimum=1),
    "lora.alpha": _Note("LoRA scaling alpha", kwarg="lora_alpha", exclusive=True),
    "lora.dropout": _Note("dropout on the LoRA input, in [0, 1)", kwarg="lora_dropout"),
    "lora.target_modules": _Note("module names to adapt (default: the base model's)", minimum=None),
    "optimizer.learning_rate": _Note("peak learning rate", exclusive=True),
    "optimizer.batch_size": _Note("examples per batch", minimum=1),
    "optimizer.epochs": _Note("passes over the training data", minimum=1),
    "optimizer.max_steps": _Note("stop after N optimiser steps (0: no cap)"),
    "optimizer.warmup_ratio": _Note("fraction of the steps spent warming up the learning rate"),
    "optimizer.weight_decay": _Note("AdamW weight decay"),
    "optimizer.seed": _Note("random seed (split, shuffling, initialisation)"),
    "optimizer.max_seq_length": _Note("tokens per example; longer ones are truncated", minimum=1),
    "optimizer.gradient_accumulation_steps": _Note(
        "gradient accumulation steps (effective batch = batch size x N)", minimum=1, aliases=("--grad-accum",)
    ),
    "evaluation.eval_every_steps": _Note(
        "evaluate every N steps (0: every epoch)", aliases=("--eval-every",)
    ),
    "evaluation.metric_for_best": _Note(
        "metric that picks the published checkpoint (default: macro_f1; causal LM: eval_loss)",
        minimum=None,
        choices=("accuracy", "macro_f1", "eval_loss"),
    ),
    "evaluation.early_stopping_patience": _Note("stop after N evaluations without improvement (0: never)"),
    "evaluation.calibrate": _Note("fit temperature scaling of the probabilities (default: on)", minimum=None),
    "evaluation.fit_uncertainty": _Note(
        "fit prediction sets, abstention and out-of-domain detection on validation (default: on)",
        minimum=None,
    ),
    "evaluation.abstain_target_precision": _Note(
        "abstain below the confidence at which validation answers are this precise (default 0.95)",
    ),
    "evaluation.abstain_target_coverage": _Note(
        "abstain on all but this most-confident fraction of texts (instead of a precision)",
    ),
    "evaluation.ood_false_positive_rate": _Note(
        "fraction of in-domain texts the out-of-domain flag may mark (default 0.05)",
    ),
    "evaluation.baseline": _Note(
        "also score logistic regression on the frozen base embeddings, beside the adapter (default: on)",
        minimum=None,
    ),
    "evaluation.validation_scheme": _Note(
        "holdout, kfold (cross-validate on the training rows, publish an adapter trained on all), "
        "or auto (default: kfold when the hold-out would have fewer than min_holdout_rows rows)",
        minimum=None,
        choices=("auto", "holdout", "kfold"),
    ),
    "evaluation.folds": _Note("kfold: number of folds, 2-10 (default 5)", minimum=2),
    "evaluation.min_holdout_rows": _Note(
        "auto: the smallest hold-out measured on; fewer means kfold (default 200)"
    ),
    "causal_lm.train_on_prompt": _Note("causal LM: also train on the prompt's tokens", minimum=None),
    "causal_lm.sample_generations": _Note("causal LM: validation prompts to generate from after training"),
    "preference.beta": _Note(
        "preference (DPO): how far the policy may move from the reference, in (0, 10] (default 0.1)",
        exclusive=True,
    ),
    "preference.loss_type": _Note(
        "preference: the loss, sigmoid (DPO, the default) or ipo", minimum=None, choices=("sigmoid", "ipo")
    ),
    "preference.label_smoothing": _Note(
        "preference: assumed fraction of flipped pairs, in [0, 0.5) (conservative DPO; sigmoid only)"
    ),
    "search.trials": _Note(
        "classification: run a hyperparameter search of N trials in the job, publish the best "
        "(0: none; server limit: max_search_trials)",
        kwarg="search_trials",
    ),
    "search.budget_seconds": _Note(
        "search: wall-clock seconds for the trials (0: no limit; the first trial always finishes)",
        kwarg="search_budget",
    ),
    "search.parameters": _Note(
        "search: what is searched, of learning_rate, steps, lora_rank (default: learning_rate steps)",
        kwarg="search_parameters",
        minimum=None,
    ),
}

_INTEGER_TYPES = {
    FieldDescriptor.CPPTYPE_INT32,
    FieldDescriptor.CPPTYPE_INT64,
    FieldDescriptor.CPPTYPE_UINT32,
    FieldDescriptor.CPPTYPE_UINT64,
}
_FLOAT_TYPES = {FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE}


@dataclass(frozen=True)
class Hyperparameter:
    """One leaf field of `Hyperparameters`."""

    section: str  # "optimizer"
    name: str  # "learning_rate"
    kind: str  # "int", "float", "bool", "str" or "strs" (a repeated string)
    kwarg: str  # the Client.train keyword
    note: _Note

    @property
    def path(self) -> str:
        """The field under `TrainRequest.hyperparameters`, e.g. "optimizer.learning_rate"."""
        return f"{self.section}.{self.name}"

    @property
    def flag(self) -> str:
        return "--" + self.kwarg.replace("_", "-")

    @property
    def help(self) -> str:
        return self.note.help

    def get(self, hp: common_pb2.Hyperparameters) -> Any:
        """The field's value in `hp`; None where it has presence and is unset."""
        section = getattr(hp, self.section)
        if self.kind == "strs":
            return list(getattr(section, self.name))
        if section.DESCRIPTOR.fields_by_name[self.name].has_presence and not section.HasField(self.name):
            return None
        return getattr(section, self.name)

    def set(self, hp: common_pb2.Hyperparameters, value: Any) -> None:
        """Set the field in `hp` (None, or an empty list: leave it unset)."""
        if value is None:
            return
        section = getattr(hp, self.section)
        if self.kind == "strs":
            values = [value] if isinstance(value, str) else list(value)
            if values:
                getattr(section, self.name).extend(values)
            return
        try:
            setattr(section, self.name, value)
        except TypeError as exc:  # protobuf's own check, named by the keyword
            raise TypeError(f"{self.kwarg}: {exc}") from None
        except ValueError as exc:  # e.g. a negative value for a uint32
            raise ValueError(f"{self.kwarg}: {exc}") from None


def _kind(field: FieldDescriptor) -> str:
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        return "strs" if field.is_repeated else "str"
    if field.is_repeated:
        raise TypeError(f"no CLI form for the repeated field {field.full_name}")
    if field.cpp_type in _INTEGER_TYPES:
        return "int"
    if field.cpp_type in _FLOAT_TYPES:
        return "float"
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return "bool"
    raise TypeError(f"no CLI form for {field.full_name} ({field.type})")


def _describe(message: Any) -> tuple[Hyperparameter, ...]:
    out = []
    for section in message.DESCRIPTOR.fields:
        for field in section.message_type.fields:
            note = _NOTES.get(f"{section.name}.{field.name}", _Note(""))
            out.append(Hyperparameter(section.name, field.name, _kind(field), note.kwarg or field.name, note))
    kwargs = [h.kwarg for h in out]
    if len(set(kwargs)) != len(kwargs):
        raise TypeError(f"two hyperparameters share a keyword: {sorted(kwargs)}")
    return tuple(out)


#: Every leaf field of `Hyperparameters`, in proto order.
HYPERPARAMETERS: tuple[Hyperparameter, ...] = _describe(common_pb2.Hyperparameters)
BY_KWARG: dict[str, Hyperparameter] = {h.kwarg: h for h in HYPERPARAMETERS}
BY_PATH: dict[str, Hyperparameter] = {h.path: h for h in HYPERPARAMETERS}


def set_hyperparameters(values: Mapping[str, Any], into: common_pb2.Hyperparameters) -> None:
    """Set the options named by their `Client.train` keywords in `into`; None: unset (the
    server's default). An unknown keyword is a TypeError, as for any Python call."""
    unknown = sorted(set(values) - set(BY_KWARG))
    if unknown:
        raise TypeError(f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(BY_KWARG)}")
    for kwarg, value in values.items():
        BY_KWARG[kwarg].set(into, value)


def doc() -> str:
    """One line per keyword, for Client.train's docstring."""
    types = {"strs": "list[str]"}
    return "\n".join(
        f"        {h.kwarg} ({types.get(h.kind, h.kind)}): {h.help}  [{h.path}]" for h in HYPERPARAMETERS
    )


# --- the CLI -----------------------------------------------------------------------------


def _number(kind: str, note: _Note):  # an argparse type
    convert = int if kind == "int" else float

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not {'an integer' if kind == 'int' else 'a number'}: {text}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite: {text}")
        low = note.minimum
        if low is not None and (value <= low if note.exclusive else value < low):
            raise argparse.ArgumentTypeError(
                f"must be {'greater than' if note.exclusive else 'at least'} {low:g}: {text}"
            )
        return value

    parse.__name__ = kind  # argparse names the type in its messages
    return parse


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One flag per hyperparameter; its value lands in `args.<kwarg>` (None: not given).
    A bool gets `--name` and `--no-name`; a repeated string takes one or more values."""
    for h in HYPERPARAMETERS:
        names = (h.flag, *h.note.aliases)
        if h.kind == "bool":
            group = parser.add_mutually_exclusive_group()
            group.add_argument(
                *names, dest=h.kwarg, action="store_const", const=True, default=None, help=h.help
            )
            group.add_argument(
                "--no-" + h.flag[2:],
                dest=h.kwarg,
                action="store_const",
                const=False,
                help=f"the opposite of {h.flag}",
            )
        elif h.kind == "strs":
            parser.add_argument(*names, dest=h.kwarg, action="extend", nargs="+", metavar="NAME", help=h.help)
        elif h.kind == "str":
            parser.add_argument(*names, dest=h.kwarg, choices=h.note.choices or None, help=h.help)
        else:
            parser.add_argument(
                *names,
                dest=h.kwarg,
                type=_number(h.kind, h.note),
                metavar="N" if h.kind == "int" else "X",
                help=h.help,
            )


def from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameters given on the command line, as `Client.train` keywords."""
    return {h.kwarg: getattr(args, h.kwarg) for h in HYPERPARAMETERS if getattr(args, h.kwarg) is not None}
